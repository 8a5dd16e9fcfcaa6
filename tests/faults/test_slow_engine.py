"""Faults survived: a slow engine while containers gpuwatchd does not watch come and go.

A slow engine cannot be made on demand, so a gateway subclass delays every
inspect; the containers, their events and the control socket are real.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from docker.models.containers import Container

from gpuwatchd.adapters.docker_engine import ContainerInfo, DockerGateway
from gpuwatchd.adapters.state_file import ALL_CONTAINERS
from gpuwatchd.observers.control import request
from tests.bench import Bench
from tests.bench.gpu import GpuController
from tests.faults.harness import fault_config, running, use_stand_in_driver

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

#: How long each inspect takes on the "slow engine".
SLOW = 3.0


class SlowInspect(DockerGateway):
    """The real gateway, except that every inspect takes SLOW seconds longer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inspected: list[str] = []
        self._lock = threading.Lock()

    def inspect(self, ref: str) -> ContainerInfo | None:
        with self._lock:
            self.inspected.append(ref)
        time.sleep(SLOW)
        return super().inspect(ref)


async def test_events_of_unwatched_containers_cost_no_io_and_pause_is_applied_when_answered(
    bench: Bench, gpu: GpuController, make_container: Callable[..., Container],
    watch_label: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_stand_in_driver(bench, gpu, monkeypatch)
    watched = {watch_label: "1"}
    await asyncio.to_thread(gpu.set_persistence, True)
    gateway = SlowInspect(pool_size=16)
    config = fault_config(tmp_path, watched)
    async with running(config, gateway) as run:
        await run.record("daemon_started", None, 20)
        await asyncio.sleep(1.0)  # the event stream is up
        others = [await asyncio.to_thread(make_container, "konomi") for _ in range(3)]
        await asyncio.sleep(1.0)  # their create/start events reach the dispatcher
        answer = await asyncio.to_thread(
            request, config.daemon.runtime_dir, {"command": "pause"}, 30.0)
        assert answer["paused"] == "all"
        # Answered means applied: the core holds the pause already.
        assert run.daemon._core is not None
        assert ALL_CONTAINERS in run.daemon._core.persisted().paused
        # No container the daemon does not watch was ever inspected.
        other_ids = {c.id for c in others}
        assert not other_ids & {ref for ref in gateway.inspected}
        await asyncio.to_thread(request, config.daemon.runtime_dir, {"command": "resume"}, 30.0)
        # A watched container's fault is still healed.
        konomi = await asyncio.to_thread(make_container, "konomi", labels=watched)
        await run.record("watch_set_changed", konomi.name, 30)
        await asyncio.sleep(1.5)
        await asyncio.to_thread(gpu.revoke_device_access, konomi)
        await run.record("container_restarted", konomi.name, 60)
        await run.record("container_recovered", konomi.name, 60)
