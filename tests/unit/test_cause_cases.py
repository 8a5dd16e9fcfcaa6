"""The one table of cause cases, run through the cause rule, the daemon's core and
``diagnose``: all three must name the same cause.

Each row is explicit evidence and the cause it must give. ``changed`` names the
path whose answer the one rule changed, and why (empty: both answered so
before). The core is driven with the events that produce the evidence; diagnose
is given the facts that do.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gpuwatchd.core.cause import DeviceAccess, Evidence, cause_of
from gpuwatchd.diagnose.data import (
    ContainerFacts,
    DockerFacts,
    HostFacts,
    NvmlFacts,
    PersistencedFacts,
    ProbeFacts,
)
from gpuwatchd.diagnose.verdict import container_evidence, container_verdict
from gpuwatchd.model.advice import ADVICE, HOST_CAUSE_ADVICE
from gpuwatchd.model.container import GPU_CDI, GPU_LEGACY_HOOK
from gpuwatchd.model.events import Gpu, NvmlFailure, NvmlUnavailable, ProbeTick, SystemdReloaded
from gpuwatchd.model.vocabulary import HOST_CAUSES, Cause, Confidence, ProbeResult

from .core_harness import GPU0, GPU0_OFF, KONOMI, Harness, make_config, records

R = ProbeResult
LOST, OK, UNKNOWN = DeviceAccess.LOST, DeviceAccess.OK, DeviceAccess.UNKNOWN
CERTAIN, PROBABLE = Confidence.CERTAIN, Confidence.PROBABLE


@dataclass(frozen=True)
class Row:
    id: str
    evidence: Evidence
    cause: Cause
    confidence: Confidence | None
    changed: str = ""  #: which path's answer changed, and why


def ev(**kw: object) -> Evidence:
    return Evidence(**kw)  # type: ignore[arg-type]


ROWS = [
    # Host causes come from host NVML only.
    Row("host NVML: version mismatch",
        ev(host_nvml="version_mismatch", probe=R.VERSION_MISMATCH, off_now=None),
        Cause.VERSION_MISMATCH, CERTAIN),
    Row("host NVML: GPU lost", ev(host_nvml="gpu_lost", probe=R.GPU_LOST, off_now=None),
        Cause.GPU_LOST, CERTAIN),
    Row("host NVML: driver not loaded, before device access",
        ev(host_nvml="driver_not_loaded", probe=R.DRIVER_NOT_LOADED, device_access=LOST,
           off_now=None),
        Cause.DRIVER_NOT_LOADED, CERTAIN),
    Row("version mismatch inside only", ev(probe=R.VERSION_MISMATCH), Cause.UNKNOWN, None,
        changed="diagnose: an in-container result is no host cause while host NVML "
        "answers; a restart cures it, so no reboot"),
    Row("driver not loaded inside only", ev(probe=R.DRIVER_NOT_LOADED), Cause.UNKNOWN, None,
        changed="diagnose: as above"),
    Row("GPU lost inside only", ev(probe=R.GPU_LOST), Cause.UNKNOWN, None,
        changed="diagnose: as above"),
    Row("driver not loaded inside, device access lost",
        ev(probe=R.DRIVER_NOT_LOADED, device_access=LOST), Cause.DEVICE_ACCESS_LOST, CERTAIN),
    # Device access, by the kernel's answer.
    Row("device access lost, no reload seen", ev(device_access=LOST),
        Cause.DEVICE_ACCESS_LOST, CERTAIN),
    Row("device access lost beats persistence off", ev(device_access=LOST, off_now=True,
                                                       off_since_start=True),
        Cause.DEVICE_ACCESS_LOST, CERTAIN),
    # Persistence mode off: since the start.
    Row("persistence off now", ev(off_now=True, off_since_start=True),
        Cause.PERSISTENCE_OFF, CERTAIN),
    Row("persistence off since the start, on again now", ev(off_since_start=True),
        Cause.PERSISTENCE_OFF, CERTAIN,
        changed="diagnose: it looked at now only (unknown); turned back on, persistence "
        "does not undo the fault"),
    Row("persistence off since the start, on now, a reload too",
        ev(off_since_start=True, reload_since_start=True),
        Cause.PERSISTENCE_OFF, CERTAIN,
        changed="diagnose: it said device_access_lost (probable) from the reload"),
    Row("persistence off now, last seen off before the start",
        ev(off_now=True, off_since_start=False), Cause.PERSISTENCE_OFF, CERTAIN,
        changed="core: off now is a moment since the start (it said unknown)"),
    # A reload, and the setup it can revoke GPUs in.
    Row("reload since the start, device access unknown", ev(reload_since_start=True),
        Cause.DEVICE_ACCESS_LOST, PROBABLE),
    Row("reload since the start on an at-risk setup",
        ev(reload_since_start=True, at_risk=True), Cause.DEVICE_ACCESS_LOST, PROBABLE),
    Row("reload since the start, the kernel allows access",
        ev(reload_since_start=True, device_access=OK), Cause.UNKNOWN, None),
    Row("reload since the start, the GPUs not read", ev(reload_since_start=True, off_now=None),
        Cause.UNKNOWN, None,
        changed="diagnose: a reload alone said device_access_lost even with no GPU reading"),
    Row("an at-risk setup, no reload seen", ev(at_risk=True), Cause.UNKNOWN, None,
        changed="diagnose: it said device_access_lost (probable); the risk is advice"),
    Row("host NVML fails (unknown), a GPU read off before the start",
        ev(host_nvml="unknown", off_now=None, off_since_start=False), Cause.UNKNOWN, None,
        changed="core: it took the last reading, made before NVML failed, for now"),
    Row("no evidence at all", ev(), Cause.UNKNOWN, None),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_the_rule(row: Row) -> None:
    assert cause_of(row.evidence) == (row.cause, row.confidence)


# -- the core ----------------------------------------------------------------------------


def core_cause(e: Evidence) -> tuple[str, str | None]:
    """Drive the core into ``e`` and fault KonomiTV; the cause and confidence it records."""
    h = Harness(config=make_config(enforce_persistence=False))
    if e.off_since_start is False and (e.off_now or e.host_nvml is not None):
        h.gpus(GPU0_OFF)  # read before the container started, not since
        h.later(10)
        h.watch(started_at=h.now - 5)
    else:
        h.watch()
        if e.off_since_start or e.off_now:
            h.gpus(GPU0_OFF)
            h.answer(R.OK)  # the drift probe
            if not e.off_now:
                h.gpus(GPU0)
        elif e.off_now is False:
            h.gpus(GPU0)
    h.later(10)
    if e.reload_since_start:
        h.send(SystemdReloaded(h.now))
        h.answer(R.OK)  # the reload's probe
    if e.host_nvml is not None:
        h.send(NvmlUnavailable(NvmlFailure(e.host_nvml), "NVML says so"))
    h.later(10)
    start = len(h.log)
    h.send(ProbeTick(KONOMI))
    assert e.probe is not None
    ok = {OK: True, LOST: False, UNKNOWN: None}[e.device_access]
    h.answer(e.probe, device_access_ok=ok)
    if h.restarts():
        h.finish_restart()
    decided = [r for r in records(h.log[start:]) if r.get("cause") is not None]
    assert decided, [r.event for r in records(h.log[start:])]
    cause, confidence = decided[0].get("cause"), decided[0].get("confidence")
    assert isinstance(cause, str) and (confidence is None or isinstance(confidence, str))
    return cause, confidence


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_the_core(row: Row) -> None:
    expected = (row.cause.value, row.confidence.value if row.confidence else None)
    assert core_cause(row.evidence) == expected


# -- diagnose ------------------------------------------------------------------------------

STARTED = 1_000_000.0
UUID = "GPU-0"


def diagnose_facts(e: Evidence) -> tuple[HostFacts, ContainerFacts]:
    """Facts that give ``e``: host NVML, the GPUs now and the daemon's GPU history,
    the reload, the engine's cgroup driver and the container's GPU method."""
    if e.host_nvml is not None:
        nvml = NvmlFacts(failure=e.host_nvml, error=f"NVML: {e.host_nvml}")
    elif e.off_now is None:
        nvml = NvmlFacts("535.274.02", ())
    else:
        nvml = NvmlFacts("535.274.02", (Gpu(0, UUID, "GTX 1080 Ti", not e.off_now),))
    seen = (None if e.off_since_start is None
            else {UUID: STARTED + 60 if e.off_since_start else STARTED - 60})
    host = HostFacts(
        nvml, PersistencedFacts(),
        DockerFacts(cgroup_driver="systemd" if e.at_risk else "cgroupfs", cgroup_version="2"),
        last_reload=STARTED + 30 if e.reload_since_start else None,
        now=STARTED + 3600, gpu_last_disabled=seen,
    )
    assert e.probe is not None
    container = ContainerFacts(
        "KonomiTV", "f" * 64, "running", STARTED,
        (GPU_LEGACY_HOOK,) if e.at_risk else (GPU_CDI,),
        ProbeFacts(("nvidia-smi",), e.probe, 9, ""),
        {OK: True, LOST: False, UNKNOWN: None}[e.device_access],
    )
    return host, container


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_diagnose(row: Row) -> None:
    host, c = diagnose_facts(row.evidence)
    assert cause_of(container_evidence(host, c)) == (row.cause, row.confidence)
    verdict = container_verdict(host, c)
    assert verdict.cause == row.cause.value
    if row.cause.restart_cures:
        assert f"docker restart {c.name}" in verdict.fix_now
        assert "sudo reboot" not in verdict.fix_now
    if row.cause is Cause.DEVICE_ACCESS_LOST:
        sure = "no longer lets" in verdict.summary
        assert sure is (row.confidence is CERTAIN), verdict.summary


def test_one_table_of_host_causes_and_their_advice() -> None:
    """Every host cause has its advice, and the records' advice is the same sentence."""
    assert set(HOST_CAUSE_ADVICE) == set(HOST_CAUSES.values())
    assert {Cause(k) for k in ADVICE} == set(HOST_CAUSES.values())
    assert all(not c.restart_cures for c in HOST_CAUSES.values())
    assert all(ADVICE[c.value] == a.advice for c, a in HOST_CAUSE_ADVICE.items())


