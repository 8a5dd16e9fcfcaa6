"""The reload observer hands the core the journal's last reload from before the start."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from gpuwatchd.model.events import SystemdReloaded
from gpuwatchd.observers.reload_observer import ReloadObserver
from gpuwatchd.observers.reload_watch import ReloadWatcher


class Watcher(ReloadWatcher):
    """A watcher whose journal holds one reload before open and none after."""

    def __init__(self, before: float | None) -> None:
        super().__init__()
        self._before = before

    def open(self) -> None:
        self.last_before_open = self._before

    def follow(self, stop: threading.Event, poll: float = 1.0) -> Iterator[float]:
        yield from ()


async def test_the_last_reload_before_the_start_is_put_as_evidence() -> None:
    put: list[SystemdReloaded] = []
    observer = ReloadObserver(put.append, lambda: Watcher(1_767_000_000.0))
    await observer.start()
    observer.stop()
    assert put == [SystemdReloaded(1_767_000_000.0, before_start=True)]


async def test_no_reload_before_the_start_puts_nothing() -> None:
    put: list[SystemdReloaded] = []
    observer = ReloadObserver(put.append, lambda: Watcher(None))
    await observer.start()
    observer.stop()
    assert put == []
