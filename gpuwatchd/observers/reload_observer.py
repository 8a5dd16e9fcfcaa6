"""The systemd reload observer: :class:`~.reload_watch.ReloadWatcher` on a thread of
its own, each reload put on the daemon's queue, and first the journal's last reload
from before the start (``before_start``: evidence for the cause rule, as diagnose
reads it).

Kept apart from :mod:`.reload_watch`, which imports nothing but the standard
library and systemd-python so that it runs on its own (the systemd tests run
it as a service in a box).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from gpuwatchd.model.events import SystemdReloaded
from gpuwatchd.observers.reload_watch import ReloadWatcher, ReloadWatchUnavailable

log = structlog.get_logger("gpuwatchd")


class ReloadObserver:
    """The reload watcher on a thread of its own, putting ``SystemdReloaded`` on the queue.

    Where the journal cannot be read, the daemon runs without it (logged at
    debug level); a watch that fails later is logged once. Either way it is a
    feature missing, not an observer stuck: :meth:`alive` stays True.
    """

    def __init__(self, put: Callable[[SystemdReloaded], None],
                 watcher: Callable[[], ReloadWatcher] = ReloadWatcher) -> None:
        self._put = put
        self._new_watcher = watcher
        self._stop = threading.Event()

    async def start(self) -> None:
        watcher = self._new_watcher()
        try:
            watcher.open()
        except ReloadWatchUnavailable as exc:
            log.debug("systemd_reload_watch_unavailable", reason=str(exc))
            return
        if watcher.last_before_open is not None:
            self._put(SystemdReloaded(watcher.last_before_open, before_start=True))

        def follow() -> None:
            try:
                for when in watcher.follow(self._stop):
                    self._put(SystemdReloaded(when))
            except ReloadWatchUnavailable as exc:
                log.warning("systemd_reload_watch_failed", reason=str(exc))
            finally:
                watcher.close()

        threading.Thread(target=follow, name="systemd-reloads", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def alive(self) -> bool:
        return True