def test_diagnose_names_the_history_it_used() -> None:
    """Persistence off since the start, on now: the verdict says when gpuwatchd saw it."""
    host, c = diagnose_facts(Evidence(off_since_start=True))
    verdict = container_verdict(host, c)
    assert any("gpuwatchd saw persistence mode off on GPU-0" in e for e in verdict.evidence)
    assert "was off on GPU 0 (GTX 1080 Ti) after it started" in verdict.summary


# -- evidence the core gathers over time ---------------------------------------------------


def test_a_reload_logged_before_the_daemon_started_is_evidence_and_nothing_more() -> None:
    """The journal's last reload, read back at start, counts for containers started
    before it (as diagnose reads it) but records nothing and probes nothing."""
    h = Harness(config=make_config(enforce_persistence=False))
    h.watch(started_at=h.now - 100)
    h.gpus(GPU0)
    h.later(1)
    start = len(h.log)
    actions = h.send(SystemdReloaded(h.now - 50, before_start=True))
    assert actions == [] and h.log[start:] == []
    h.later(10)
    h.send(ProbeTick(KONOMI))
    h.answer(R.NVML_UNKNOWN_ERROR)
    h.finish_restart()
    [restarted] = [r for r in h.all_records() if r.event == "container_restarted"]
    assert (restarted.get("cause"), restarted.get("confidence")) == (
        "device_access_lost", "probable")


