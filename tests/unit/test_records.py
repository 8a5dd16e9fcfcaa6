"""The record catalogue and the storm folder."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuwatchd.model.records import (
    CATALOGUE,
    COMMON_FIELDS,
    Level,
    Record,
    RecordFolder,
    make_record,
)

#: Every event name issue 3 lists: the public contract.
ISSUE_EVENTS = [
    "daemon_started",
    "daemon_stopping",
    "config_reloaded",
    "config_reload_failed",
    "watch_set_changed",
    "docker_unavailable",
    "docker_available",
    "nvml_unavailable",
    "nvml_available",
    "gpu_persistence_off",
    "gpu_persistence_enabled",
    "gpu_persistence_set_failed",
    "probe_failed",
    "probe_unavailable",
    "log_pattern_matched",
    "log_match_not_gpu",
    "container_restarted",
    "container_recovered",
    "remediation_failed",
    "remediation_skipped",
    "remediation_gave_up",
    "systemd_reload_detected",
]


class TestCatalogue:
    def test_every_issue_event_is_catalogued(self) -> None:
        """No event the issue promises is missing."""
        assert set(ISSUE_EVENTS) <= set(CATALOGUE)

    @pytest.mark.parametrize(
        "event",
        [
            "container_restarted",
            "remediation_gave_up",
            "gpu_persistence_enabled",
            "remediation_skipped",
            "container_recovered",
            "remediation_failed",
            "operator_reset",
        ],
    )
    def test_important_events_have_a_message_id(self, event: str) -> None:
        """Records operators query for carry a MESSAGE_ID: 32 lower-case hex digits."""
        mid = CATALOGUE[event].message_id
        assert mid is not None
        assert re.fullmatch(r"[0-9a-f]{32}", mid)

    def test_message_ids_are_unique(self) -> None:
        ids = [s.message_id for s in CATALOGUE.values() if s.message_id]
        assert len(ids) == len(set(ids))

    def test_extras_never_shadow_common_fields(self) -> None:
        for spec in CATALOGUE.values():
            assert not set(spec.extras) & COMMON_FIELDS, spec.name
            assert set(spec.fold_keys) <= set(spec.extras) | COMMON_FIELDS, spec.name

    def test_gave_up_is_critical_and_never_foldable(self) -> None:
        spec = CATALOGUE["remediation_gave_up"]
        assert spec.level is Level.CRITICAL

    @pytest.mark.parametrize("event", sorted(CATALOGUE))
    def test_every_message_renders_without_fields(self, event: str) -> None:
        """A template never raises, even when a field is missing (it reads '?')."""
        assert make_record(event).message


class TestMakeRecord:
    def test_fields_and_level(self) -> None:
        r = make_record(
            "container_restarted",
            container="KonomiTV",
            cause="persistence_off",
            attempt=1,
            max_restarts=3,
            dry_run=False,
        )
        assert r.level is Level.WARNING
        assert r.fields["cause"] == "persistence_off"
        assert "restart 1 of 3" in r.message

    def test_none_fields_are_left_out(self) -> None:
        r = make_record("probe_failed", container="x", exit_code=None)
        assert "exit_code" not in r.fields

    def test_unknown_event_is_rejected(self) -> None:
        with pytest.raises(ValueError, match="unknown record event"):
            make_record("container_exploded")

    def test_field_not_allowed_for_the_event_is_rejected(self) -> None:
        with pytest.raises(ValueError, match="does not allow"):
            make_record("docker_available", attempt=3)

    def test_fields_are_read_only(self) -> None:
        r = make_record("docker_available")
        with pytest.raises(TypeError):
            r.fields["x"] = 1  # type: ignore[index]


def count_of(record: Record) -> int:
    value = record.fields.get("count", 1)
    assert isinstance(value, int)
    return value


def matched(container: str = "KonomiTV", count: int = 1) -> Record:
    return make_record("log_pattern_matched", container=container, pattern="(ER-05)", count=count)


class TestRecordFolder:
    def test_first_record_passes_at_once(self) -> None:
        folder = RecordFolder(10)
        assert folder.offer(matched(), 0.0) == [matched()]

    def test_duplicates_fold_into_one_summary_per_interval(self) -> None:
        """Ten identical records in one interval: the first, then one summary of nine."""
        folder = RecordFolder(10)
        out = []
        for i in range(10):
            out += folder.offer(matched(), i * 0.5)
        assert len(out) == 1
        out += folder.due(10.0)
        assert len(out) == 2
        summary = out[1]
        assert summary.fields["count"] == 9
        assert summary.fields["folded"] is True

    def test_counts_of_folded_records_add_up(self) -> None:
        folder = RecordFolder(10)
        folder.offer(matched(count=3), 0)
        folder.offer(matched(count=4), 1)
        folder.offer(matched(count=5), 2)
        (summary,) = folder.due(10)
        assert summary.fields["count"] == 9

    def test_a_storm_gives_one_record_per_interval(self) -> None:
        folder = RecordFolder(10)
        out = []
        for i in range(600):  # one a second for ten minutes
            out += folder.offer(matched(), float(i))
        out += folder.flush()
        assert 55 <= len(out) <= 62
        assert sum(count_of(r) for r in out) == 600

    def test_quiet_interval_forgets_the_group(self) -> None:
        folder = RecordFolder(10)
        folder.offer(matched(), 0)
        assert folder.due(10) == []
        assert folder.next_deadline() is None
        assert folder.offer(matched(), 11) == [matched()]

    def test_different_containers_are_not_folded(self) -> None:
        folder = RecordFolder(10)
        out = folder.offer(matched("a"), 0) + folder.offer(matched("b"), 0)
        assert len(out) == 2

    def test_critical_records_are_never_folded(self) -> None:
        folder = RecordFolder(10)
        gave_up = make_record("remediation_gave_up", container="KonomiTV", count=3)
        out = [r for _ in range(3) for r in folder.offer(gave_up, 1.0)]
        assert out == [gave_up] * 3

    def test_restart_records_are_never_folded(self) -> None:
        folder = RecordFolder(10)
        r = make_record("container_restarted", container="KonomiTV", attempt=1)
        assert folder.offer(r, 0) + folder.offer(r, 0) == [r, r]

    def test_flush_returns_pending_summaries(self) -> None:
        folder = RecordFolder(10)
        folder.offer(matched(), 0)
        folder.offer(matched(), 1)
        assert folder.next_deadline() == 10
        (summary,) = folder.flush()
        assert summary.fields["count"] == 1
        assert folder.flush() == []

    def test_interval_must_be_positive(self) -> None:
        with pytest.raises(ValueError):
            RecordFolder(0)

    @given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 5)), max_size=60))
    def test_nothing_is_lost(self, items: list[tuple[str, float]]) -> None:
        """Every offered occurrence is accounted for, in records or summaries."""
        folder = RecordFolder(1.0)
        now, out = 0.0, []
        for name, step in items:
            now += step
            out += folder.offer(matched(name), now)
        out += folder.flush()
        assert sum(count_of(r) for r in out) == len(items)


def test_readme_documents_every_event() -> None:
    """The README's Records table names every catalogued event with its level and MESSAGE_ID."""
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Records", 1)[1]
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in section.splitlines()
        if line.startswith("| `")
    }
    for name, spec in CATALOGUE.items():
        assert name in rows, name
        assert f"| {spec.level.value} |" in rows[name], name
        if spec.message_id:
            assert spec.message_id in rows[name], name
