"""``gpuwatchd diagnose`` on the bench: the real command as a subprocess, the real
engine, real pynvml against the stand-in driver. Each case checks the verdict,
the exit status, and that diagnose changed nothing (no persistence set through
NVML, the container not restarted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from docker.models.containers import Container

from gpuwatchd.diagnose.verdict import START_MARGIN
from tests.bench import ER05_LINE, ONAIR_LINE, wait_for_log
from tests.bench.engines import Engine, on_every_engine
from tests.bench.gpu import GpuController

pytestmark = [pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[2]


class Run:
    """One finished ``gpuwatchd diagnose`` run."""

    def __init__(self, proc: subprocess.CompletedProcess[str], as_json: bool) -> None:
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.doc: dict[str, Any] = json.loads(proc.stdout) if as_json and proc.stdout else {}

    def container(self, name: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = [c for c in self.doc["containers"] if c["name"] == name]
        assert len(found) == 1, self.stdout
        return found[0]

    def finding(self, cause: str) -> dict[str, Any] | None:
        return next((f for f in self.doc["host"]["findings"] if f["cause"] == cause), None)


@pytest.fixture
def diagnose(gpu: GpuController, tmp_path: Path) -> Callable[..., Run]:
    """Run ``python -m gpuwatchd diagnose ARGS --config <tmp>`` with the bench GPU."""
    config = tmp_path / "diagnose.toml"
    config.write_text("[probe]\ntimeout = \"5s\"\n")

    def run(*args: str, as_json: bool = True, config_text: str | None = None,
            env: dict[str, str] | None = None) -> Run:
        if config_text is not None:
            config.write_text(config_text)
        argv = [sys.executable, "-m", "gpuwatchd", "diagnose", *args, "--config", str(config)]
        if as_json:
            argv.append("--json")
        proc = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={**os.environ, **gpu.env(), **(env or {})},
        )
        return Run(proc, as_json)

    return run


def started_at(container: Container) -> str:
    container.reload()
    return str(container.attrs["State"]["StartedAt"])


class Unchanged:
    """Containers added here must not be restarted by the end of the test."""

    def __init__(self) -> None:
        self.starts: list[tuple[Container, str]] = []

    def append(self, container: Container) -> None:
        self.starts.append((container, started_at(container)))


@pytest.fixture
def unchanged(gpu: GpuController) -> Iterator[Unchanged]:
    """Diagnose changes nothing: no persistence set through NVML (host or
    container), no container restarted."""
    watched = Unchanged()
    gpu.clear_calls()
    yield watched
    assert gpu.calls("nvmlDeviceSetPersistenceMode") == []
    for container, start in watched.starts:
        assert started_at(container) == start, f"{container.name} was restarted"


def healthy_konomi(make_container: Callable[..., Container], unchanged: Unchanged,
                   **kwargs: Any) -> Container:
    c = make_container("konomi", **kwargs)
    wait_for_log(c, ONAIR_LINE, 20)
    unchanged.append(c)
    return c


def test_healthy(gpu: GpuController, make_container: Callable[..., Container],
                 diagnose: Callable[..., Run], unchanged: Unchanged) -> None:
    """Persistence on, NVML works inside, no ER-05: healthy, exit 0."""
    gpu.set_persistence(True)
    c = healthy_konomi(make_container, unchanged)
    run = diagnose(c.name)
    assert run.rc == 0, run.stdout + run.stderr
    assert run.doc["status"] == "healthy"
    report = run.container(c.name)
    assert report["verdict"]["cause"] == "healthy"
    assert report["probe"]["result"] == "ok"
    assert report["device_access_ok"] is True
    assert report["gpu_methods"] == ["device"]
    assert report["logs"]["matches"] == 0
    assert run.doc["host"]["gpus"][0]["persistence"] is True
    assert run.doc["host"]["docker"]["cgroup_driver"] == "cgroupfs"
    assert run.doc["host"]["docker"]["engine"] == "Docker"
    assert run.doc["host"]["docker"]["engine_version"]


def test_field_report_persistence_off_and_nvml_lost(
    gpu: GpuController, make_container: Callable[..., Container],
    diagnose: Callable[..., Run], unchanged: Unchanged,
) -> None:
    """The report's case: persistence off, the driver idled, ER-05 in the logs,
    NVML lost inside: persistence_off, exit 1, with the report's fixes."""
    c = healthy_konomi(make_container, unchanged)
    assert gpu.idle_driver()
    wait_for_log(c, ER05_LINE, 20)
    run = diagnose(c.name)
    assert run.rc == 1, run.stdout + run.stderr
    verdict = run.doc["verdict"]
    assert verdict["cause"] == "persistence_off"
    report = run.container(c.name)
    assert report["verdict"]["cause"] == "persistence_off"
    assert report["probe"]["result"] == "nvml_unknown_error"
    assert report["device_check"]["access"] == "allowed"  # the kernel still lets it open
    assert report["logs"]["matches"] >= 1
    assert "(ER-05)" in report["logs"]["last_line"]
    assert report["verdict"]["fix_now"] == ["sudo nvidia-smi -pm 1", f"docker restart {c.name}"]
    assert any("nvidia-persistenced.service.d" in f for f in report["verdict"]["fix_for_good"])
    assert any("nvidia-persistence-mode.service" in f for f in report["verdict"]["fix_for_good"])
    assert run.finding("persistence_off") is not None

    # The same for people: the verdict comes first.
    text = diagnose(c.name, as_json=False)
    assert text.rc == 1
    lines = text.stdout.splitlines()
    assert lines[0] == "gpuwatchd diagnose: problem found (exit 1)"
    assert lines[1].startswith("verdict: persistence_off: ")
    assert "sudo nvidia-smi -pm 1" in text.stdout


