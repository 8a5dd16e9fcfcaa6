"""A repeated fault heals as fast as the first, and the records read in the order it happened.

The confirmation throttle holds back only what led to no restart; a restart
and a heal lift it. Records that lead to an action are never folded.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gpuwatchd.core.machine import CONFIRM_MIN_INTERVAL
from gpuwatchd.model.events import (
    Action,
    ContainerRef,
    Emit,
    LogMatched,
    PauseRequested,
    ProbePurpose,
    ProbeTick,
    RestartContainer,
    RunProbe,
)
from gpuwatchd.model.records import Record, RecordFolder
from gpuwatchd.model.vocabulary import ProbeResult

from .core_harness import GPU0, GPU0_OFF, KONOMI, Harness, count_of, make_config, of, records

ER05 = "(ER-05)"
#: The issue's settings: a short cooldown and a generous budget.
REPEAT = make_config(max_restarts=10, window=600.0, cooldown=1.0, start_grace=5.0)


def er05(ref: ContainerRef = KONOMI) -> LogMatched:
    return LogMatched(ref, ER05, "チューナーとの接続が切断されました。(ER-05)")


def confirms(actions: list[Action]) -> list[RunProbe]:
    return [a for a in of(actions, RunProbe)
            if isinstance(a, RunProbe) and a.purpose is ProbePurpose.CONFIRM]


def heal(h: Harness) -> None:
    """Finish the remediation under way: restart done, the first verification passes."""
    h.finish_restart()
    h.later(0.5)
    h.answer(ProbeResult.OK)
    assert h.count("container_recovered") >= 1


# -- the throttle rule, as a table -------------------------------------------------------


def healthy_confirmation(h: Harness) -> None:
    h.send(er05())
    h.answer(ProbeResult.OK)


def timed_out_confirmation(h: Harness) -> None:
    h.send(er05())
    h.answer(ProbeResult.TIMEOUT)


def no_probe_command(h: Harness) -> None:
    h.send(er05())
    h.answer(ProbeResult.PROBE_UNAVAILABLE)


def fault_restarted_and_healed(h: Harness) -> None:
    h.send(er05())
    h.answer(ProbeResult.NVML_UNKNOWN_ERROR)
    heal(h)


def healthy_then_timer_fault_healed(h: Harness) -> None:
    """A healthy confirmation, then a timer probe finds a fault: the restart lifts the wait."""
    healthy_confirmation(h)
    h.fault()
    heal(h)


def fault_while_paused(h: Harness) -> None:
    h.send(PauseRequested("KonomiTV", None))
    h.send(er05())
    h.answer(ProbeResult.NVML_UNKNOWN_ERROR)
    assert h.count("remediation_skipped") == 1


def fault_given_up(h: Harness) -> None:
    for _ in range(2):
        h.fault()
        heal(h)
        h.later(2)
    h.send(er05())
    h.answer(ProbeResult.NVML_UNKNOWN_ERROR)
    assert h.count("remediation_gave_up") == 1


CASES: list[tuple[str, Callable[[Harness], None], bool]] = [
    ("nothing before", lambda h: None, True),
    ("NVML healthy (log_match_not_gpu)", healthy_confirmation, False),
    ("a timeout", timed_out_confirmation, False),
    ("no probe command", no_probe_command, False),
    ("a fault gpuwatchd may not act on: paused", fault_while_paused, False),
    ("a fault gpuwatchd may not act on: given up", fault_given_up, False),
    ("a fault, restarted and healed", fault_restarted_and_healed, True),
    ("healthy, then a timer fault restarted and healed", healthy_then_timer_fault_healed, True),
]


@pytest.mark.parametrize(("before", "at_once"), [(c[1], c[2]) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_when_the_next_match_is_confirmed_at_once(
    before: Callable[[Harness], None], at_once: bool
) -> None:
    """Only a confirmation that led to no restart holds the next one back."""
    h = Harness(config=make_config(max_restarts=2, cooldown=1.0, start_grace=1.0))
    h.gpus(GPU0)
    h.watch()
    before(h)
    h.later(1.5)  # past start_grace after any restart, well inside CONFIRM_MIN_INTERVAL
    first = len(confirms(h.log))
    out = h.send(er05())
    assert bool(confirms(out)) is at_once
    if not at_once:
        # Held, counted, and confirmed when the interval ends: never dropped.
        out = h.later(CONFIRM_MIN_INTERVAL)
        assert len(confirms(h.log)) == first + 1
        assert [r.event for r in records(out)][:1] == ["log_pattern_matched"]


def test_a_tuner_fault_container_costs_at_most_seven_probes_a_minute() -> None:
    """ER-05 every second for 60 s while NVML works: ≤ 7 probes, no restart."""
    h = Harness(config=REPEAT)
    h.gpus(GPU0)
    h.watch()
    for _ in range(60):
        out = h.send(er05(), at=h.now + 1)
        for _p in of(out, RunProbe):
            h.answer(ProbeResult.OK)
    h.later(1)
    assert 1 <= len(of(h.log, RunProbe)) <= 7
    assert h.restarts() == 0


# -- five faults in a row on one container --------------------------------------------


def play_fault(h: Harness, lines_during: int = 2) -> list[Action]:
    """The field report's fault as the daemon sees it: an ER-05 line, the probe fails
    and the host poll finds persistence off, more lines while it heals."""
    out = h.send(er05())
    assert confirms(out), "the first line of the fault is confirmed at once"
    out += h.gpus(GPU0_OFF)  # polled right after a failing probe, before its result
    out += h.answer(ProbeResult.NVML_UNKNOWN_ERROR)
    out += h.send(er05())  # still printing while persistence is set
    out += h.finish_set()
    out += h.finish_restart()
    for _ in range(lines_during - 1):
        out += h.send(er05())  # the new process's first task, before it verifies
    out += h.later(0.5)
    out += h.gpus(GPU0)
    out += h.answer(ProbeResult.OK)
    return out


def written_by_daemon(actions: list[Action], folder: RecordFolder, now: float) -> list[Record]:
    out: list[Record] = []
    for a in actions:
        if isinstance(a, Emit):
            out += folder.offer(a.record, now, fold=a.fold)
    return out


def test_five_faults_in_a_row_each_restart_at_once_with_its_reasons_before_it() -> None:
    h = Harness(config=REPEAT)
    folder = RecordFolder(10.0)  # the daemon's interval
    written = written_by_daemon(h.gpus(GPU0) + h.watch(), folder, h.now)
    per_fault: list[list[Record]] = []
    for _ in range(5):
        restarts_before = h.restarts()
        out = play_fault(h)
        assert h.restarts() == restarts_before + 1
        assert of(out, RestartContainer)
        w = written_by_daemon(out, folder, h.now)
        per_fault.append(w)
        written += w
        written += written_by_daemon(h.later(6), folder, h.now)  # ~6 s after the recovery
    written += folder.flush()
    assert h.count("container_restarted") == 5
    for w in per_fault:
        events = [r.event for r in w]
        at = events.index("container_restarted")
        for cause in ("log_pattern_matched", "gpu_persistence_off", "probe_failed"):
            assert cause in events[:at], (cause, events)
        assert not [r for r in w if r.fields.get("folded")]
    assert not [r for r in written if r.fields.get("folded") and count_of(r) == 1]
    # Every match is reported once: in log_pattern_matched, or in its remediation's records.
    reported = sum(count_of(r) for r in h.all_records() if r.event == "log_pattern_matched")
    joined = sum(m for r in h.all_records() if isinstance(m := r.fields.get("matches"), int))
    assert reported + joined == 5 * 3


def test_matches_during_a_remediation_are_reported_in_its_records() -> None:
    h = Harness(config=REPEAT)
    h.gpus(GPU0)
    h.watch()
    h.send(er05())
    h.answer(ProbeResult.NVML_UNKNOWN_ERROR)
    h.send(er05())
    h.send(er05())
    out = h.finish_restart()
    (rec,) = [r for r in records(out) if r.event == "container_restarted"]
    assert rec.fields["matches"] == 2
    h.send(er05())
    out = h.later(0.5) + h.answer(ProbeResult.OK)
    (rec,) = [r for r in records(out) if r.event == "container_recovered"]
    assert rec.fields["matches"] == 1


def test_matches_held_back_are_reported_before_the_fault_a_timer_probe_finds() -> None:
    """Matches counted under the throttle belong to the fault a timer probe then proves."""
    h = Harness(config=REPEAT)
    h.gpus(GPU0)
    h.watch()
    healthy_confirmation(h)
    for _ in range(3):
        h.send(er05(), at=h.now + 1)  # held back: the last confirmation was healthy
    out = h.send(ProbeTick(KONOMI)) + h.answer(ProbeResult.NVML_UNKNOWN_ERROR)
    events = [(r.event, count_of(r)) for r in records(out)]
    assert events[:2] == [("log_pattern_matched", 3), ("probe_failed", 1)]
    assert all(not a.fold for a in out if isinstance(a, Emit)
               and a.record.event in ("log_pattern_matched", "probe_failed"))


def test_true_repeats_stay_foldable() -> None:
    """A probe_failed that changes nothing (given up) is a true repeat: foldable."""
    h = Harness(config=make_config(max_restarts=1, cooldown=1.0, start_grace=1.0))
    h.gpus(GPU0)
    h.watch()
    h.fault()
    heal(h)
    h.later(2)
    h.fault()  # gives up
    assert h.count("remediation_gave_up") == 1
    out = h.later(100) + h.fault()  # given up: nothing follows
    (emit,) = [a for a in out if isinstance(a, Emit)]
    assert emit.record.event == "probe_failed" and emit.fold


def test_gpu_persistence_off_that_leads_to_setting_it_is_never_folded() -> None:
    h = Harness()
    h.gpus(GPU0)
    h.watch()
    out = h.gpus(GPU0_OFF)
    (emit,) = [a for a in out if isinstance(a, Emit)]
    assert emit.record.event == "gpu_persistence_off" and not emit.fold
