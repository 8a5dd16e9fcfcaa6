"""The daemon's lifecycle with the adapters' fakes: start -> READY, a stop request ->
shutdown in order, a stuck observer -> no more watchdog pings."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gpuwatchd.adapters import sdnotify
from gpuwatchd.adapters.fakes import FakeDocker, FakeHost, FakeNvml
from gpuwatchd.adapters.instance import claim
from gpuwatchd.config import Config, DaemonConfig
from gpuwatchd.daemon import Daemon
from gpuwatchd.model.events import Gpu
from gpuwatchd.model.records import Record
from tests.unit.runtime_harness import container


class FakeObserver:
    """An observer that only says what was asked of it, alive as told."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.is_alive = True

    async def start(self) -> None:
        self.log.append(f"start {self.name}")

    def stop(self) -> None:
        self.log.append(f"stop {self.name}")

    def alive(self) -> bool:
        return self.is_alive


class Running:
    def __init__(self, daemon: Daemon, log: list[str], seen: list[Record],
                 poller: FakeObserver) -> None:
        self.daemon = daemon
        self.log = log
        self.seen = seen
        self.poller = poller

    def pings(self) -> int:
        return sum(1 for e in self.log if e.startswith("notify WATCHDOG=1"))

    async def until(self, entry: str, within: float = 5.0) -> None:
        for _ in range(int(within * 100)):
            if any(e.startswith(entry) for e in self.log):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {entry!r} in {self.log}")


@asynccontextmanager
async def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    config = Config(daemon=DaemonConfig(state_dir=tmp_path / "state",
                                        runtime_dir=tmp_path / "run"))
    daemon = Daemon(config, gateway=FakeDocker(container("konomi")),
                    nvml=FakeNvml(Gpu(0, "GPU-0", "x", True)), host=FakeHost())
    log: list[str] = []
    seen: list[Record] = []
    daemon.record_listeners.append(seen.append)
    daemon.record_listeners.append(lambda r: log.append(f"record {r.event}"))
    poller = FakeObserver("gpu_poller", log)
    daemon.gpu_poller = poller
    daemon.reload_watch = FakeObserver("reload_watch", log)
    for name in ("watch_set", "probe_timers", "control"):
        observer = getattr(daemon, name)
        stop = observer.stop

        def spy(name: str = name, stop: object = stop) -> None:
            log.append(f"stop {name}")
            stop()  # type: ignore[operator]

        observer.stop = spy

    def notify(state: str) -> bool:
        log.append(f"notify {state}")
        return True

    monkeypatch.setattr(sdnotify, "notify", notify)
    task = asyncio.create_task(daemon.run())
    try:
        yield Running(daemon, log, seen, poller)
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0


async def test_start_is_ready_and_a_stop_shuts_down_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running(tmp_path, monkeypatch) as run:
        await run.until("notify READY=1")
        order = [e.split("\n")[0] for e in run.log]
        assert order.index("record daemon_started") < order.index("start gpu_poller") \
            < order.index("start reload_watch") < order.index("notify READY=1")
        await run.until("record watch_set_changed")  # the engine's container, watched
        started = len(run.log)
    after = run.log[started:]
    stopping = [e.split("\n")[0] for e in after
                if e.startswith(("notify STOPPING", "stop ", "record daemon_"))]
    assert stopping == [
        "notify STOPPING=1", "record daemon_stopping", "stop reload_watch", "stop watch_set",
        "stop probe_timers", "stop gpu_poller", "stop control",
    ]
    # The instance lock is released last: another daemon may start now.
    claim(run.daemon.config.daemon).release()
    assert not (tmp_path / "run" / "control.sock").exists()


async def test_a_stuck_observer_stops_the_watchdog_ping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "150000")  # a ping every 50 ms
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    async with running(tmp_path, monkeypatch) as run:
        await run.until("notify WATCHDOG=1")
        await asyncio.sleep(0.2)
        assert run.daemon.alive()
        run.poller.is_alive = False
        await asyncio.sleep(0.1)  # a ping already under way may still go
        pings = run.pings()
        await asyncio.sleep(0.3)
        assert not run.daemon.alive()
        assert run.pings() == pings
        run.poller.is_alive = True
        for _ in range(500):  # the pings resume
            if run.pings() > pings:
                break
            await asyncio.sleep(0.01)
        assert run.pings() > pings
