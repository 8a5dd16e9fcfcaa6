"""Faults survived: one Docker call fails while the engine keeps answering.

The engine cannot be made to fail exactly one exec on demand, so a gateway
subclass raises DockerUnavailable from that one call; everything else is the
real engine and the stand-in driver.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from docker.models.containers import Container

from gpuwatchd.adapters.docker_engine import DockerGateway, DockerUnavailable, ExecOutcome
from tests.bench import Bench
from tests.bench.gpu import GpuController
from tests.faults.harness import fault_config, running, use_stand_in_driver

pytestmark = [pytest.mark.docker, pytest.mark.slow]


class OneProbeFails(DockerGateway):
    """The real gateway, except that the next probe after :meth:`arm` fails
    as if the engine had not answered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.armed = threading.Event()
        self.failed = threading.Event()

    def arm(self) -> None:
        self.armed.set()

    def exec_probe(self, ref: str, argv: tuple[str, ...], timeout: float,
                   max_output: int = 65536) -> ExecOutcome:
        if self.armed.is_set() and not self.failed.is_set():
            self.failed.set()
            raise DockerUnavailable("Read timed out. (injected)")
        return super().exec_probe(ref, argv, timeout, max_output)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_one_failed_probe_call_is_that_calls_error_and_the_next_fault_heals(
    bench: Bench, gpu: GpuController, make_container: Callable[..., Container],
    watch_label: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A probe whose exec call fails is recorded for that call, ends (so the
    container is probed again at once), and the engine is not marked down:
    the next real fault is healed as usual."""
    use_stand_in_driver(bench, gpu, monkeypatch)
    watched = {watch_label: "1"}
    await asyncio.to_thread(gpu.set_persistence, True)
    konomi = await asyncio.to_thread(make_container, "konomi", labels=watched)
    gateway = OneProbeFails(pool_size=16)
    async with running(fault_config(tmp_path, watched), gateway) as run:
        await run.record("watch_set_changed", konomi.name, 20)
        gateway.arm()
        await asyncio.to_thread(gateway.failed.wait, 20)
        failed = await run.record("docker_call_failed", konomi.name, 10)
        assert failed.get("call") == "exec_probe"
        await asyncio.to_thread(gpu.revoke_device_access, konomi)
        restarted = await run.record("container_restarted", konomi.name, 30)
        assert restarted.get("cause") == "device_access_lost"
        await run.record("container_recovered", konomi.name, 60)
        # The engine answered every other call: it was never reported down.
        assert run.events("docker_unavailable") == []
        assert run.daemon.status_document()["docker_available"] is True
