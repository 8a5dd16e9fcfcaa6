"""Fixtures for end-to-end tests: the real daemon against the real engine and the bench."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.models.containers import Container

from tests.bench import ONAIR_LINE, log_lines, wait_for
from tests.bench.engines import Engine
from tests.bench.gpu import GpuController
from tests.live.daemon_process import DaemonProcess

Sections = dict[str, dict[str, Any]]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def render_toml(sections: Sections) -> str:
    """A config file from ``{"section": {"key": value}}`` (dotted section names allowed)."""
    out = []
    for section, keys in sections.items():
        out.append(f"[{section}]")
        out += [f"{key} = {_toml_value(value)}" for key, value in keys.items()]
        out.append("")
    return "\n".join(out)


@pytest.fixture
def watch_label() -> str:
    """A label selector unique to this test, so no other container is ever watched."""
    return f"gwd-live-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def start_daemon(
    tmp_path: Path, gpu: GpuController, watch_label: str, engine: Engine
) -> Iterator[Callable[..., DaemonProcess]]:
    """Start ``gpuwatchd run --log-format json`` as a real subprocess.

    Defaults: the daemon's own defaults, except state and runtime directories
    under tmp_path, the test's ``engine`` as ``[docker] host``, and a watch
    set of containers labelled ``<watch_label>=1``.
    Every process is stopped (SIGTERM, then SIGKILL) at teardown.
    """
    procs: list[DaemonProcess] = []

    def start(sections: Sections | None = None, *args: str,
              env: dict[str, str] | None = None, nofile: int | None = None) -> DaemonProcess:
        merged: Sections = {
            "daemon": {"state_dir": str(tmp_path / "state"),
                       "runtime_dir": str(tmp_path / "run")},
            "watch": {"labels": [f"{watch_label}=1"]},
            "docker": {"host": engine.host},
        }
        for section, keys in (sections or {}).items():
            merged.setdefault(section, {}).update(keys)
        path = tmp_path / "config.toml"
        path.write_text(render_toml(merged))
        path.chmod(0o600)
        proc = DaemonProcess(path, {**gpu.env(), **(env or {})}, *args, nofile=nofile)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture
def watched(watch_label: str) -> dict[str, str]:
    """The labels that put a container in the test daemon's watch set."""
    return {watch_label: "1"}


#: The bench's two ways to revoke a container's device access: a cgroup v1
#: devices.deny rule, and a cgroup v2 device program beside the container's own.
DEVICE_MODELS = ("v1", "v2")


@pytest.fixture(params=DEVICE_MODELS)
def revoke(request: pytest.FixtureRequest, gpu: GpuController) -> Callable[[Container], None]:
    """Revokes device access under one failure model; a test using it runs under both."""
    if request.param == "v1":
        return gpu.revoke_device_access
    return gpu.revoke_device_access_v2


def started_at(container: Container) -> str:
    container.reload()
    return str(container.attrs["State"]["StartedAt"])


@pytest.fixture
def keep_revoking(gpu: GpuController) -> Iterator[Callable[[Container], None]]:
    """Revoke device access of a container again after every restart: a fault
    that a restart never cures (but which is no host cause)."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(container: Container) -> None:
        def loop() -> None:
            seen = ""
            while not stop.is_set():
                try:
                    now = started_at(container)
                    if now != seen and container.attrs["State"]["Running"]:
                        gpu.revoke_device_access(container)
                        seen = now
                except (docker.errors.APIError, OSError):
                    pass  # between stop and start: try again
                stop.wait(0.1)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    stop.set()
    for thread in threads:
        thread.join(5)


def healthy(container: Container, timeout: float = 20) -> None:
    wait_for(lambda: ONAIR_LINE in "\n".join(log_lines(container)), timeout,
             message=f"{container.name} logs a healthy line")
