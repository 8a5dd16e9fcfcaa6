"""An in-process daemon for fault tests: the real engine and the stand-in driver,
with a fake only where a fault cannot be made for real (a gateway subclass)."""

from __future__ import annotations

import asyncio
import ctypes
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gpuwatchd.adapters.docker_engine import DockerGateway
from gpuwatchd.config import Config, DaemonConfig, ProbeConfig, WatchConfig
from gpuwatchd.daemon import Daemon
from gpuwatchd.model.records import Record
from tests.bench import Bench
from tests.bench.gpu import GpuController


@dataclass
class Running:
    """A daemon running in this process, and every record it wrote."""

    daemon: Daemon
    seen: list[Record] = field(default_factory=list)

    def events(self, event: str, container: str | None = None) -> list[Record]:
        return [r for r in self.seen if r.event == event
                and (container is None or r.get("container") == container)]

    async def record(self, event: str, container: str | None = None,
                     within: float = 30.0, after: int = 0) -> Record:
        """The first ``event`` record (for ``container``) among those written
        after the first ``after``, waiting up to ``within`` seconds."""
        for _ in range(int(within * 10)):
            found = [r for r in self.seen[after:] if r.event == event
                     and (container is None or r.get("container") == container)]
            if found:
                return found[0]
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"no {event} within {within} s; saw {[(r.event, dict(r.fields)) for r in self.seen]}"
        )


def use_stand_in_driver(bench: Bench, gpu: GpuController, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point this process's pynvml at the stand-in driver."""
    for key, value in gpu.env().items():
        if key != "LD_LIBRARY_PATH":
            monkeypatch.setenv(key, value)
    ctypes.CDLL(str(bench.lib), mode=ctypes.RTLD_GLOBAL)


def fault_config(tmp_path: Path, watched: dict[str, str], **sections: Any) -> Config:
    """A config watching ``watched`` with quick probes (every 2 s, 1 s start grace)."""
    base: dict[str, Any] = {
        "daemon": DaemonConfig(state_dir=tmp_path / "state", runtime_dir=tmp_path / "run"),
        "probe": ProbeConfig(start_grace=1.0, interval=2.0),
        "watch": WatchConfig(labels=tuple(f"{k}={v}" for k, v in watched.items())),
    }
    base.update(sections)
    return Config(**base)


@asynccontextmanager
async def running(config: Config, gateway: DockerGateway | None = None,
                  **kwargs: Any) -> AsyncIterator[Running]:
    """Run a Daemon for the body of the ``async with``; it must stop cleanly after."""
    daemon = Daemon(config, gateway=gateway, **kwargs)
    run = Running(daemon)
    daemon.record_listeners.append(run.seen.append)
    task = asyncio.create_task(daemon.run())
    try:
        yield run
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 60) == 0
        del daemon
        gc.collect()