def test_a_reload_logged_before_the_container_started_is_no_evidence() -> None:
    h = Harness(config=make_config(enforce_persistence=False))
    h.watch(started_at=h.now - 10)
    h.gpus(GPU0)
    h.send(SystemdReloaded(h.now - 50, before_start=True))
    h.later(10)
    h.send(ProbeTick(KONOMI))
    h.answer(R.NVML_UNKNOWN_ERROR)
    if h.restarts():
        h.finish_restart()
    causes = [r.get("cause") for r in h.all_records() if r.get("cause") is not None]
    assert causes and set(causes) == {"unknown"}


def test_the_state_file_keeps_the_last_moment_a_gpu_was_seen_off() -> None:
    """Saved when a GPU turns back on, so a daemon restarted later (and diagnose with
    no daemon) see the GPU off until then, not only when it was first seen off."""
    h = Harness(config=make_config(enforce_persistence=False))
    h.gpus(GPU0_OFF)
    first = h.now
    h.later(30)
    h.gpus(GPU0_OFF)
    last = h.now
    h.later(30)
    h.gpus(GPU0)
    assert h.saved().gpu_last_disabled == {GPU0_OFF.uuid: last}
    assert last > first


@pytest.mark.parametrize("probe", [R.TIMEOUT, R.PROBE_UNAVAILABLE])
def test_diagnose_takes_the_kernels_refusal_over_a_probe_that_proved_nothing(
    probe: ProbeResult,
) -> None:
    """A hung or missing probe proves nothing, but the kernel's refusal of the device
    nodes does: the rule's answer, as for any other probe result."""
    host, c = diagnose_facts(ev(probe=probe, device_access=LOST))
    assert container_verdict(host, c).cause == Cause.DEVICE_ACCESS_LOST.value
