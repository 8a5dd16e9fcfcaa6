"""A real systemd 252 as PID 1 in a container on the real Docker engine.

``systemd_box`` (one per session) and ``boot_systemd`` (a fresh one on demand)
give a :class:`SystemdBox`: a booted Debian bookworm with journald, in which the
tests run ``systemctl``, ``journalctl`` and ``packaging/install.sh``. Inside it:

* the working tree is mounted read-only at the same path as on the host, so
  ``PYTHONPATH=<repo>`` and paths under ``.bench/`` mean the same thing;
* pytest's base temp directory is mounted read-write at the same path, so a
  ``gpu`` fixture's ``env()`` (state file, call log) works unchanged;
* the host's Docker socket is ``/run/docker.sock``: a service inside talks to
  the same engine as the tests;
* ``/srv/wheels`` holds (read-only) the wheels ``offline_wheels`` downloads on
  the host, because the container has no network: ``install.sh --wheel-dir``.

Every box is removed at teardown.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from docker.models.containers import Container

from gpuwatchd.compat import tomllib
from tests.systemd.image import ensure_image

REPO = Path(__file__).resolve().parents[2]
WHEELS_IN_BOX = "/srv/wheels"
DOCKER_SOCKET = "/var/run/docker.sock"
BOOT_TIMEOUT = 60.0

Journal = list[dict[str, Any]]


class SystemdBox:
    """One booted systemd container and the helpers tests use on it."""

    def __init__(self, container: Container) -> None:
        self.container = container

    @property
    def name(self) -> str:
        return str(self.container.name)

    def sysexec(
        self,
        cmd: str | Sequence[str],
        env: Mapping[str, str] | None = None,
        check: bool = False,
    ) -> tuple[int, str]:
        """Run *cmd* (a shell line, or argv) inside the box; return (exit status, output).

        stdout and stderr come back together. With *check*, a non-zero status
        fails the test with the command and its output.
        """
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        rc, out = self.container.exec_run(argv, environment=dict(env or {}), demux=False)
        text = (out or b"").decode(errors="replace")
        if check and rc != 0:
            pytest.fail(f"in {self.name}: {argv!r} exited {rc}:\n{text}")
        return int(rc), text

    def wait_booted(self, timeout: float = BOOT_TIMEOUT) -> str:
        """Wait for PID 1's private socket, then for boot to finish; return the state.

        Fails the test when boot does not finish or ends in a state other than
        ``running`` or ``degraded`` (failed units are listed).
        """
        deadline = time.monotonic() + timeout
        while self.sysexec(["test", "-S", "/run/systemd/private"])[0] != 0:
            self.container.reload()
            if self.container.status != "running" or time.monotonic() > deadline:
                logs = self.container.logs(tail=30).decode(errors="replace")
                pytest.fail(f"systemd did not come up in {self.name}:\n{logs}")
            time.sleep(0.1)
        rc, state = self.sysexec(
            ["timeout", str(int(timeout)), "systemctl", "is-system-running", "--wait"]
        )
        state = state.strip()
        if state not in ("running", "degraded"):
            failed = self.sysexec("systemctl --failed --no-pager")[1]
            pytest.fail(f"systemd in {self.name} is {state!r} (rc {rc}):\n{failed}")
        return state

    def journal(self, *matches: str, since_cursor: str | None = None) -> Journal:
        """Journal entries (``journalctl -o json``) for FIELD=VALUE *matches*.

        *since_cursor* keeps only entries after that one. It is applied here,
        not with ``--after-cursor``: journalctl 252 returns nothing when that
        option meets a FIELD=VALUE match the cursor's own entry does not satisfy.
        """
        argv = ["journalctl", "--no-pager", "-o", "json", *matches]
        self.sysexec(["journalctl", "--sync"])
        _, out = self.sysexec(argv)
        entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        if since_cursor:
            after = _cursor_time(since_cursor)
            entries = [
                e for e in entries
                if int(e["__REALTIME_TIMESTAMP"]) >= after and e["__CURSOR"] != since_cursor
            ]
        return entries

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show -p ...`` as a dict."""
        argv = ["systemctl", "show", unit]
        for prop in properties:
            argv += ["-p", prop]
        _, out = self.sysexec(argv)
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float,
        what: str,
        interval: float = 0.2,
    ) -> None:
        """Poll *predicate* until true; fail the test naming *what* on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(interval)

    def write_file(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        """Create or replace *path* (parents must exist) owned by root.

        Written by a shell inside the box: the archive API (docker cp) cannot
        write into tmpfs mounts such as /run.
        """
        data = content.encode() if isinstance(content, str) else content
        encoded = base64.b64encode(data).decode()
        target = shlex.quote(path)
        self.sysexec(
            f"umask 077; printf %s {encoded} | base64 -d > {target}.tmp"
            f" && chmod {mode:o} {target}.tmp && mv -f {target}.tmp {target}",
            check=True,
        )

    def read_file(self, path: str) -> str:
        """The text of *path* inside the box; fails the test when it is missing."""
        return self.sysexec(["cat", path], check=True)[1]

    def install_dropin(self, unit: str, name: str, text: str) -> None:
        """Write /etc/systemd/system/<unit>.d/<name>.conf and daemon-reload."""
        directory = f"/etc/systemd/system/{unit}.d"
        self.sysexec(["mkdir", "-p", directory], check=True)
        self.write_file(f"{directory}/{name}.conf", text)
        self.sysexec(["systemctl", "daemon-reload"], check=True)

    def install_gpuwatchd(self, *args: str) -> str:
        """Run ``packaging/install.sh --wheel-dir /srv/wheels *args``; fail unless it succeeds."""
        return self.sysexec(
            [str(REPO / "packaging/install.sh"), "--wheel-dir", WHEELS_IN_BOX, *args],
            check=True,
        )[1]

    def python(self, code: str, *, env: Mapping[str, str] | None = None) -> tuple[int, str]:
        """Run *code* with the box's system python3 and the working tree importable."""
        return self.sysexec(["python3", "-c", code], env={"PYTHONPATH": str(REPO), **(env or {})})


