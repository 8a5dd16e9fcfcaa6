"""Faults survived: an action of the executor raises something unexpected.

"can't start new thread" cannot be made on demand without starving the whole
test process, so the real gateway and the real NVML wrapper are subclassed to
raise it from one call; the engine and the stand-in driver are real.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from docker.models.containers import Container

from gpuwatchd.adapters.docker_engine import DockerGateway
from gpuwatchd.adapters.nvml import Nvml
from gpuwatchd.config import GpuConfig, RemediationConfig
from tests.bench import Bench
from tests.bench.gpu import GpuController
from tests.faults.harness import fault_config, running, use_stand_in_driver

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    # The docker SDK leaves finished exec sockets to the garbage collector (see
    # tests/live/test_event_loop.py); the daemon runs in this process here.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


class FirstRestartRaises(DockerGateway):
    """The real gateway, except that the first restart raises RuntimeError."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raised = threading.Event()

    def restart(self, ref: str, stop_timeout: float) -> None:
        if not self.raised.is_set():
            self.raised.set()
            raise RuntimeError("can't start new thread")
        super().restart(ref, stop_timeout)


class FirstSetRaises(Nvml):
    """The real NVML wrapper, except that the first set_persistence raises."""

    def __init__(self) -> None:
        super().__init__()
        self.raised = threading.Event()

    def set_persistence(self, index: int, enabled: bool = True) -> None:
        if not self.raised.is_set():
            self.raised.set()
            raise RuntimeError("can't start new thread")
        super().set_persistence(index, enabled)


async def test_a_restart_that_raises_ends_failed_and_the_next_fault_heals(
    bench: Bench, gpu: GpuController, make_container: Callable[..., Container],
    watch_label: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The restart raises: remediation_failed (restart_error), and the container is
    watched on; its fault, still there, is healed by the next restart."""
    use_stand_in_driver(bench, gpu, monkeypatch)
    watched = {watch_label: "1"}
    await asyncio.to_thread(gpu.set_persistence, True)
    konomi = await asyncio.to_thread(make_container, "konomi", labels=watched)
    config = fault_config(tmp_path, watched, remediation=RemediationConfig(cooldown=1.0))
    async with running(config, FirstRestartRaises(pool_size=16)) as run:
        await run.record("watch_set_changed", konomi.name, 20)
        await asyncio.sleep(1.5)  # past the start grace
        await asyncio.to_thread(gpu.revoke_device_access, konomi)
        failed = await run.record("remediation_failed", konomi.name, 30)
        assert failed.get("result") == "restart_error"
        assert "can't start new thread" in str(failed.get("error"))
        restarted = await run.record("container_restarted", konomi.name, 30)
        assert restarted.get("cause") == "device_access_lost"
        await run.record("container_recovered", konomi.name, 60)


async def test_a_persistence_set_that_raises_ends_failed_and_is_enforced_again(
    bench: Bench, gpu: GpuController, make_container: Callable[..., Container],
    watch_label: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Setting persistence raises: gpu_persistence_set_failed, and persistence is
    enforced again at the next attempt; a container's fault then heals."""
    use_stand_in_driver(bench, gpu, monkeypatch)
    watched = {watch_label: "1"}
    await asyncio.to_thread(gpu.set_persistence, False)
    konomi = await asyncio.to_thread(make_container, "konomi", labels=watched)
    config = fault_config(tmp_path, watched, gpu=GpuConfig(poll_interval=1.0),
                          remediation=RemediationConfig(cooldown=1.0))
    async with running(config, nvml=FirstSetRaises()) as run:
        failed = await run.record("gpu_persistence_set_failed", None, 20)
        assert "can't start new thread" in str(failed.get("error"))
        await run.record("gpu_persistence_enabled", None, 20)
        assert await asyncio.to_thread(gpu.persistence) == [True] * gpu.gpu_count()
        await run.record("watch_set_changed", konomi.name, 20)
        await asyncio.sleep(1.5)  # past the start grace
        await asyncio.to_thread(gpu.revoke_device_access, konomi)
        await run.record("container_restarted", konomi.name, 30)
        await run.record("container_recovered", konomi.name, 60)
