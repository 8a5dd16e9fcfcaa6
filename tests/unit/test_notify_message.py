"""The short human message for Apprise notifications (pure)."""

from __future__ import annotations

import pytest

from gpuwatchd.model.records import ADVICE, make_record
from gpuwatchd.sinks.notify import NOTIFY_EVENTS
from gpuwatchd.sinks.notify_message import human_message


def test_container_restarted_names_the_cause_the_evidence_and_the_lasting_fix() -> None:
    record = make_record(
        "container_restarted", container="KonomiTV", container_id="0123456789ab",
        cause="persistence_off", confidence="certain", attempt=2, max_restarts=3, matches=4,
        dry_run=False,
    )
    title, body = human_message(record)
    assert title == "gpuwatchd: restarted KonomiTV (persistence_off)"
    cause, evidence, for_good = body.split("\n")
    assert "persistence mode was off" in cause
    assert evidence == ("Evidence: cause certain; restart 2 of 3 in the window; "
                        "4 matching log lines.")
    assert for_good.startswith("For good: ") and "--persistence-mode" in for_good


def test_a_dry_run_restart_says_would() -> None:
    record = make_record("container_restarted", container="c", cause="unknown",
                         attempt=1, max_restarts=3, dry_run=True)
    title, body = human_message(record)
    assert title == "gpuwatchd: would restart c (unknown)"
    assert "dry run: nothing was changed" in body
    assert "gpuwatchd diagnose c" in body


def test_remediation_gave_up_says_how_many_and_how_to_re_arm() -> None:
    record = make_record(
        "remediation_gave_up", container="KonomiTV", cause="device_access_lost",
        count=3, window=3600.0, until="2026-12-06T17:00:00Z", dry_run=False,
    )
    title, body = human_message(record)
    assert title == "gpuwatchd: gave up on KonomiTV (device_access_lost)"
    cause, evidence, for_good = body.split("\n")
    assert "daemon-reload" in cause
    assert evidence == "Evidence: 3 restarts within 3600s did not cure it."
    assert "nvidia-ctk" in for_good
    assert for_good.endswith("Then `gpuwatchd reset KonomiTV` re-arms restarts.")


@pytest.mark.parametrize("cause", sorted(ADVICE))
def test_a_host_cause_gets_its_advice(cause: str) -> None:
    record = make_record("remediation_gave_up", container="c", cause=cause, count=1,
                         window=60.0)
    _title, body = human_message(record)
    assert ADVICE[cause] in body


def test_remediation_skipped_carries_the_records_advice() -> None:
    record = make_record("remediation_skipped", container="trainer", cause="persistence_off",
                         reason="notify_only", advice="Restart trainer when its job allows.")
    title, body = human_message(record)
    assert title == "gpuwatchd: not restarting trainer (notify_only)"
    assert body.endswith("Restart trainer when its job allows.")


def test_an_unknown_cause_falls_back_to_diagnose() -> None:
    record = make_record("container_restarted", container="c", cause="something_new",
                         attempt=1, max_restarts=3)
    title, body = human_message(record)
    assert title == "gpuwatchd: restarted c (something_new)"
    assert "gpuwatchd diagnose c" in body


def test_any_other_event_gets_its_record_message() -> None:
    record = make_record("gpu_persistence_set_failed", gpu_index=0, gpu_uuid="GPU-1",
                         error="NO_PERMISSION")
    title, body = human_message(record)
    assert title == "gpuwatchd: gpu persistence set failed"
    assert body == record.message
    assert "NO_PERMISSION" in body


@pytest.mark.parametrize("event", sorted(NOTIFY_EVENTS))
def test_every_notified_event_has_a_short_title_and_a_body(event: str) -> None:
    title, body = human_message(make_record(event))
    assert title.startswith("gpuwatchd: ") and "\n" not in title and len(title) < 120
    assert body