def _cursor_time(cursor: str) -> int:
    """The wall-clock time (µs) in a journal cursor's ``t=`` part."""
    parts = dict(part.split("=", 1) for part in cursor.split(";") if "=" in part)
    return int(parts["t"], 16)


def _service_env(env: Mapping[str, str]) -> str:
    return "\n".join(f"Environment={shlex.quote(f'{k}={v}')}" for k, v in env.items())


# ---- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="session")
def systemd_docker() -> Iterator[docker.DockerClient]:
    """A Docker client for the shared engine (this package's own, so nothing depends on order)."""
    client = docker.DockerClient(base_url=f"unix://{DOCKER_SOCKET}", timeout=120)
    try:
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"the Docker engine at {DOCKER_SOCKET} does not answer: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def systemd_image(systemd_docker: docker.DockerClient) -> str:
    """The tag of the bookworm systemd image, built once (about 50 s) and then cached."""
    try:
        return ensure_image(systemd_docker)
    except subprocess.CalledProcessError as exc:
        stderr = exc.stderr.decode(errors="replace")[-2000:] if exc.stderr else ""
        pytest.fail(f"building the systemd image failed: {exc}\n{stderr}")


@pytest.fixture(scope="session")
def wheel_dir(request: pytest.FixtureRequest) -> Path:
    """The host directory mounted as /srv/wheels (filled by ``offline_wheels``)."""
    return Path(request.config.cache.mkdir("gpuwatchd-wheels"))


