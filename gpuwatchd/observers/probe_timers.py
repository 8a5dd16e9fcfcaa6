"""Probe timers: one per running watched container, each putting a ProbeTick on the queue."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable

from gpuwatchd.adapters.docker_engine import ContainerInfo
from gpuwatchd.config import Config
from gpuwatchd.model.events import ContainerRef, ProbeTick
from gpuwatchd.runtime import Runtime

#: Every container's first probe comes within this many seconds of watching it.
FIRST_PROBE_SPREAD = 1.0


class ProbeTimers:
    """Started and stopped per container by the watch-set observer.

    The first probe comes soon (within :data:`FIRST_PROBE_SPREAD`), so a
    daemon that starts learns every container's state in seconds; then a
    random phase spreads the probes of many containers over the interval.
    Each tick carries the container's current name.
    """

    def __init__(self, runtime: Runtime, config: Callable[[], Config]) -> None:
        self._runtime = runtime
        self._config = config
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._names: dict[str, str] = {}

    async def start(self) -> None:
        pass  # timers start per container (:meth:`ensure`)

    def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()

    def alive(self) -> bool:
        return True  # a timer that died is recorded by the runtime, and ensure() restarts it

    def ensure(self, info: ContainerInfo) -> None:
        """A timer runs for ``info`` (a running container); starts one if none does."""
        self._names[info.id] = info.name
        timer = self._timers.get(info.id)
        if timer is not None and not timer.done():
            return
        interval = self._config().for_container(info.name, info.image).probe_interval
        self._timers[info.id] = self._runtime.spawn(
            self._tick_forever(ContainerRef(info.id, info.name), interval), f"timer-{info.name}")

    def cancel(self, cid: str) -> None:
        timer = self._timers.pop(cid, None)
        self._names.pop(cid, None)
        if timer is not None:
            timer.cancel()

    async def _tick_forever(self, ref: ContainerRef, interval: float) -> None:
        delays = itertools.chain(
            (random.uniform(0, min(interval, FIRST_PROBE_SPREAD)), random.uniform(0, interval)),
            itertools.repeat(interval),
        )
        for delay in delays:
            await asyncio.sleep(delay)
            name = self._names.get(ref.id, ref.name)
            self._runtime.inbox.put(ProbeTick(ContainerRef(ref.id, name)))
