"""The diagnose verdict as a pure function of the facts: one table row per rule."""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass, field, replace

import pytest

from gpuwatchd.core.device_access import Access, AccessCheck, verdict_for_open
from gpuwatchd.diagnose.data import (
    ContainerFacts,
    DockerFacts,
    Facts,
    HostFacts,
    LogFacts,
    NvmlFacts,
    PersistencedFacts,
    ProbeFacts,
    Status,
    persistence_flag,
)
from gpuwatchd.diagnose.render import (
    render_text,
    to_json,
)
from gpuwatchd.diagnose.verdict import (
    diagnose,
)
from gpuwatchd.exitcodes import ExitCode
from gpuwatchd.model.container import (
    GPU_CDI,
    GPU_DEVICE,
    GPU_LEGACY_HOOK,
    GPU_NVIDIA_RUNTIME,
)
from gpuwatchd.model.events import Gpu
from gpuwatchd.model.vocabulary import ProbeResult

STARTED = 1_000_000.0
NAME = "KonomiTV"
PERSISTENCED = "/usr/bin/nvidia-persistenced"


def gpu(persistence: bool = True, index: int = 0) -> Gpu:
    return Gpu(index, f"GPU-{index}", "NVIDIA GeForce GTX 1080 Ti", persistence)


def host(
    *, persistence: bool = True, failure: str | None = None, cgroup_driver: str = "cgroupfs",
    docker: bool = True, reload: float | None = None,
    persistenced: PersistencedFacts | None = None,
) -> HostFacts:
    nvml = (NvmlFacts(failure=failure, error=f"NVML: {failure}") if failure
            else NvmlFacts("535.274.02", (gpu(persistence),)))
    dk = (DockerFacts(cgroup_driver=cgroup_driver, cgroup_version="2") if docker
          else DockerFacts(available=False, error="connection refused"))
    return HostFacts(nvml, persistenced or PersistencedFacts(), dk, last_reload=reload,
                     now=STARTED + 3600)


def container(
    result: ProbeResult | None = ProbeResult.OK, *, access: bool | None = True,
    methods: tuple[str, ...] = (GPU_DEVICE,), matches: int = 0, status: str = "running",
    check: AccessCheck | None = None, scope: str | None = None,
) -> ContainerFacts:
    probe = None if result is None else ProbeFacts(("nvidia-smi", "-L"), result, 0, "")
    logs = LogFacts(("(ER-05)",), 100, matches, matches,
                    "... (ER-05)" if matches else None, STARTED + 60 if matches else None)
    if check is not None:
        access = check.ok
    return ContainerFacts(NAME, "f" * 64, status, STARTED, methods, probe, access, None, logs,
                          device_check=check, scope_device_allow=scope)


KERNEL_LOST = verdict_for_open(errno.EPERM)
KERNEL_ALLOWED = verdict_for_open(errno.ENXIO)
KERNEL_PAUSED = AccessCheck(Access.CANNOT_TELL, "it is paused")
SCOPE_WITHOUT = "DeviceAllow=/dev/null rwm\nDeviceAllow=char-pts rw"
SCOPE_WITH = SCOPE_WITHOUT + "\nDeviceAllow=/dev/nvidiactl rw"


@dataclass(frozen=True)
class Case:
    id: str
    host: HostFacts
    container: ContainerFacts | None
    cause: str  #: the container's verdict (or the top one without a container)
    exit: ExitCode
    top: str | None = None  #: the overall verdict, when not the container's
    findings: tuple[str, ...] = ()  #: host finding causes, in order
    fix_now: tuple[str, ...] | None = None
    advice_has: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


NO_PM = PersistencedFacts(True, 42, (PERSISTENCED, "--user", "nvidia-persistenced",
                                     "--no-persistence-mode", "--verbose"))
UNIT_NO_PM = PersistencedFacts(unit_state="inactive",
                               unit_argv=(PERSISTENCED, "--no-persistence-mode"))
