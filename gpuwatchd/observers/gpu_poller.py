"""The GPU poller: the host's GPUs, read through NVML every ``gpu.poll_interval``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gpuwatchd.adapters.nvml import gpu_reading
from gpuwatchd.adapters.protocols import NvmlPort
from gpuwatchd.config import Config
from gpuwatchd.model.events import GpuSnapshot
from gpuwatchd.runtime import Runtime

#: How far past two poll intervals a poll may be late before the poller counts as stuck.
STUCK_SLACK = 60.0


class GpuPoller:
    """Puts a GpuSnapshot (or NvmlUnavailable) on the queue after every read.

    While NVML fails, reads are retried with backoff (capped at the normal
    interval). It is alive while its task runs and a read came back recently,
    the first one included: a read that fails (no NVML at all) comes back and
    counts; one that never returns (an NVML call that hangs blocks a worker)
    does not.
    """

    def __init__(self, runtime: Runtime, nvml: NvmlPort, config: Callable[[], Config]) -> None:
        self._runtime = runtime
        self._nvml = nvml
        self._config = config
        self._task: asyncio.Task[None] | None = None
        self._started_at = time.time()
        self.last_poll = 0.0  #: when the last read came back (epoch seconds)

    async def start(self) -> None:
        self._started_at = time.time()
        self._task = self._runtime.spawn(self._poll_forever(), "gpu-poller")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def alive(self) -> bool:
        if self._task is None or self._task.done():
            return False
        bound = self._config().gpu.poll_interval * 2 + STUCK_SLACK
        return time.time() - (self.last_poll or self._started_at) <= bound

    async def _poll_forever(self) -> None:
        failures = 0
        while True:
            ok = await self.poll_once()
            failures = 0 if ok else failures + 1
            interval = self._config().gpu.poll_interval
            # Degraded: retry with backoff, capped at the normal interval.
            delay = interval if ok else min(interval, 2.0 ** min(failures, 10))
            await asyncio.sleep(delay)

    async def poll_once(self) -> bool:
        """Read once and put the reading on the queue; True when NVML answered."""
        reading = await self._runtime.blocking(gpu_reading, self._nvml.read_gpus)
        self.last_poll = time.time()
        self._runtime.inbox.put(reading)
        return isinstance(reading, GpuSnapshot)
