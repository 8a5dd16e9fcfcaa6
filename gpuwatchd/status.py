"""What the running daemon shows of itself: the STATUS= line, the status
document the control socket serves, the typed view metrics read, and the history.

Built from the core's snapshot and what the observers last reported; read
on the event loop, never blocking.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from gpuwatchd import __version__
from gpuwatchd.config import Config
from gpuwatchd.core.machine import Core
from gpuwatchd.core.views import DaemonView
from gpuwatchd.core.watchset import control_target
from gpuwatchd.model.events import Event, Gpu, GpuSnapshot, NvmlUnavailable
from gpuwatchd.observers.watch_set import WatchSet
from gpuwatchd.runtime import Runtime


class DaemonStatus:
    """The daemon's view of itself; :meth:`saw` is given every event the core gets."""

    def __init__(self, config: Callable[[], Config], runtime: Runtime,
                 watch_set: WatchSet) -> None:
        self._config = config
        self._runtime = runtime
        self._watch_set = watch_set
        self.started_at = time.time()
        self.core: Core | None = None
        self.gpus: tuple[Gpu, ...] = ()  #: from the last GPU reading
        self.nvml_ok: bool | None = None  #: whether the last GPU reading worked

    def saw(self, event: Event) -> None:
        if isinstance(event, GpuSnapshot):
            self.gpus, self.nvml_ok = event.gpus, True
        elif isinstance(event, NvmlUnavailable):
            self.nvml_ok = False

    def line(self) -> str:
        """The one-line STATUS= text for ``systemctl status``."""
        persistent = sum(1 for g in self.gpus if g.persistence)
        restarts = 0
        if self.core is not None:
            snap = self.core.snapshot(time.time())
            restarts = sum(c.restarts_in_window for c in snap.containers)
        parts = [f"watching {len(self._watch_set.watched)} containers",
                 f"{persistent}/{len(self.gpus)} GPUs persistent",
                 f"{restarts} restarts in the window"]
        if self._runtime.docker_ok is False:
            parts.append("DEGRADED: docker unavailable")
        if self.nvml_ok is False:
            parts.append("DEGRADED: NVML unavailable")
        if self._config().daemon.dry_run:
            parts.append("dry run")
        return ", ".join(parts)

    def view(self) -> DaemonView:
        """The daemon and the core as typed data (what metrics read)."""
        assert self.core is not None
        now = time.time()
        return DaemonView(
            uptime=round(now - self.started_at, 3),
            dry_run=self._config().daemon.dry_run,
            docker_available=self._runtime.docker_ok,
            nvml_available=self.nvml_ok,
            core=self.core.snapshot(now),
        )

    def document(self) -> dict[str, Any]:
        """What ``gpuwatchd status`` shows, as plain JSON data: :meth:`view`
        plus the version, the pid, the engine and the STATUS= line."""
        view = self.view()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": view.uptime,
            "dry_run": view.dry_run,
            "docker_available": view.docker_available,
            "engine": self._engine_json(self._config()),
            "nvml_available": view.nvml_available,
            "status": self.line(),
            "core": view.core.to_json(),
        }

    def _engine_json(self, config: Config) -> dict[str, str] | None:
        engine = self._watch_set.engine
        if engine is None:
            return None
        host = (config.docker.host or os.environ.get("DOCKER_HOST")
                or "unix:///var/run/docker.sock")
        return {"name": engine.name, "version": engine.version, "host": host}

    def history(self) -> dict[str, Any]:
        """The persisted state (budgets, pauses, give-ups) as the control socket returns it."""
        assert self.core is not None
        return {"now": time.time(), "state": self.core.persisted().to_json()}

    def control_target(self, name: str | None, resuming: bool) -> str | None:
        """The container a pause/resume names (see :func:`control_target`); raises
        UnknownTarget for a name neither watched nor configured."""
        assert self.core is not None
        paused = self.core.persisted().paused if resuming else ()
        watched = {cid: info.name for cid, info in self._watch_set.watched.items()}
        return control_target(name, watched, self._config(), paused)
