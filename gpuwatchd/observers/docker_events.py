"""Docker's container events on a dedicated thread, reconnecting by itself.

A lost engine connection is retried with capped exponential backoff; after a
reconnect the daemon resynchronises its watch set from a full listing, since
events that happened while disconnected are not replayed reliably.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tenacity import Future, Retrying, retry_if_exception_type, wait_exponential

from gpuwatchd.adapters.docker_engine import DockerUnavailable, StreamThread
from gpuwatchd.adapters.protocols import DockerPort, EventStreamPort
from gpuwatchd.core.docker_inspect import EngineVersion

EventCallback = Callable[[dict[str, Any]], None]
StatusCallback = Callable[[bool, str | None], None]  # (connected, error)


class EventWatcher(StreamThread):
    """Streams container events; reports connection losses and recoveries."""

    def __init__(
        self,
        gateway: DockerPort,
        on_event: EventCallback,
        on_status: StatusCallback,
        max_backoff: float = 30.0,
    ) -> None:
        self._gateway = gateway
        self._on_event = on_event
        self._on_status = on_status
        self._max_backoff = max_backoff
        self._connected: bool | None = None
        super().__init__("docker-events")
        self._stream: EventStreamPort | None = None
        self.last_event_at = time.time()  #: for liveness checks
        self.engine: EngineVersion | None = None  #: the engine of the last connection

    def _connect(self) -> EventStreamPort:
        self.engine = self._gateway.ping()
        return self._gateway.event_stream()

    def _run(self) -> None:
        while not self._stopping.is_set():
            # A fresh Retrying per connection: backoff starts small again after
            # a connection that worked.
            retrying = Retrying(
                retry=retry_if_exception_type(DockerUnavailable),
                wait=wait_exponential(multiplier=0.5, min=0.5, max=self._max_backoff),
                stop=lambda _state: self._stopping.is_set(),
                sleep=self._sleep,
                before_sleep=lambda state: self._lost(state.outcome),
                reraise=True,
            )
            try:
                self._stream = retrying(self._connect)
            except DockerUnavailable:
                return  # only when stopping
            if self._stopping.is_set():
                self._stream.close()
                return
            if self._connected is not True:
                self._connected = True
                self._on_status(True, None)
            error = "event stream ended"
            try:
                for event in self._stream:
                    self.last_event_at = time.time()
                    self._on_event(event)
            except Exception as exc:  # the watcher must outlive any engine hiccup
                error = f"{type(exc).__name__}: {exc}"
            self._stream.close()
            if self._stopping.is_set():
                return
            self._report_lost(error)
            self._stopping.wait(0.5)

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)  # a stop interrupts the backoff at once

    def _lost(self, outcome: Future | None) -> None:
        exc = outcome.exception() if outcome is not None else None
        self._report_lost(str(exc) if exc else "engine unavailable")

    def _report_lost(self, error: str) -> None:
        if self._connected is not False:
            self._connected = False
            self._on_status(False, error)
