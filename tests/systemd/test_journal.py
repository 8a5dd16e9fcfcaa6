"""Records reach a real journald as native, matchable fields."""

from __future__ import annotations

import pytest

from tests.systemd.conftest import SystemdBox

pytestmark = [pytest.mark.systemd, pytest.mark.docker]

RESTART_ID = "b07a3a8e1f6c4d2e9a5b7c3d1e0f2a4b"

SEND = f"""
from gpuwatchd.sinks.journal import send
send({{
    "event": "container_restarted",
    "level": "warning",
    "container": "KonomiTV",
    "container_id": "3f4e5d6c7b8a" + "0" * 52,
    "gpu_uuid": "GPU-8e0d3f1c",
    "cause": "persistence_off",
    "confidence": "certain",
    "dry_run": False,
    "message": "restarted KonomiTV: persistence mode was off",
}}, {{"container_restarted": "{RESTART_ID}"}})
"""


def test_record_lands_as_native_fields(systemd_box: SystemdBox) -> None:
    """journalctl finds the record by GPUWATCHD_EVENT and shows every mapped field."""
    rc, out = systemd_box.python(SEND)
    assert rc == 0, out
    entries = systemd_box.journal(
        "SYSLOG_IDENTIFIER=gpuwatchd", "GPUWATCHD_EVENT=container_restarted"
    )
    assert entries, "the record is not in the journal"
    entry = entries[-1]
    assert entry["MESSAGE"] == "restarted KonomiTV: persistence mode was off"
    assert entry["PRIORITY"] == "4"
    assert entry["CONTAINER_NAME"] == "KonomiTV"
    assert entry["CONTAINER_ID"] == "3f4e5d6c7b8a"
    assert entry["GPUWATCHD_CAUSE"] == "persistence_off"
    assert entry["GPUWATCHD_CONFIDENCE"] == "certain"
    assert entry["GPUWATCHD_DRY_RUN"] == "false"
    assert entry["MESSAGE_ID"] == RESTART_ID
    # sendv, not send: no CODE_* fields pointing into gpuwatchd/sinks/journal.py.
    assert "CODE_FILE" not in entry


def test_operator_queries_match(systemd_box: SystemdBox) -> None:
    """The README's queries (by container and priority, by MESSAGE_ID) find the record."""
    rc, out = systemd_box.python(SEND)
    assert rc == 0, out
    by_container = systemd_box.journal("CONTAINER_NAME=KonomiTV", "-p", "warning")
    assert any(e.get("GPUWATCHD_EVENT") == "container_restarted" for e in by_container)
    by_id = systemd_box.journal(f"MESSAGE_ID={RESTART_ID}")
    assert by_id and by_id[-1]["SYSLOG_IDENTIFIER"] == "gpuwatchd"
    assert not systemd_box.journal("CONTAINER_NAME=KonomiTV", "-p", "err")
