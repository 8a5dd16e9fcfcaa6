"""The one interface every observer has: start, stop, alive."""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    """Turns one part of the world into items on the daemon's queue.

    ``start`` returns once the observer runs (its thread or task started, its
    socket bound); ``stop`` asks it to end and returns without waiting for a
    stream or a call in flight; ``alive`` is False when it is stuck or died,
    which stops the systemd watchdog ping.
    """

    async def start(self) -> None: ...

    def stop(self) -> None: ...

    def alive(self) -> bool: ...