GOOD_PM = PersistencedFacts(True, 42, (PERSISTENCED, "--persistence-mode"))
UNKNOWN = ProbeResult.NVML_UNKNOWN_ERROR

CASES = [
    Case("healthy", host(), container(), "healthy", ExitCode.OK),
    Case("healthy, persistenced with --persistence-mode", host(persistenced=GOOD_PM),
         container(), "healthy", ExitCode.OK),
    Case("the field report", host(persistence=False), container(UNKNOWN, matches=3),
         "persistence_off", ExitCode.PROBLEM, findings=("persistence_off",),
         fix_now=("sudo nvidia-smi -pm 1", f"docker restart {NAME}")),
    Case("persistence off, NVML still works: at risk", host(persistence=False), container(),
         "healthy", ExitCode.PROBLEM, top="persistence_off", findings=("persistence_off",)),
    Case("persistenced --no-persistence-mode while healthy", host(persistenced=NO_PM),
         container(), "healthy", ExitCode.PROBLEM, top="persistenced_no_persistence_mode",
         findings=("persistenced_no_persistence_mode",)),
    Case("a unit that would start it with --no-persistence-mode",
         host(persistenced=UNIT_NO_PM), container(), "healthy", ExitCode.PROBLEM,
         top="persistenced_no_persistence_mode",
         findings=("persistenced_no_persistence_mode",)),
    Case("device access revoked, persistence on", host(), container(UNKNOWN, access=False),
         "device_access_lost", ExitCode.PROBLEM, fix_now=(f"docker restart {NAME}",)),
    Case("revoked beats persistence off: direct evidence first", host(persistence=False),
         container(UNKNOWN, access=False), "device_access_lost", ExitCode.PROBLEM,
         findings=("persistence_off",)),
    Case("cgroup v2 (no evidence) after a reload", host(reload=STARTED + 10),
         container(UNKNOWN, access=None), "device_access_lost", ExitCode.PROBLEM),
    Case("cgroup v2, systemd driver, legacy hook, no reload seen: a risk, not the cause",
         host(cgroup_driver="systemd"),
         container(UNKNOWN, access=None, methods=(GPU_LEGACY_HOOK,)),
         "unknown", ExitCode.PROBLEM, findings=("reload_risk",),
         fix_now=(f"docker restart {NAME}",), advice_has="create-dev-char-symlinks"),
    Case("a reload before the container started proves nothing", host(reload=STARTED - 10),
         container(UNKNOWN, access=None), "unknown", ExitCode.PROBLEM,
         fix_now=(f"docker restart {NAME}",)),
    Case("driver not loaded (host NVML)", host(failure="driver_not_loaded"),
         container(ProbeResult.DRIVER_NOT_LOADED), "driver_not_loaded", ExitCode.PROBLEM,
         findings=("driver_not_loaded",)),
    Case("version mismatch (host NVML)", host(failure="version_mismatch"),
         container(ProbeResult.VERSION_MISMATCH), "version_mismatch", ExitCode.PROBLEM,
         findings=("version_mismatch",), fix_now=("sudo reboot", f"docker restart {NAME}")),
    Case("GPU lost (host NVML)", host(failure="gpu_lost"), container(ProbeResult.GPU_LOST),
         "gpu_lost", ExitCode.PROBLEM, findings=("gpu_lost",)),
    Case("mismatch inside only: the container's view is stale, a restart cures it", host(),
         container(ProbeResult.VERSION_MISMATCH), "unknown", ExitCode.PROBLEM,
         fix_now=(f"docker restart {NAME}",)),
    Case("driver not loaded inside with the device revoked", host(),
         container(ProbeResult.DRIVER_NOT_LOADED, access=False), "device_access_lost",
         ExitCode.PROBLEM),
    Case("no nvidia-smi inside", host(), container(ProbeResult.PROBE_UNAVAILABLE),
         "probe_unavailable", ExitCode.CANNOT_CHECK, advice_has="probe_command"),
    Case("no nvidia-smi, but the device cgroup shows the revoke", host(),
         container(ProbeResult.PROBE_UNAVAILABLE, access=False), "device_access_lost",
         ExitCode.PROBLEM),
    Case("no nvidia-smi and persistence off: the host finding decides", host(persistence=False),
         container(ProbeResult.PROBE_UNAVAILABLE), "probe_unavailable", ExitCode.PROBLEM,
         top="persistence_off", findings=("persistence_off",)),
    Case("ER-05 while NVML works: a tuner fault", host(), container(matches=2), "not_gpu",
         ExitCode.PROBLEM),
    Case("the probe hangs", host(), container(ProbeResult.TIMEOUT), "unknown", ExitCode.PROBLEM),
    Case("not running", host(), container(None, status="exited", access=None), "not_running",
         ExitCode.CANNOT_CHECK),
    Case("host NVML unusable, container fine", host(failure="library_missing"), container(),
         "healthy", ExitCode.CANNOT_CHECK, top="nvml_unavailable",
         findings=("nvml_unavailable",)),
    Case("Docker unavailable, host fine", host(docker=False), None, "docker_unavailable",
         ExitCode.CANNOT_CHECK, findings=("docker_unavailable",)),
    Case("Docker unavailable, driver not loaded: a problem found",
         host(docker=False, failure="driver_not_loaded"), None, "driver_not_loaded",
         ExitCode.PROBLEM, findings=("driver_not_loaded", "docker_unavailable")),
    Case("no container at all, host fine", host(), None, "healthy", ExitCode.OK),
    Case("systemd driver + legacy hook, healthy: prevention advice, still exit 0",
         host(cgroup_driver="systemd"), container(methods=(GPU_LEGACY_HOOK,)), "healthy",
         ExitCode.OK, findings=("reload_risk",), advice_has="create-dev-char-symlinks"),
    Case("systemd driver + plain --device: advice too", host(cgroup_driver="systemd"),
         container(methods=(GPU_DEVICE,)), "healthy", ExitCode.OK, findings=("reload_risk",),
         advice_has="nvidia-ctk cdi generate"),
    Case("systemd driver + CDI: not at risk", host(cgroup_driver="systemd"),
         container(methods=(GPU_CDI,)), "healthy", ExitCode.OK),
    Case("cgroupfs driver + legacy hook: not at risk", host(),
         container(methods=(GPU_LEGACY_HOOK,)), "healthy", ExitCode.OK),
    # The kernel check: certain evidence on cgroup v1 and v2 alike.
    Case("kernel refuses the open, no reload seen (v2)", host(),
         container(UNKNOWN, check=KERNEL_LOST), "device_access_lost", ExitCode.PROBLEM,
         fix_now=(f"docker restart {NAME}",), advice_has="create-dev-char-symlinks"),
    Case("kernel allows the open, persistence off: the field report", host(persistence=False),
         container(UNKNOWN, check=KERNEL_ALLOWED), "persistence_off", ExitCode.PROBLEM,
         findings=("persistence_off",)),
    Case("kernel allows the open after a reload: not the reload", host(reload=STARTED + 10),
         container(UNKNOWN, check=KERNEL_ALLOWED), "unknown", ExitCode.PROBLEM),
    Case("paused: cannot tell, the reload still points at it", host(reload=STARTED + 10),
         container(UNKNOWN, check=KERNEL_PAUSED), "device_access_lost", ExitCode.PROBLEM),
    Case("kernel refuses, version mismatch on the host: the host first",
         host(failure="version_mismatch"), container(ProbeResult.VERSION_MISMATCH,
                                                     check=KERNEL_LOST),
         "version_mismatch", ExitCode.PROBLEM, findings=("version_mismatch",)),
    Case("kernel allows, tuner ER-05 while NVML works: not the GPU", host(),
         container(matches=2, check=KERNEL_ALLOWED), "not_gpu", ExitCode.PROBLEM),
    # Sharper prevention: the scope's DeviceAllow= read.
    Case("systemd scope lacks the NVIDIA nodes: the next reload will break it",
         host(cgroup_driver="systemd"), container(methods=(GPU_LEGACY_HOOK,), scope=SCOPE_WITHOUT),
         "healthy", ExitCode.OK, findings=("reload_will_break",),
         advice_has="create-dev-char-symlinks"),
    Case("--runtime nvidia, scope unread: at risk", host(cgroup_driver="systemd"),
         container(methods=(GPU_NVIDIA_RUNTIME,)), "healthy", ExitCode.OK,
         findings=("reload_risk",)),
    Case("systemd scope allows the NVIDIA nodes: not at risk", host(cgroup_driver="systemd"),
         container(methods=(GPU_DEVICE,), scope=SCOPE_WITH), "healthy", ExitCode.OK),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_verdict(case: Case) -> None:
    """Each rule of the verdict: the cause, the overall verdict, findings and exit status."""
    facts = Facts(case.host, (case.container,) if case.container else ())
    d = diagnose(facts)
    assert d.exit_code == case.exit
    if case.container is not None:
        verdict = d.containers[0].verdict
        assert verdict.cause == case.cause
        assert d.verdict.cause == (case.top or case.cause)
    else:
        verdict = d.verdict
        assert verdict.cause == case.cause
    assert tuple(f.cause for f in d.host_findings) == case.findings
    if case.fix_now is not None:
        assert verdict.fix_now == case.fix_now
    if case.advice_has is not None:
        advice = [a for v in (verdict, *d.host_findings) for a in (*v.advice, *v.fix_for_good)]
        assert any(case.advice_has in a for a in advice), advice
    # Every problem comes with evidence and something to do.
    for v in (*[r.verdict for r in d.containers], *d.host_findings):
        assert v.summary.endswith(".")
        if v.status is Status.PROBLEM:
            assert v.evidence
            assert v.fix_now or v.fix_for_good or v.advice


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_json_and_text_agree(case: Case) -> None:
    """--json is one JSON document with the same verdict and exit status the text shows first."""
    d = diagnose(Facts(case.host, (case.container,) if case.container else ()))
    doc = json.loads(json.dumps(to_json(d)))
    assert doc["exit_status"] == int(d.exit_code)
    assert doc["verdict"]["cause"] == d.verdict.cause
    lines = render_text(d).splitlines()
    assert lines[0].endswith(f"(exit {int(d.exit_code)})")
    assert lines[1] == f"verdict: {d.verdict.cause}: {d.verdict.summary}"


def test_fix_lines_are_commands_or_comments() -> None:
    """Every fix line is a shell command (or a # comment): an operator can paste it."""
    starts = ("sudo ", "docker ", "# ")
    for case in CASES:
        d = diagnose(Facts(case.host, (case.container,) if case.container else ()))
        for v in (*[r.verdict for r in d.containers], *d.host_findings):
            for line in (*v.fix_now, *v.fix_for_good):
                assert line.startswith(starts), line


@pytest.mark.parametrize(("argv", "expected"), [
    ((PERSISTENCED,), True),
    ((PERSISTENCED, "--no-persistence-mode"), False),
    ((PERSISTENCED, "--user", "x", "--persistence-mode", "--verbose"), True),
    ((PERSISTENCED, "--persistence-mode", "--no-persistence-mode"), False),
    ((PERSISTENCED, "--no-persistence-mode", "--persistence-mode"), True),
    (("--no-persistence-mode",), True),  # argv[0] is the program, never a flag
])
def test_persistence_flag(argv: tuple[str, ...], expected: bool) -> None:
    """nvidia-persistenced enables persistence mode unless told not to; the last flag wins."""
    assert persistence_flag(argv) is expected


def test_running_process_wins_over_the_unit() -> None:
    """What runs now is the evidence; the unit's command line only when nothing runs."""
    facts = replace(NO_PM, unit_state="active", unit_argv=(PERSISTENCED, "--persistence-mode"))
    assert facts.persistence_flag is False
    assert PersistencedFacts().persistence_flag is None
    assert UNIT_NO_PM.persistence_flag is False
