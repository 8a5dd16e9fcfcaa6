"""Records mapped to native journal fields (pure: nothing is sent here)."""

from __future__ import annotations

import enum
import json
import uuid
from pathlib import Path

import pytest
import structlog

from gpuwatchd.model.vocabulary import Cause, Confidence
from gpuwatchd.sinks import journal
from gpuwatchd.sinks.journal import JournalRenderer, field_name, journal_fields, summary

FULL_ID = "3f4e5d6c7b8a" + "0123456789abcdef" * 3 + "0123"
RESTART_ID = "b07a3a8e1f6c4d2e9a5b7c3d1e0f2a4b"


def restart_record(**extra: object) -> dict[str, object]:
    record: dict[str, object] = {
        "event": "container_restarted",
        "level": "warning",
        "timestamp": "2026-11-27T00:00:00.000+00:00",
        "container": "KonomiTV",
        "container_id": FULL_ID,
        "gpu_index": 0,
        "gpu_uuid": "GPU-8e0d3f1c-0000-0000-0000-000000000000",
        "cause": Cause.PERSISTENCE_OFF,
        "confidence": Confidence.CERTAIN,
        "result": "ok",
        "dry_run": False,
        "count": 1,
    }
    record.update(extra)
    return record


class TestJournalFields:
    def test_docker_names_and_event(self) -> None:
        """container/container_id use the names Docker's journald driver uses."""
        fields = journal_fields(restart_record())
        assert fields["CONTAINER_NAME"] == "KonomiTV"
        assert fields["CONTAINER_ID"] == FULL_ID[:12]
        assert fields["CONTAINER_ID_FULL"] == FULL_ID
        assert fields["GPUWATCHD_EVENT"] == "container_restarted"
        assert fields["SYSLOG_IDENTIFIER"] == "gpuwatchd"
        assert "GPUWATCHD_CONTAINER" not in fields
        assert "GPUWATCHD_CONTAINER_ID" not in fields
        assert "GPUWATCHD_LEVEL" not in fields

    def test_other_keys_become_gpuwatchd_fields(self) -> None:
        """Every other key is GPUWATCHD_<KEY>, enums by value, bools true/false."""
        fields = journal_fields(restart_record())
        assert fields["GPUWATCHD_CAUSE"] == "persistence_off"
        assert fields["GPUWATCHD_CONFIDENCE"] == "certain"
        assert fields["GPUWATCHD_GPU_UUID"] == "GPU-8e0d3f1c-0000-0000-0000-000000000000"
        assert fields["GPUWATCHD_GPU_INDEX"] == "0"
        assert fields["GPUWATCHD_DRY_RUN"] == "false"
        assert fields["GPUWATCHD_COUNT"] == "1"
        assert fields["GPUWATCHD_TIMESTAMP"] == "2026-11-27T00:00:00.000+00:00"
        assert all(isinstance(value, str) for value in fields.values())

    @pytest.mark.parametrize(
        ("level", "priority"),
        [
            ("debug", "7"),
            ("info", "6"),
            ("warning", "4"),
            ("warn", "4"),
            ("error", "3"),
            ("critical", "2"),
            ("CRITICAL", "2"),
            (None, "6"),
            ("bogus", "6"),
        ],
    )
    def test_priority_from_level(self, level: str | None, priority: str) -> None:
        """PRIORITY follows syslog: debug 7, info 6, warning 4, error 3, critical 2."""
        record = {"event": "x"} if level is None else {"event": "x", "level": level}
        assert journal_fields(record)["PRIORITY"] == priority

    def test_message_given_is_kept_on_one_line(self) -> None:
        """A record's own message is MESSAGE, folded onto one line."""
        fields = journal_fields(restart_record(message="Restarted KonomiTV:\n  persistence off"))
        assert fields["MESSAGE"] == "Restarted KonomiTV: persistence off"
        assert "GPUWATCHD_MESSAGE" not in fields

    def test_message_built_from_event_and_key_fields(self) -> None:
        """Without a message, MESSAGE names the event and the key fields in a fixed order."""
        assert summary(restart_record()) == (
            "container_restarted container=KonomiTV gpu_index=0 "
            "gpu_uuid=GPU-8e0d3f1c-0000-0000-0000-000000000000 cause=persistence_off "
            "confidence=certain result=ok count=1 dry_run=false"
        )
        assert summary({}) == "event"

    def test_message_id_from_record_wins_over_mapping(self) -> None:
        """message_id in the record is used as is; else the mapping by event; else none."""
        dashed = str(uuid.UUID(RESTART_ID))
        by_event = {"container_restarted": "00000000000000000000000000000001"}
        assert journal_fields(restart_record(message_id=dashed), by_event)["MESSAGE_ID"] == (
            RESTART_ID
        )
        assert journal_fields(restart_record(), by_event)["MESSAGE_ID"] == (
            "00000000000000000000000000000001"
        )
        assert journal_fields(restart_record(), {"other": RESTART_ID}).get("MESSAGE_ID") is None
        assert journal_fields(restart_record(message_id=uuid.UUID(RESTART_ID)))["MESSAGE_ID"] == (
            RESTART_ID
        )

    def test_keys_are_sanitized(self) -> None:
        """Key characters outside [A-Z0-9_] become _, and names stay within journald's 64."""
        fields = journal_fields({"event": "x", "gpu.bus-id": "0000:01:00.0", "k" * 100: 1})
        assert fields["GPUWATCHD_GPU_BUS_ID"] == "0000:01:00.0"
        assert field_name("k" * 100) in fields
        assert len(field_name("k" * 100)) == 64

    def test_structured_values_are_json(self) -> None:
        """Lists, tuples, dicts and sets become JSON; paths become text; None is left out."""

        class Colour(enum.Enum):
            RED = 1

        fields = journal_fields(
            {
                "event": "x",
                "gpus": [0, 1],
                "argv": ("nvidia-smi", "-L"),
                "detail": {"b": True, "a": "é"},
                "uuids": {"b", "a"},
                "path": Path("/etc/gpuwatchd/config.toml"),
                "colour": Colour.RED,
                "absent": None,
            }
        )
        assert json.loads(fields["GPUWATCHD_GPUS"]) == [0, 1]
        assert json.loads(fields["GPUWATCHD_ARGV"]) == ["nvidia-smi", "-L"]
        assert fields["GPUWATCHD_DETAIL"] == '{"a": "é", "b": true}'
        assert fields["GPUWATCHD_UUIDS"] == '["a", "b"]'
        assert fields["GPUWATCHD_PATH"] == "/etc/gpuwatchd/config.toml"
        assert fields["GPUWATCHD_COLOUR"] == "1"
        assert "GPUWATCHD_ABSENT" not in fields

    def test_short_or_odd_container_ids(self) -> None:
        """A short ID stays; text that is not a hex ID passes through unchanged."""
        assert journal_fields({"container_id": FULL_ID[:12]})["CONTAINER_ID"] == FULL_ID[:12]
        fields = journal_fields({"container_id": "not-an-id"})
        assert fields["CONTAINER_ID"] == "not-an-id"
        assert "CONTAINER_ID_FULL" not in fields


