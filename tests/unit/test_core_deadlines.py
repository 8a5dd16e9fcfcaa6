"""Every remediation phase ends: an action whose answer never comes times out.

The executor reports back for every action it starts, but the core does not
rely on it: restarting, setting persistence and verifying each have a deadline.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gpuwatchd.core.machine import Phase
from gpuwatchd.model.events import RestartContainer, RunProbe, SetPersistence

from .core_harness import GPU0, GPU0_OFF, Harness, make_config, of

#: Longer than any phase may last with the default config (restart_timeout 30 s,
#: docker timeout 30 s, verify_timeout 60 s), and shorter than the window.
LATE = 600.0


def _phase(h: Harness) -> Phase | None:
    (c,) = h.core.snapshot(h.now).containers
    return c.remediation


def _restarting(h: Harness) -> None:
    h.gpus(GPU0)
    h.watch()
    assert of(h.fault(), RestartContainer)


def _setting_persistence(h: Harness) -> None:
    h.gpus(GPU0_OFF)
    h.watch()
    h.later(10)
    h.fault()
    assert of(h.log, SetPersistence) and not of(h.log, RestartContainer)


def _verifying_without_answers(h: Harness) -> None:
    _restarting(h)
    h.finish_restart()  # then no verification probe is ever answered


@pytest.mark.parametrize(
    ("enter", "phase", "record"),
    [
        (_restarting, Phase.RESTARTING, "remediation_failed"),
        (_setting_persistence, Phase.PERSISTENCE, "gpu_persistence_set_failed"),
        (_verifying_without_answers, Phase.VERIFYING, "remediation_failed"),
    ],
    ids=["restarting", "persistence", "verifying"],
)
def test_a_phase_whose_answer_never_comes_ends(
    enter: Callable[[Harness], None], phase: Phase, record: str
) -> None:
    h = Harness(config=make_config(cooldown=1.0))
    enter(h)
    assert _phase(h) is phase
    h.later(LATE)
    assert h.count(record) >= 1
    # Left: no remediation, or a new one that asked again (never the same wait).
    assert _phase(h) is not phase or _left_and_reentered(h, phase)


def _left_and_reentered(h: Harness, phase: Phase) -> bool:
    if phase is Phase.RESTARTING:
        return len(of(h.log, RestartContainer)) > 1
    if phase is Phase.PERSISTENCE:
        return len(of(h.log, SetPersistence)) > 1
    return len(of(h.log, RestartContainer)) > 1


def test_a_restart_never_answered_fails_and_the_next_fault_restarts_again() -> None:
    h = Harness(config=make_config(cooldown=1.0))
    _restarting(h)
    out = h.later(LATE)
    failed = [r for r in h.all_records() if r.event == "remediation_failed"]
    assert len(failed) == 1 and failed[0].fields["result"] == "restart_error"
    assert "no answer" in str(failed[0].fields["error"])
    assert _phase(h) is None
    assert not of(out, RestartContainer)
    assert of(h.fault(), RestartContainer)  # watched again: the next fault is acted on
    # A late answer to the lost restart changes nothing.
    h.finish_restart()
    assert _phase(h) is Phase.VERIFYING


def test_a_persistence_set_never_answered_fails_restarts_and_is_tried_again() -> None:
    h = Harness(config=make_config(cooldown=1.0))
    _setting_persistence(h)
    out = h.later(LATE)
    failed = [r for r in h.all_records() if r.event == "gpu_persistence_set_failed"]
    assert failed and "no answer" in str(failed[0].fields["error"])
    assert of(out, RestartContainer)  # step 2 follows step 1 whatever its outcome
    assert of(h.gpus(GPU0_OFF), SetPersistence)  # enforced again, not in flight for ever


def test_verification_without_answers_ends_by_its_deadline() -> None:
    h = Harness(config=make_config(cooldown=1.0))
    _verifying_without_answers(h)
    h.later(LATE)
    assert h.count("remediation_failed") >= 1
    assert h.count("container_recovered") == 0
    assert of(h.log, RunProbe)  # it did ask
