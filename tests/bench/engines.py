"""The engines the live tests run against: the shared Docker engine and a private Podman.

Both are reached through the docker SDK, as gpuwatchd reaches them: Podman
through the Docker-compatible API of ``podman system service``, whose socket
``scripts/test`` starts and names in ``GPUWATCHD_TEST_PODMAN_HOST``.

Podman 4.3 reads CDI specs only from /etc/cdi and /var/run/cdi; the bench
writes its specs to /var/run/cdi under names that carry the writer's PID
(``gpuwatchd-bench-<pid>-<token>.json``), so ``scripts/test`` can remove the
ones a killed run left behind.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.bench.gpu import (
    CONTAINER_DEVICE,
    CONTAINER_SESSION_DIR,
    GpuController,
)
from tests.bench.images import BuiltImage

#: The engines, as ``engine`` fixture parameters.
ENGINES = ("docker", "podman")
#: Parametrises a test over every engine: ``@on_every_engine`` (the test takes ``engine``).
on_every_engine = pytest.mark.parametrize("engine", ENGINES, indirect=True)
#: Where the bench writes CDI specs (Podman 4.3 reads no other directory but /etc/cdi).
CDI_DIR = Path("/var/run/cdi")
CDI_KIND = "nvidia.com/gpu"
PODMAN_HOST_ENV = "GPUWATCHD_TEST_PODMAN_HOST"


@dataclass(frozen=True)
class Engine:
    """One engine the tests talk to: its name, its API URL and an SDK client to it."""

    name: str  #: "docker" or "podman"
    host: str  #: the URL gpuwatchd's ``[docker] host`` takes (unix://...)
    client: docker.DockerClient
    images: dict[str, BuiltImage]

    def podman(self, *args: str, timeout: float = 60) -> str:
        """Runs the ``podman`` command line against this (Podman) engine; returns stdout.

        Raises:
            RuntimeError: when it fails; the message carries its stderr.
        """
        if self.name != "podman":
            raise ValueError(f"the podman command line does not talk to {self.name}")
        proc = subprocess.run(
            ["podman", "--url", self.host, *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout


def podman_host() -> str:
    """The private Podman service's URL; fails the test (never skips) when none is set."""
    host = os.environ.get(PODMAN_HOST_ENV, "")
    if not host:
        pytest.fail(
            f"{PODMAN_HOST_ENV} is not set: run the suite with scripts/test, "
            "which starts a private podman service", pytrace=False,
        )
    return host


def cdi_spec(gpu: GpuController, device: str) -> dict[str, Any]:
    """A CDI spec giving device ``device`` this GPU world, as nvidia-ctk's spec does:
    the device node, the library and nvidia-smi mounts, and NVIDIA_VISIBLE_DEVICES=void."""
    kwargs = gpu.run_kwargs()
    mounts = [
        {
            "hostPath": host,
            "containerPath": bind["bind"],
            "options": [bind["mode"], "nosuid", "nodev", "bind"],
        }
        for host, bind in kwargs["volumes"].items()
    ]
    env = [f"{k}={v}" for k, v in kwargs["environment"].items()]
    return {
        "cdiVersion": "0.5.0",
        "kind": CDI_KIND,
        "devices": [
            {
                "name": device,
                "containerEdits": {
                    "deviceNodes": [{"path": CONTAINER_DEVICE, "hostPath": str(gpu.device_node)}],
                    "mounts": mounts,
                    "env": [*env, "NVIDIA_VISIBLE_DEVICES=void"],
                },
            }
        ],
    }


@contextmanager
def cdi_device(gpu: GpuController) -> Iterator[str]:
    """Writes a CDI spec for ``gpu`` and yields its qualified device name
    (``nvidia.com/gpu=<token>``); the spec is removed on exit."""
    token = secrets.token_hex(4)
    device = f"bench{token}"
    CDI_DIR.mkdir(parents=True, exist_ok=True)
    path = CDI_DIR / f"gpuwatchd-bench-{os.getpid()}-{token}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cdi_spec(gpu, device)))
    tmp.rename(path)
    try:
        yield f"{CDI_KIND}={device}"
    finally:
        path.unlink(missing_ok=True)


def run_cdi_container(engine: Engine, image: str, name: str, device: str,
                      labels: dict[str, str]) -> str:
    """Starts a container given its GPU by CDI (``podman run --device <device>``),
    as Podman users do; returns its ID.  CDI is not on the compat API."""
    args = ["run", "-d", "--name", name, "--network", "none", "--device", device,
            "--tmpfs", f"{CONTAINER_SESSION_DIR}:size=64k", "-e", "WORKLOAD_MODE=normal"]
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    return engine.podman(*args, image).strip()


class EventRecorder:
    """Records an engine's container events live, on a thread, until :meth:`close`.

    Podman's compat API returns no history for ``events(since=, until=)``, so
    tests that count events watch them as they happen.
    """

    def __init__(self, client: docker.DockerClient, container_id: str) -> None:
        self.actions: list[str] = []
        self._stream = client.api.events(
            decode=True, filters={"type": "container", "container": container_id}
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                self.actions.append(str(event.get("Action") or event.get("status") or ""))
        except (docker.errors.DockerException, OSError, ValueError):
            pass  # closed under us

    def execs(self) -> int:
        """Exec sessions created so far: Docker's ``exec_create: ...``, Podman's ``exec``."""
        return sum(a.startswith("exec_create") or a == "exec" for a in self.actions)

    def close(self) -> None:
        self._stream.close()
        self._thread.join(5)
