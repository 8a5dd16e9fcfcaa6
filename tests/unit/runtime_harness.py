"""A runtime for the daemon's parts with the adapters' fakes: no engine, no driver.

:class:`InlineRuntime` runs "blocking" calls inline on the loop (the fakes
never block), so a test of the executor or the watch set needs no thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from gpuwatchd.adapters.docker_engine import ContainerInfo
from gpuwatchd.model.records import Record
from gpuwatchd.runtime import Item, Runtime

T = TypeVar("T")

T0 = 1_767_139_200.0


class Recorded:
    """Every record offered, unfolded."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def __call__(self, record: Record, *, fold: bool = True) -> None:
        self.records.append(record)

    def events(self, name: str) -> list[Record]:
        return [r for r in self.records if r.event == name]


class InlineRuntime(Runtime):
    """A :class:`Runtime` whose blocking calls run inline (the fakes return at once)."""

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)


def make_runtime(inline: bool = True) -> tuple[Runtime, Recorded]:
    recorded = Recorded()
    runtime = (InlineRuntime if inline else Runtime)(recorded, 2)
    runtime.inbox.bind(asyncio.get_running_loop())
    return runtime, recorded


async def settle(runtime: Runtime) -> None:
    """Let every task the runtime spawned run to its end (or its next sleep)."""
    for _ in range(20):
        await asyncio.sleep(0)
    pending = [t for t in runtime.tasks if not t.done()]
    if pending:
        await asyncio.wait(pending, timeout=0.2)


def queued(runtime: Runtime) -> list[Item]:
    """Everything on the inbox now, in order (taken off it)."""
    items = []
    while runtime.inbox.qsize():
        items.append(runtime.inbox._queue.get_nowait())
        runtime.inbox.task_done()
    return items


def container(name: str = "konomi", *, status: str = "running", started_at: float = T0,
              labels: dict[str, str] | None = None, cid: str | None = None,
              expects_nvidia_device: bool = False) -> ContainerInfo:
    return ContainerInfo(cid or name[0] * 64, name, status, started_at,
                         labels if labels is not None else {"gpuwatchd.watch": "true"},
                         pid=0, uses_gpu=True, expects_nvidia_device=expects_nvidia_device)
