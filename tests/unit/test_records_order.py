"""The storm folder keeps the story in order: true repeats fold, causes and actions never do."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from gpuwatchd.model.records import Record, RecordFolder, make_record


def count_of(record: Record) -> int:
    value = record.fields.get("count", 1)
    assert isinstance(value, int)
    return value


def failed(container: str = "KonomiTV", result: str = "nvml_unknown_error") -> Record:
    return make_record("probe_failed", container=container, result=result, purpose="confirm")


def restarted(container: str = "KonomiTV") -> Record:
    return make_record("container_restarted", container=container, attempt=1, count=1)


def matched(container: str = "KonomiTV", count: int = 1) -> Record:
    return make_record("log_pattern_matched", container=container, pattern="(ER-05)", count=count)


class TestSingleRecordSummaries:
    def test_a_lone_held_record_is_written_as_itself_when_its_interval_ends(self) -> None:
        folder = RecordFolder(10)
        first, second = matched(count=2), matched(count=3)
        folder.offer(first, 0)
        assert folder.offer(second, 1) == []
        assert folder.due(10) == [second]  # not count 3 with folded = true: just the record
        assert "folded" not in second.fields

    def test_a_lone_held_record_is_written_as_itself_at_shutdown(self) -> None:
        folder = RecordFolder(10)
        off = make_record("gpu_persistence_off", gpu_index=0, gpu_uuid="GPU-1")
        folder.offer(off, 0)
        folder.offer(off, 1)
        assert folder.flush() == [off]

    def test_two_held_records_make_a_folded_summary(self) -> None:
        folder = RecordFolder(10)
        for t in (0, 1, 2):
            folder.offer(matched(), t)
        (summary,) = folder.flush()
        assert summary.fields["folded"] is True and summary.fields["count"] == 2


class TestCausesAndActions:
    def test_a_cause_offered_unfoldable_passes_at_once_and_leaves_the_group_alone(self) -> None:
        folder = RecordFolder(10)
        assert folder.offer(failed(), 0) == [failed()]
        assert folder.offer(failed(), 1, fold=False) == [failed()]
        assert folder.offer(failed(), 2) == []  # a true repeat: folded
        assert folder.flush() == [failed()]

    def test_what_is_held_about_a_container_comes_before_its_restart(self) -> None:
        folder = RecordFolder(10)
        folder.offer(failed(result="timeout"), 0)
        folder.offer(failed(result="timeout"), 1)  # held
        folder.offer(failed("Mirakurun", "timeout"), 1)
        folder.offer(failed("Mirakurun", "timeout"), 2)  # held, another container
        out = folder.offer(restarted(), 3)
        assert out == [failed(result="timeout"), restarted()]
        # The container's groups start afresh: its next record is written at once.
        assert folder.offer(failed(result="timeout"), 4) == [failed(result="timeout")]
        assert folder.flush() == [failed("Mirakurun", "timeout")]

    def test_the_issue_sequence_reads_in_order(self) -> None:
        """Two faults 8 s apart: each restart is preceded by its match and its probe_failed,
        and nothing is written later with count 1."""
        folder = RecordFolder(10)
        out: list[Record] = []
        for t in (0.0, 8.0):
            out += folder.offer(matched(), t, fold=False)
            out += folder.offer(failed(), t + 0.1, fold=False)
            out += folder.offer(restarted(), t + 0.3)
        out += folder.flush()
        assert [r.event for r in out] == [
            "log_pattern_matched", "probe_failed", "container_restarted",
        ] * 2
        assert not [r for r in out if r.fields.get("folded")]


offers = st.lists(
    st.tuples(
        st.sampled_from(["matched", "failed", "restarted"]),
        st.sampled_from(["a", "b"]),
        st.booleans(),  # fold
        st.floats(0, 4),  # time step
    ),
    max_size=80,
)


@given(offers)
def test_order_and_accounting(items: list[tuple[str, str, bool, float]]) -> None:
    """For any sequence: every occurrence is accounted for; a record offered unfoldable,
    and an action's record, is written when offered; nothing offered before an action
    about its container is written after it; no summary stands for a single record."""
    folder = RecordFolder(5.0)
    makers: dict[str, Callable[[str], Record]] = {
        "matched": matched, "failed": failed, "restarted": restarted,
    }
    now = 0.0
    written: list[tuple[int, Record]] = []  # (index of the offer it came from, record)
    offered: list[Record] = []
    for i, (kind, container, fold, step) in enumerate(items):
        now += step
        record = makers[kind](container)
        offered.append(record)
        out = folder.offer(record, now, fold=fold)
        if not fold or kind == "restarted":
            assert out and out[-1] is record
        written += [(i, r) for r in out]
    written += [(len(items), r) for r in folder.flush()]
    for kind in ("matched", "failed", "restarted"):
        for c in ("a", "b"):
            sent = sum(count_of(r) for r in offered
                       if r.event == makers[kind](c).event and r.get("container") == c)
            got = sum(count_of(r) for _, r in written
                      if r.event == makers[kind](c).event and r.get("container") == c)
            assert sent == got
    for _, r in written:
        if r.fields.get("folded"):
            assert count_of(r) >= 2
    # An action's record closes its container: whatever is written about that
    # container later stands only for records offered after it.
    for i, (kind, container, _fold, _step) in enumerate(items):
        if kind != "restarted":
            continue
        later = [r for j, r in written if j > i and r.get("container") == container]
        offered_later = sum(1 for k in items[i + 1:] if k[1] == container)
        assert sum(count_of(r) for r in later) <= offered_later
