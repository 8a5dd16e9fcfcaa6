"""Notice ``systemctl daemon-reload`` as it happens, from PID 1's journal messages.

Under Docker's systemd cgroup driver, a daemon-reload re-applies unit cgroup
settings and can revoke GPU device access inside running containers. Nothing
else announces it, but PID 1 logs it: systemd 252 writes ``Reloading.`` (no
MESSAGE_ID) as the reload starts, newer releases ``Reloading...``; a
``daemon-reexec`` writes ``Reexecuting.`` and has the same effect. Only those
start messages count, so each reload is seen once (not again at
``Reloading finished in N ms.``).

The reader blocks: run it in a dedicated thread, e.g.::

    watcher = ReloadWatcher()
    watcher.open()                 # ReloadWatchUnavailable: log degraded, go on
    for when in watcher.follow(stop_event):
        loop.call_soon_threadsafe(trigger_probe_all, when)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from gpuwatchd.adapters.journal_query import RELOAD_MESSAGES, reload_reader


class ReloadWatchUnavailable(Exception):
    """The journal cannot be read (no systemd-python, no journal, no permission)."""


class ReloadWatcher:
    """Follows the system journal for PID 1's reload messages, from "now" on.

    Not thread-safe: open, wait and close from the one thread that owns it.
    """

    def __init__(self, path: str | None = None) -> None:
        """*path*: a journal directory to read instead of the system journal (tests)."""
        self._path = path
        self._reader: Any = None
        #: When PID 1 last logged a reload before :meth:`open` (epoch seconds), or None.
        self.last_before_open: float | None = None

    def open(self) -> None:
        """Start following at the journal's current end; earlier reloads are ignored.

        Raises :class:`ReloadWatchUnavailable` with a one-line reason when the
        journal cannot be opened.
        """
        if self._reader is not None:
            return
        try:
            reader, last = reload_reader(self._path)
        except ImportError as exc:
            raise ReloadWatchUnavailable(f"systemd-python is not installed: {exc}") from exc
        except OSError as exc:
            raise ReloadWatchUnavailable(f"cannot read the journal: {exc}") from exc
        self._reader = reader
        realtime = last.get("__REALTIME_TIMESTAMP") if last else None
        self.last_before_open = realtime.timestamp() if isinstance(realtime, datetime) else None

    def close(self) -> None:
        """Release the journal; safe to call twice."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def __enter__(self) -> ReloadWatcher:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait_for_reload(self, timeout: float | None) -> float | None:
        """Block until PID 1 logs a reload; return its wall-clock time (epoch seconds).

        Returns None when *timeout* seconds pass first (None: wait forever).
        Raises :class:`ReloadWatchUnavailable` when not open or the journal fails.
        """
        reader = self._reader
        if reader is None:
            raise ReloadWatchUnavailable("the reload watcher is not open")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                entry = reader.get_next()
                while entry:
                    if entry.get("MESSAGE") in RELOAD_MESSAGES and str(entry.get("_PID")) == "1":
                        return _timestamp(entry)
                    entry = reader.get_next()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                reader.wait(remaining)
        except OSError as exc:
            raise ReloadWatchUnavailable(f"reading the journal failed: {exc}") from exc

    def follow(self, stop: threading.Event, poll: float = 1.0) -> Iterator[float]:
        """Yield the time of each reload until *stop* is set (checked every *poll* s).

        Opens the watcher if needed. Raises :class:`ReloadWatchUnavailable` as
        :meth:`open` and :meth:`wait_for_reload` do.
        """
        self.open()
        while not stop.is_set():
            when = self.wait_for_reload(poll)
            if when is not None:
                yield when


def _timestamp(entry: dict[str, Any]) -> float:
    realtime = entry.get("__REALTIME_TIMESTAMP")
    if isinstance(realtime, datetime):
        return realtime.timestamp()
    return time.time()