def test_persistenced_with_no_persistence_mode_is_flagged_while_healthy(
    gpu: GpuController, make_container: Callable[..., Container],
    diagnose: Callable[..., Run], unchanged: Unchanged,
) -> None:
    """A process named nvidia-persistenced running with --no-persistence-mode is
    found through /proc and flagged even though NVML works right now: exit 1."""
    gpu.set_persistence(True)
    c = healthy_konomi(make_container, unchanged)
    argv = ["/usr/bin/nvidia-persistenced", "-c", "import time; time.sleep(120)",
            "--user", "nvidia-persistenced", "--no-persistence-mode", "--verbose"]
    fake = subprocess.Popen(argv, executable=sys.executable)
    try:
        run = diagnose(c.name)
    finally:
        fake.kill()
        fake.wait()
    assert run.rc == 1, run.stdout + run.stderr
    assert run.container(c.name)["verdict"]["cause"] == "healthy"
    pd = run.doc["host"]["persistenced"]
    assert pd["running"] is True
    assert pd["pid"] == fake.pid
    assert pd["persistence_mode"] is False
    finding = run.finding("persistenced_no_persistence_mode")
    assert finding is not None and finding["status"] == "problem"
    assert run.doc["verdict"]["cause"] == "persistenced_no_persistence_mode"


def test_revoked_device_access_with_persistence_on(
    gpu: GpuController, make_container: Callable[..., Container],
    diagnose: Callable[..., Run], unchanged: Unchanged,
    revoke: Callable[[Container], None],
) -> None:
    """Device access revoked (what a daemon-reload does), persistence on, no reload seen:
    device_access_lost from the kernel's refusal (certain), exit 1, restart now and the
    lasting fixes; nothing changed."""
    gpu.set_persistence(True)
    c = healthy_konomi(make_container, unchanged)
    revoke(c)
    run = diagnose(c.name)
    assert run.rc == 1, run.stdout + run.stderr
    report = run.container(c.name)
    assert report["verdict"]["cause"] == "device_access_lost"
    assert report["device_access_ok"] is False
    assert report["device_check"]["access"] == "lost"
    assert "EPERM" in report["device_check"]["reason"]
    assert "kernel" in report["verdict"]["summary"]
    assert any("EPERM" in e for e in report["verdict"]["evidence"])
    assert report["probe"]["result"] == "nvml_unknown_error"
    assert report["verdict"]["fix_now"] == [f"docker restart {c.name}"]
    assert any("create-dev-char-symlinks" in f for f in report["verdict"]["fix_for_good"])


@pytest.mark.parametrize(("switch", "cause", "probe"), [
    ("set_driver_loaded", "driver_not_loaded", "driver_not_loaded"),
    ("set_version_mismatch", "version_mismatch", "version_mismatch"),
])
def test_host_faults(
    gpu: GpuController, make_container: Callable[..., Container],
    diagnose: Callable[..., Run], unchanged: Unchanged,
    switch: str, cause: str, probe: str,
) -> None:
    """Driver unloaded or upgraded without reboot: the host's NVML names the
    cause for every container, exit 1 (a problem found, not "cannot check")."""
    gpu.set_persistence(True)
    c = healthy_konomi(make_container, unchanged)
    # Unload the driver, or make the versions mismatch.
    getattr(gpu, switch)(switch == "set_version_mismatch")
    run = diagnose(c.name)
    assert run.rc == 1, run.stdout + run.stderr
    assert run.doc["host"]["nvml_failure"] == cause
    report = run.container(c.name)
    assert report["verdict"]["cause"] == cause
    assert report["probe"]["result"] == probe
    expected = "sudo modprobe nvidia" if cause == "driver_not_loaded" else "sudo reboot"
    assert expected in report["verdict"]["fix_now"]


