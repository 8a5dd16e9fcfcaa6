"""Cause precedence: host evidence, then device access, then persistence, else unknown."""

from __future__ import annotations

import itertools

import pytest

from gpuwatchd.model.events import NvmlFailure, NvmlUnavailable, RestartContainer, SystemdReloaded
from gpuwatchd.model.vocabulary import Cause, Confidence

from .core_harness import GPU0, GPU0_OFF, T0, Harness, of, records

STARTED = T0 - 3600  #: the container's start time in every case

HOST = {
    None: None,
    "version_mismatch": NvmlFailure.VERSION_MISMATCH,
    "gpu_lost": NvmlFailure.GPU_LOST,
    "driver_not_loaded": NvmlFailure.DRIVER_NOT_LOADED,
    "library_missing": NvmlFailure.LIBRARY_MISSING,  # no evidence either way
}
#: When a GPU was seen with persistence off: never, before the container started, after.
OFF = {"never": None, "before": STARTED - 10, "since": STARTED + 10}
#: When systemd reloaded: never, before the container started, after.
RELOAD = {"never": None, "before": STARTED - 10, "since": STARTED + 20}
ACCESS = {"present": True, "missing": False, "unknown": None}


def expected(
    host: str | None, access: str, off: str, reload: str
) -> tuple[Cause, Confidence | None]:
    """The issue's rule, written independently of the core."""
    if host in ("version_mismatch", "gpu_lost", "driver_not_loaded"):
        return Cause(host), Confidence.CERTAIN
    if access == "missing":
        return Cause.DEVICE_ACCESS_LOST, Confidence.CERTAIN
    if access == "unknown" and reload == "since" and off != "since" and host is None:
        return Cause.DEVICE_ACCESS_LOST, Confidence.PROBABLE
    if off == "since":
        return Cause.PERSISTENCE_OFF, Confidence.CERTAIN
    return Cause.UNKNOWN, None


def world(host: str | None, off: str, reload: str) -> Harness:
    h = Harness(now=STARTED - 100)
    h.gpus(GPU0)
    h.watch(started_at=STARTED)
    events: list[tuple[float, str]] = []
    off_at, reload_at = OFF[off], RELOAD[reload]
    if off_at is not None:
        events += [(off_at, "off"), (off_at + 1, "on")]
    if reload_at is not None:
        events.append((reload_at, "reload"))
    for at, what in sorted(events):
        h.advance(at)
        if what == "off":
            h.gpus(GPU0_OFF)
        elif what == "on":
            h.gpus(GPU0)
        else:
            h.send(SystemdReloaded(at))
    h.advance(T0)
    failure = HOST[host]
    if failure is not None:
        h.send(NvmlUnavailable(failure, "nvmlInit failed"))
    return h


CASES = list(itertools.product(HOST, ACCESS, OFF, RELOAD))


@pytest.mark.parametrize(("host", "access", "off", "reload"), CASES)
def test_cause_precedence(host: str | None, access: str, off: str, reload: str) -> None:
    """Every combination of evidence, and the event order it arrived in, gives the rule's cause."""
    h = world(host, off, reload)
    assert h.core.cause_of("KonomiTV", ACCESS[access]) == expected(host, access, off, reload)


@pytest.mark.parametrize(("host", "access", "off", "reload"), CASES[::7])
def test_records_carry_the_cause(host: str | None, access: str, off: str, reload: str) -> None:
    """The remediation record names the same cause and confidence (sampled combinations)."""
    h = world(host, off, reload)
    out = h.fault(device_access_ok=ACCESS[access])
    cause, confidence = expected(host, access, off, reload)
    decision = [
        r for r in records(out) if r.event in ("remediation_skipped", "container_restarted")
    ]
    if cause.restart_cures:
        assert of(out, RestartContainer)
        h.finish_restart()
        decision = [r for r in h.all_records() if r.event == "container_restarted"]
    else:
        assert not of(out, RestartContainer)
    (rec,) = decision
    assert rec.fields["cause"] == cause.value
    assert rec.get("confidence") == (confidence.value if confidence else None)


def test_reload_without_any_gpu_snapshot_is_not_probable() -> None:
    """'Host fine' needs evidence: with no NVML snapshot, a reload alone proves nothing."""
    h = Harness(now=STARTED)
    h.watch(started_at=STARTED)
    h.send(SystemdReloaded(STARTED + 5), at=STARTED + 5)
    assert h.core.cause_of("KonomiTV", None) == (Cause.UNKNOWN, None)


def test_gpu_seen_off_now_counts_even_if_never_on() -> None:
    h = Harness()
    h.watch(started_at=T0 - 10)
    h.gpus(GPU0_OFF)
    assert h.core.cause_of("KonomiTV", None) == (Cause.PERSISTENCE_OFF, Confidence.CERTAIN)


def test_host_recovery_clears_host_evidence() -> None:
    h = Harness()
    h.watch()
    h.send(NvmlUnavailable(NvmlFailure.DRIVER_NOT_LOADED))
    assert h.core.cause_of("KonomiTV", None)[0] is Cause.DRIVER_NOT_LOADED
    h.gpus(GPU0)
    assert h.core.cause_of("KonomiTV", None)[0] is Cause.UNKNOWN


def test_reload_during_a_probe_in_flight_checks_again_when_it_ends() -> None:
    """A probe that started before a systemd reload may pass on access the reload
    revoked a moment later: the container is probed again for the reload."""
    from gpuwatchd.model.events import ProbePurpose, ProbeTick, RunProbe
    from gpuwatchd.model.vocabulary import ProbeResult

    from .core_harness import KONOMI

    h = Harness()
    h.gpus(GPU0)
    h.watch()
    assert of(h.send(ProbeTick(KONOMI)), RunProbe)
    assert not of(h.send(SystemdReloaded(h.now)), RunProbe)  # busy: no second probe now
    out = h.answer(ProbeResult.OK)  # the timer probe passes on stale access
    (again,) = of(out, RunProbe)
    assert isinstance(again, RunProbe) and again.purpose is ProbePurpose.RELOAD
    out = h.answer(ProbeResult.NVML_UNKNOWN_ERROR, device_access_ok=False)
    assert of(out, RestartContainer)