@pytest.fixture(scope="session")
def boot_systemd(
    systemd_docker: docker.DockerClient,
    systemd_image: str,
    wheel_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[], SystemdBox]]:
    """Factory: boot a fresh systemd box (under a second); all are removed at session end."""
    basetemp = tmp_path_factory.getbasetemp().resolve()
    started: list[Container] = []

    def boot() -> SystemdBox:
        container = systemd_docker.containers.run(
            systemd_image,
            ["/lib/systemd/systemd"],
            name=f"gpuwatchd-systemd-{int(time.time() * 1000) % 10**9}",
            detach=True,
            # --privileged fails on these machines (no CAP_SYS_RESOURCE in the
            # bounding set): everything else, and no seccomp/AppArmor filter.
            cap_add=["ALL"],
            cap_drop=["SYS_RESOURCE"],
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            cgroupns="host",
            tmpfs={"/run": "", "/run/lock": ""},
            stop_signal="SIGRTMIN+3",
            network_mode="none",
            environment={"container": "docker"},
            labels={"gpuwatchd-test": "systemd"},
            volumes={
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                DOCKER_SOCKET: {"bind": "/run/docker.sock", "mode": "rw"},
                str(REPO): {"bind": str(REPO), "mode": "ro"},
                str(basetemp): {"bind": str(basetemp), "mode": "rw"},
                str(wheel_dir): {"bind": WHEELS_IN_BOX, "mode": "ro"},
            },
        )
        started.append(container)
        box = SystemdBox(container)
        box.wait_booted()
        return box

    yield boot
    for container in started:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)


@pytest.fixture(scope="session")
def systemd_box(boot_systemd: Callable[[], SystemdBox]) -> SystemdBox:
    """One booted systemd shared by the tests that do not change its configuration."""
    return boot_systemd()


def _project_requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    # systemd-python comes from Debian's python3-systemd in the box; setuptools
    # is the build backend pip needs offline to build gpuwatchd's own wheel.
    deps = [d for d in project["project"]["dependencies"] if not d.startswith("systemd-python")]
    # install.sh installs the apprise extra by default.
    extras = project["project"]["optional-dependencies"]["apprise"]
    return [*deps, *extras, *project["build-system"]["requires"]]


@pytest.fixture(scope="session")
def offline_wheels(wheel_dir: Path) -> Path:
    """Wheels of every dependency and of setuptools in ``wheel_dir``, downloaded once.

    Downloads from PyPI on the host the first time the requirement list is seen
    (a marker file named by its hash records completion).
    """
    requirements = _project_requirements()
    digest = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:16]
    marker = wheel_dir / f".complete-{digest}"
    if not marker.exists():
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "--quiet",
                "--only-binary",
                ":all:",
                "--dest",
                str(wheel_dir),
                *requirements,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.fail(f"pip download of the offline wheels failed:\n{result.stderr[-2000:]}")
        marker.touch()
    return wheel_dir


@pytest.fixture(scope="session")
def installed_box(boot_systemd: Callable[[], SystemdBox], offline_wheels: Path) -> SystemdBox:
    """A box with gpuwatchd installed by ``install.sh`` (enabled, not started).

    Meant for the end-to-end daemon tests: give the service the simulated GPU
    with :func:`gpu_dropin_text` and start it. When the working tree has no
    config.example.toml yet, a minimal config is written first.
    """
    box = boot_systemd()
    if not (REPO / "config.example.toml").exists():
        box.sysexec(["install", "-d", "-m", "0755", "/etc/gpuwatchd"], check=True)
        box.write_file("/etc/gpuwatchd/config.toml", "[watch]\ncontainers = []\n", 0o600)
    box.install_gpuwatchd("--no-start")
    return box


def gpu_dropin_text(env: Mapping[str, str], writable: Sequence[Path]) -> str:
    """A ``gpuwatchd.service`` drop-in that hands the service the bench's simulated GPU.

    *env* is the ``gpu`` fixture's ``env()``; *writable* the directories the
    stand-in library writes (its state and call log, under pytest's temp dir).
    They live under /tmp, which the unit's PrivateTmp= hides and ProtectSystem=
    makes read-only: BindPaths= puts them back, writable. A real driver needs
    none of this; the hardening itself is unchanged.
    """
    binds = " ".join(str(p) for p in writable)
    # The stand-in library too: a checkout under /tmp (CI clones anywhere)
    # is hidden by PrivateTmp= like the state.
    libs = " ".join(p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p)
    read_only = f"BindReadOnlyPaths={libs}\n" if libs else ""
    return f"[Service]\n{_service_env(env)}\nBindPaths={binds}\n{read_only}"


def exposure(analyze_output: str, unit: str) -> float:
    """The overall exposure figure from ``systemd-analyze security`` output."""
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+)", analyze_output)
    if match is None:
        pytest.fail(f"no exposure figure in systemd-analyze output:\n{analyze_output[-2000:]}")
    return float(match.group(1))