class TestJournalRenderer:
    def test_sends_fields_then_drops(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The renderer sends the mapped fields (level from the method) and drops the event."""
        sent: list[tuple[dict[str, object], object]] = []
        monkeypatch.setattr(journal, "send", lambda record, ids=None: sent.append((record, ids)))
        renderer = JournalRenderer({"container_restarted": RESTART_ID})
        with pytest.raises(structlog.DropEvent):
            renderer(None, "warning", {"event": "container_restarted", "container": "KonomiTV"})
        record, ids = sent[0]
        assert record["level"] == "warning"
        assert ids == {"container_restarted": RESTART_ID}
        assert journal_fields(record, {"container_restarted": RESTART_ID})["PRIORITY"] == "4"

    def test_journal_unreachable_falls_back_to_stderr(
        self, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """A send failure writes the record to stderr as JSON instead of losing it."""

        def fail(record: object, ids: object = None) -> None:
            raise OSError("No such file or directory")

        monkeypatch.setattr(journal, "send", fail)
        with pytest.raises(structlog.DropEvent):
            JournalRenderer()(None, "error", {"event": "give_up", "container": "KonomiTV"})
        line = json.loads(capfd.readouterr().err)
        assert line["event"] == "give_up"
        assert line["level"] == "error"
        assert "No such file" in line["journal_error"]
