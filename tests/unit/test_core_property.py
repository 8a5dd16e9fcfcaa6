"""Properties of the core for any sequence of events (hypothesis)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gpuwatchd.core.machine import CONFIRM_MIN_INTERVAL
from gpuwatchd.model.events import (
    ContainerState,
    ContainerStateChanged,
    Emit,
    LogMatched,
    PauseRequested,
    ProbeFinished,
    ProbePurpose,
    ProbeTick,
    RestartContainer,
    RestartFinished,
    RestartOutcome,
    ResumeRequested,
    RunProbe,
    SaveState,
    SetPersistence,
    SystemdReloaded,
)
from gpuwatchd.model.vocabulary import ProbeResult

from .core_harness import GPU0, GPU0_OFF, KONOMI, OTHER, Harness, make_config

REFS = [KONOMI, OTHER]
RESULTS = [ProbeResult.OK, ProbeResult.NVML_UNKNOWN_ERROR, ProbeResult.TIMEOUT]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.sampled_from(REFS)),
        st.tuples(st.just("fault"), st.sampled_from(REFS)),
        st.tuples(st.just("fault"), st.sampled_from(REFS)),
        st.tuples(st.just("restart_done"), st.just(RestartOutcome.RESTARTED)),
        st.tuples(st.just("log"), st.sampled_from(REFS)),
        st.tuples(st.just("answer"), st.sampled_from(RESULTS)),
        st.tuples(st.just("advance"), st.floats(0.1, 400)),
        st.tuples(st.just("advance"), st.floats(0.1, 400)),
        st.tuples(st.just("restart_done"), st.sampled_from(list(RestartOutcome))),
        st.tuples(st.just("set_done"), st.booleans()),
        st.tuples(st.just("gpus"), st.booleans()),
        st.tuples(st.just("state"), st.sampled_from(list(ContainerState))),
        st.tuples(st.just("reload"), st.none()),
        st.tuples(st.just("pause"), st.booleans()),
    ),
    max_size=150,
)


def run(h: Harness, script: list[tuple[str, object]]) -> list[RestartContainer]:
    """Play ``script`` against the core as a world and an executor would (answering in
    the order it was asked); returns the restarts the executor refused (not running)."""
    from gpuwatchd.model.events import PersistenceSetFinished, PersistenceSetResult

    h.gpus(GPU0)
    for ref in REFS:
        h.watch(ref)
    states = {r.name: ContainerState.RUNNING for r in REFS}
    probes: list[RunProbe] = []
    restarts: list[RestartContainer] = []
    sets: list[SetPersistence] = []
    running_at_restart: list[bool] = []
    refused: list[RestartContainer] = []

    def take(out: Sequence[object]) -> None:
        for a in out:
            if isinstance(a, RunProbe):
                probes.append(a)
            elif isinstance(a, RestartContainer):
                running_at_restart.append(states[a.ref.name] is ContainerState.RUNNING)
                restarts.append(a)
            elif isinstance(a, SetPersistence):
                sets.append(a)

    for op, arg in script:
        if op == "tick":
            take(h.send(ProbeTick(arg)))  # type: ignore[arg-type]
        elif op == "fault":
            # A probe is due and, like every probe in flight, finds NVML broken.
            take(h.send(ProbeTick(arg)))  # type: ignore[arg-type]
            while probes:
                p = probes.pop(0)
                running = states[p.ref.name] is ContainerState.RUNNING
                result = ProbeResult.NVML_UNKNOWN_ERROR if running else ProbeResult.NOT_RUNNING
                take(h.send(ProbeFinished(p.ref, p.purpose, result)))
        elif op == "log":
            take(h.send(LogMatched(arg, "(ER-05)")))  # type: ignore[arg-type]
        elif op == "answer" and probes:
            p = probes.pop(0)
            assert isinstance(arg, ProbeResult)
            result = (
                arg if states[p.ref.name] is ContainerState.RUNNING else ProbeResult.NOT_RUNNING
            )
            take(h.send(ProbeFinished(p.ref, p.purpose, result)))
        elif op == "advance":
            assert isinstance(arg, float)
            take(h.advance(h.now + arg))
        elif op == "restart_done" and restarts:
            r = restarts.pop(0)
            outcome = arg
            if states[r.ref.name] is not ContainerState.RUNNING:
                outcome = RestartOutcome.NOT_RUNNING  # the executor re-inspects first
            if outcome is RestartOutcome.NOT_RUNNING:
                # The executor refused: no restart happened (the core refunds the budget).
                states[r.ref.name] = ContainerState.EXITED
                refused.append(r)
            take(h.send(RestartFinished(r.ref, outcome, "", r.ref, h.now, states[r.ref.name])))  # type: ignore[arg-type]
        elif op == "set_done" and sets:
            s = sets.pop(0)
            res = tuple(PersistenceSetResult(i, bool(arg)) for i in s.gpu_indices)
            take(h.send(PersistenceSetFinished(res)))
        elif op == "gpus":
            take(h.gpus(GPU0 if arg else GPU0_OFF))
        elif op == "state":
            assert isinstance(arg, ContainerState)
            states[KONOMI.name] = arg
            take(h.send(ContainerStateChanged(KONOMI, arg, h.now)))
        elif op == "reload":
            take(h.send(SystemdReloaded(h.now)))
        elif op == "pause":
            take(h.send(PauseRequested("KonomiTV", None) if arg else ResumeRequested("KonomiTV")))
    assert all(running_at_restart), "a restart was asked for a container not running"
    return refused


CFG = make_config(max_restarts=2, window=1000.0, cooldown=100.0, verify_timeout=30.0)


#: A restart presumed lost, then a NOT_RUNNING answer for it while the next
#: remediation waits for persistence: the set's own deadline must not restart
#: the stopped container.
LATE_NOT_RUNNING = [
    ("fault", KONOMI),
    ("advance", 180.0),
    ("gpus", False),
    ("fault", KONOMI),
    ("restart_done", RestartOutcome.NOT_RUNNING),
    ("advance", 70.0),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
@example(LATE_NOT_RUNNING)
def test_never_loops(script: list[tuple[str, object]]) -> None:
    """For any event sequence: ≤ max_restarts per window per container, cooldown apart,
    and only ever for a running container."""
    h = Harness(config=CFG)
    refused = {id(a) for a in run(h, script)}
    for ref in REFS:
        times = [
            t
            for t, a in h.timeline
            if isinstance(a, RestartContainer) and a.ref == ref and id(a) not in refused
        ]
        for a, b in itertools.pairwise(times):
            assert b - a >= CFG.remediation.cooldown
        for i, t in enumerate(times):
            in_window = [u for u in times[i:] if u < t + CFG.remediation.window]
            assert len(in_window) <= CFG.remediation.max_restarts


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_confirmations_are_rate_limited(script: list[tuple[str, object]]) -> None:
    """Confirmation probes for one container are ≥ 10 s apart, whatever the log does,
    unless gpuwatchd restarted it in between."""
    h = Harness(config=CFG)
    run(h, script)
    for ref in REFS:
        times = [
            t
            for t, a in h.timeline
            if isinstance(a, RunProbe) and a.ref == ref and a.purpose is ProbePurpose.CONFIRM
        ]
        restarted = [
            t
            for t, a in h.timeline
            if isinstance(a, Emit)
            and a.record.event == "container_restarted"
            and a.record.get("container") == ref.name
        ]
        for a, b in itertools.pairwise(times):
            assert b - a >= CONFIRM_MIN_INTERVAL or any(a <= t <= b for t in restarted)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_dry_run_changes_nothing(script: list[tuple[str, object]]) -> None:
    """Dry run: no restart, no persistence change, no state write; every record says so."""
    h = Harness(config=CFG, dry_run=True)
    run(h, script)
    assert not [a for a in h.log if isinstance(a, RestartContainer | SetPersistence | SaveState)]
    assert all(r.fields.get("dry_run") is True for r in h.all_records())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_deterministic(script: list[tuple[str, object]]) -> None:
    """The same events at the same times give the same actions."""
    a, b = Harness(config=CFG), Harness(config=CFG)
    run(a, script)
    run(b, script)
    assert a.log == b.log