def test_container_without_nvidia_smi(
    gpu: GpuController, make_container: Callable[..., Container],
    diagnose: Callable[..., Run], unchanged: Unchanged,
) -> None:
    """No nvidia-smi inside: probe_unavailable, exit 4 (could not check)."""
    gpu.set_persistence(True)
    c = make_container("nosmi")
    unchanged.append(c)
    run = diagnose(c.name)
    assert run.rc == 4, run.stdout + run.stderr
    report = run.container(c.name)
    assert report["verdict"]["cause"] == "probe_unavailable"
    assert report["verdict"]["status"] == "cannot_check"
    assert report["device_access_ok"] is True


def test_tuner_fault_is_not_the_gpu(
    gpu: GpuController, make_container: Callable[..., Container],
    diagnose: Callable[..., Run], unchanged: Unchanged,
) -> None:
    """ER-05 lines while NVML works: not_gpu (a genuine tuner fault), exit 1."""
    gpu.set_persistence(True)
    c = make_container("konomi", mode="tuner_fault")
    wait_for_log(c, ER05_LINE, 20)
    # A line within START_MARGIN of the start is ambiguous (it may be the one that
    # led to a restart); the tuner's next ones, a second apart, are not.
    time.sleep(START_MARGIN + 2)
    unchanged.append(c)
    run = diagnose(c.name)
    assert run.rc == 1, run.stdout + run.stderr
    assert run.container(c.name)["verdict"]["cause"] == "not_gpu"


def test_without_names_examines_the_watched_containers(
    gpu: GpuController, make_container: Callable[..., Container],
    diagnose: Callable[..., Run], unchanged: Unchanged,
) -> None:
    """No CONTAINER: exactly the containers the config's [watch] selects."""
    gpu.set_persistence(True)
    label = f"gwd-diag-{os.getpid()}-{time.monotonic_ns()}"
    watched = healthy_konomi(make_container, unchanged, labels={label: "1"})
    other = make_container("konomi")
    run = diagnose(config_text=f'[watch]\nlabels = ["{label}=1"]\n')
    assert run.rc == 0, run.stdout + run.stderr
    names = [c["name"] for c in run.doc["containers"]]
    assert names == [watched.name]
    assert other.name not in names


def test_no_such_container_is_one_line_exit_2(diagnose: Callable[..., Run]) -> None:
    """A container that does not exist: one line on stderr, exit 2, nothing on stdout."""
    run = diagnose("gwd-no-such-container-x", as_json=False)
    assert run.rc == 2
    assert run.stdout == ""
    assert run.stderr.strip().splitlines() == [
        "gpuwatchd: no such container: gwd-no-such-container-x"
    ]


def test_docker_unavailable_is_cannot_check(gpu: GpuController, tmp_path: Path,
                                            diagnose: Callable[..., Run]) -> None:
    """No engine answers and the host is fine: exit 4, the host still diagnosed."""
    gpu.set_persistence(True)
    run = diagnose(env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    assert run.rc == 4, run.stdout + run.stderr
    assert run.doc["verdict"]["cause"] == "docker_unavailable"
    assert run.doc["host"]["gpus"][0]["persistence"] is True


@on_every_engine
def test_diagnose_names_the_engine_it_talked_to(
    engine: Engine, diagnose: Callable[..., Run],
) -> None:
    """The host section says Docker or Podman and its version, in JSON and in text."""
    config = f'[probe]\ntimeout = "5s"\n[docker]\nhost = "{engine.host}"\n'
    if engine.name == "podman":
        want = ("Podman", engine.podman("version", "--format", "{{.Server.Version}}").strip())
    else:
        want = ("Docker", str(engine.client.version()["Version"]))
    run = diagnose(config_text=config)
    docker = run.doc["host"]["docker"]
    assert (docker["engine"], docker["engine_version"]) == want
    text = diagnose(as_json=False, config_text=config)
    assert f"engine: {want[0]} {want[1]}, cgroup driver" in text.stdout, text.stdout
