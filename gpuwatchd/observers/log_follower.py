"""Following one container's log on a dedicated thread.

Matching happens on the follower thread, so only matches (not every line of a
chatty container) cross into the event loop. Each follower starts at a given
moment (the attach time, or the container's new start time after a restart),
so a line written before it is never acted on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import docker.errors

from gpuwatchd.adapters.docker_engine import DockerUnavailable, StreamThread
from gpuwatchd.adapters.protocols import DockerPort, LogStreamPort
from gpuwatchd.core.loglines import LineSplitter, clean
from gpuwatchd.patterns import LogPattern, first_match
from gpuwatchd.text import one_line


@dataclass(frozen=True)
class LogMatch:
    container_id: str
    container_name: str
    pattern: str
    line: str


#: Called on the follower thread; must be cheap and thread-safe.
MatchCallback = Callable[[LogMatch], None]
#: Called once when the stream ends: (container_id, error message or None).
EndCallback = Callable[[str, str | None], None]


class LogFollower(StreamThread):
    """Follows ``docker logs -f --since <since>`` of one container."""

    def __init__(
        self,
        gateway: DockerPort,
        container_id: str,
        container_name: str,
        since: float,
        patterns: tuple[LogPattern, ...],
        on_match: MatchCallback,
        on_end: EndCallback,
    ) -> None:
        self.container_id = container_id
        self.container_name = container_name
        self.since = since
        #: Replaced on config reload; read once per line, so no lock is needed.
        self.patterns = patterns
        self.lines = 0  #: lines seen (for metrics and benchmarks)
        self._gateway = gateway
        self._on_match = on_match
        self._on_end = on_end
        super().__init__(f"logs-{container_name}")
        self._stream: LogStreamPort | None = None

    def _run(self) -> None:
        error: str | None = None
        try:
            self._stream = self._gateway.log_stream(self.container_id, self.since)
            if self._stopping.is_set():
                self._stream.close()
            splitter = LineSplitter()
            for chunk in self._stream:
                for raw in splitter.feed(chunk):
                    self._line(raw)
            tail = splitter.flush()
            if tail is not None:
                self._line(tail)
        except docker.errors.NotFound:
            error = None  # removed while we attached: the event stream reports it
        except docker.errors.APIError as exc:
            # e.g. a log driver that cannot be read back ("none", plain syslog)
            error = one_line(exc)
        except DockerUnavailable as exc:
            error = str(exc)
        except Exception as exc:  # a follower must never die silently
            error = f"{type(exc).__name__}: {exc}"
        finally:
            if self._stream is not None:
                self._stream.close()  # ended by itself: release its connection now
            self._on_end(self.container_id, None if self._stopping.is_set() else error)

    def _line(self, raw: bytes) -> None:
        self.lines += 1
        text = clean(raw)
        pattern = first_match(self.patterns, text)
        if pattern is not None:
            self._on_match(LogMatch(self.container_id, self.container_name, pattern.source, text))
