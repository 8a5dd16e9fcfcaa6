"""The daemon's lifecycle: start, the dispatch loop, signals, heartbeat, shutdown.

Observers (:mod:`gpuwatchd.observers`: the watch set with its Docker events
and log followers, probe timers, the GPU poller, the systemd reload watcher,
the control socket) only put items on one queue. One dispatcher task takes
each item in turn, hands core events to :class:`gpuwatchd.core.machine.Core`
and gives the actions it returns to the :class:`~gpuwatchd.executor.Executor`,
so the core never needs a lock. Blocking calls (docker SDK, pynvml, file
writes) run in a bounded thread pool; streams run on their own threads.

Signals only record: SIGTERM/SIGINT set the stop flag, SIGHUP asks for a
reload; a second SIGINT forces exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from gpuwatchd import __version__
from gpuwatchd import runtime as rt
from gpuwatchd.adapters import sdnotify
from gpuwatchd.adapters.docker_engine import DockerGateway
from gpuwatchd.adapters.instance import InstanceLock, check_private_dir, claim
from gpuwatchd.adapters.nvml import Nvml
from gpuwatchd.adapters.protocols import DockerPort, Host, HostPort, NvmlPort
from gpuwatchd.adapters.state_file import load_state, state_path
from gpuwatchd.config import Config, ConfigError, check_notify_available, load_config
from gpuwatchd.core.machine import Core
from gpuwatchd.executor import Executor
from gpuwatchd.exitcodes import ExitCode
from gpuwatchd.model.events import ConfigChanged, Event
from gpuwatchd.model.records import make_record
from gpuwatchd.observers.base import Observer
from gpuwatchd.observers.control import ControlChannel
from gpuwatchd.observers.gpu_poller import GpuPoller
from gpuwatchd.observers.probe_timers import ProbeTimers
from gpuwatchd.observers.reload_observer import ReloadObserver
from gpuwatchd.observers.watch_set import WatchSet
from gpuwatchd.sinks.log import LogFormat, configure_logging
from gpuwatchd.sinks.metrics import start_metrics
from gpuwatchd.sinks.notify import Notifier
from gpuwatchd.sinks.writer import RecordWriter
from gpuwatchd.status import DaemonStatus

log = structlog.get_logger("gpuwatchd")

#: Worker threads for short blocking calls (inspect, exec, restart, NVML).
WORKERS = 16
#: How long shutdown lets notifications in flight finish before killing them.
NOTIFY_SHUTDOWN_GRACE = 5.0
#: Identical records within this many seconds are folded into one with a count.
FOLD_INTERVAL = 10.0
#: The dispatcher counts as stuck when work waits and it took nothing for this long.
DISPATCH_STUCK_AFTER = 60.0


class Daemon:
    """One gpuwatchd process: create, then ``await run()`` until stopped.

    The observers are attributes (``control``, ``watch_set``, ``probe_timers``,
    ``gpu_poller``, ``reload_watch``; one may be replaced before :meth:`run`),
    started in that order once the dispatcher runs, stopped as :meth:`_shutdown` says.
    """

    def __init__(self, config: Config, *, gateway: DockerPort | None = None,
                 nvml: NvmlPort | None = None, host: HostPort | None = None,
                 force_dry_run: bool = False) -> None:
        if force_dry_run and not config.daemon.dry_run:
            config = replace(config, daemon=replace(config.daemon, dry_run=True))
        self.config = config
        #: --dry-run on the command line outlives any reload of the file.
        self._force_dry_run = force_dry_run
        self._gateway = gateway or DockerGateway(
            config.docker.host, config.docker.timeout, pool_size=WORKERS)
        self._writer = RecordWriter(FOLD_INTERVAL)
        #: Called on the event loop with every record written (after folding):
        #: notifications and metrics hang here. Must not block.
        self.record_listeners = self._writer.listeners
        self.runtime = rt.Runtime(self._writer.record, WORKERS)
        self._inbox = self.runtime.inbox
        self._stop = asyncio.Event()
        self._sigint_count = 0
        self._stop_reason = "requested"
        self._core: Core | None = None
        self._last_dispatch = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._instance: InstanceLock | None = None  #: held from start to the end of shutdown
        self._dispatcher: asyncio.Task[None] | None = None
        self._notifier: Notifier | None = None
        host = host or Host()
        nvml = nvml or Nvml()
        current = self._current_config
        self.probe_timers = ProbeTimers(self.runtime, current)
        self.watch_set = WatchSet(self.runtime, self._gateway, host, current,
                                  self.probe_timers, self._feed)
        self.status = DaemonStatus(current, self.runtime, self.watch_set)
        self.executor = Executor(self.runtime, self._gateway, nvml, host, current,
                                 lambda: self.status.gpus)
        self.gpu_poller: Observer = GpuPoller(self.runtime, nvml, current)
        self.reload_watch: Observer = ReloadObserver(self._inbox.put)
        self.control = ControlChannel(
            config.daemon.runtime_dir, status=self.status.document,
            history=self.status.history, target=self.status.control_target, put=self._inbox.put,
            on_unavailable=lambda exc: self.runtime.record(make_record(
                "control_unavailable", error=str(exc), path=str(self.config.daemon.runtime_dir))),
        )

    def _current_config(self) -> Config:
        return self.config  # the one in force, after reloads

    @property
    def observers(self) -> list[Observer]:
        return [self.watch_set, self.probe_timers, self.gpu_poller, self.reload_watch,
                self.control]

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or :meth:`request_stop`); return the exit status."""
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(self.runtime.on_loop_exception)
        self._inbox.bind(self._loop)
        self._install_signal_handlers()
        try:
            await self._start()
            await self._stop.wait()
        finally:
            await self._shutdown()
            self._restore_signal_handlers()
        return int(ExitCode.OK)

    def request_stop(self, reason: str = "requested") -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        if not self._stop.is_set():
            self._stop_reason = reason
        self._stop.set()

    def request_reload(self) -> None:
        """Re-read the configuration file (what SIGHUP does)."""
        self._inbox.put(rt.Reload())

    async def _start(self) -> None:
        config, record = self.config, self.runtime.record
        # Before anything acts: a second daemon must leave the first one's files alone.
        self._instance = await self.runtime.blocking(claim, config.daemon)
        state, warning = await self.runtime.blocking(
            load_state, state_path(config.daemon.state_dir))
        self._core = self.status.core = Core(config, state, dry_run=config.daemon.dry_run)
        # Notifications follow reloads (the lambda reads the config in force).
        self._notifier = Notifier(lambda: self.config.notify, record)
        self.record_listeners.append(self._notifier.on_record)
        listen = config.metrics.listen
        metrics = await start_metrics(listen, self.status.view, record) if listen else None
        if metrics is not None:
            self.record_listeners.append(metrics.on_record)
            self.runtime.spawn(metrics.refresh_forever(), "metrics")
        fields: dict[str, Any] = {"version": __version__}
        if config.source is not None:
            fields["config"] = str(config.source)
        record(make_record("daemon_started", dry_run=config.daemon.dry_run, **fields))
        if warning:
            record(make_record("state_file_invalid", reason=warning,
                               path=str(state_path(config.daemon.state_dir))))
        for action in self._core.start(time.time()):
            await self.executor.start(action)
        self._dispatcher = self.runtime.spawn(self._dispatch_forever(), "dispatcher")
        for observer in (self.control, self.watch_set, self.probe_timers, self.gpu_poller,
                         self.reload_watch):
            await observer.start()
        self.runtime.spawn(self._heartbeat_forever(), "heartbeat")
        self.runtime.spawn(self._writer.flush_forever(), "folder")
        # READY once everything is scheduled, not done: a slow engine must not
        # hold start-up past systemd's TimeoutStartSec.
        sdnotify.ready(self.status.line())

    async def _shutdown(self) -> None:
        """The reload watch, the watch set and the probe timers stop first; restarts
        in flight finish (bounded); the GPU poller stops with the tasks; the
        control socket goes, then the instance lock."""
        sdnotify.stopping("stopping")
        if self._core is not None:
            self.runtime.record(make_record("daemon_stopping", dry_run=self.config.daemon.dry_run,
                                            reason=self._stop_reason))
        for observer in (self.reload_watch, self.watch_set, self.probe_timers):
            observer.stop()
        self.executor.cancel_wakeups()
        # A restart already under way finishes (bounded) so it is recorded.
        if await self.executor.finish_restarts():
            await self._inbox.drain()  # the dispatcher records the results
        if self._notifier is not None:
            # Bounded: what is not delivered in the grace is killed and recorded.
            await self._notifier.close(NOTIFY_SHUTDOWN_GRACE)
        self.gpu_poller.stop()
        tasks = self.runtime.tasks
        for task in list(tasks):
            task.cancel(msg="gpuwatchd is stopping")
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        self._writer.flush()
        self.control.stop()
        await self.control.close()
        self.runtime.close()
        self._gateway.close()
        if self._instance is not None:
            self._instance.release()  # last: the socket is gone before another daemon starts

    # -- signals ---------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        loop = self._loop
        assert loop is not None
        try:
            loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        except (NotImplementedError, RuntimeError):
            pass  # not the main thread (tests drive the daemon directly)

    def _restore_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)

    def _on_sigint(self) -> None:
        self._sigint_count += 1
        if self._sigint_count > 1:
            os._exit(int(ExitCode.PROBLEM))  # the operator insists: no more waiting
        self.request_stop("SIGINT")

    # -- the dispatcher ----------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        while True:
            item = await self._inbox.get()
            self._last_dispatch = time.monotonic()
            try:
                await self._handle(item)
            except Exception as exc:  # one bad item must not stop the daemon
                self.runtime.record(make_record("internal_error", task=type(item).__name__,
                                                error=f"{type(exc).__name__}: {exc}"))
            finally:
                self._inbox.task_done()

    async def _handle(self, item: rt.Item) -> None:
        match item:
            case rt.DockerEventSeen(raw=raw):
                await self.watch_set.on_container_event(raw)
            case rt.DockerStatus():
                await self.watch_set.on_docker_status(item)
            case rt.FollowerEnded():
                await self.watch_set.on_follower_ended(item)
            case rt.Resync(reason=reason):
                await self.watch_set.resync(reason)
            case rt.Reload():
                await self._reload()
            case rt.Apply(event=event):
                try:
                    await self._feed(event)
                except BaseException as exc:
                    item.settle(exc)
                    raise
                item.settle()
            case _:
                await self._feed(item)

    async def _feed(self, event: Event) -> None:
        assert self._core is not None
        self.status.saw(event)
        for action in self._core.handle(event, time.time()):
            await self.executor.start(action)

    # -- heartbeat ---------------------------------------------------------------------

    async def _heartbeat_forever(self) -> None:
        interval = sdnotify.watchdog_interval()
        period = min(interval / 3, 5.0) if interval else 5.0
        while True:
            if interval is None or self.alive():
                line = self.status.line()
                if interval:
                    sdnotify.watchdog_ping(line)
                else:
                    sdnotify.status(line)
            await asyncio.sleep(period)

    def alive(self) -> bool:
        """True when the dispatcher and every observer are alive; a stuck one
        stops the watchdog ping."""
        dispatcher = self._dispatcher
        if dispatcher is None or dispatcher.done() or not all(o.alive() for o in self.observers):
            return False
        # The dispatcher must not be stuck on one item while work waits.
        return not (self._inbox.qsize() > 0
                    and time.monotonic() - self._last_dispatch > DISPATCH_STUCK_AFTER)

    def status_document(self) -> dict[str, Any]:
        """What ``gpuwatchd status`` shows, as plain JSON data."""
        return self.status.document()

    # -- reload ---------------------------------------------------------------------------

    async def _reload(self) -> None:
        sdnotify.reloading("reloading configuration")
        source = self.config.source
        try:
            if source is None:
                raise ConfigError("no configuration file to reload")
            new = await self.runtime.blocking(_load_checked, source)
        except ConfigError as exc:
            self.runtime.record(make_record("config_reload_failed", error=str(exc),
                                            config=str(source) if source else None))
            sdnotify.ready(self.status.line())
            return
        if self._force_dry_run and not new.daemon.dry_run:
            new = replace(new, daemon=replace(new.daemon, dry_run=True))
        self.config = new
        await self._feed(ConfigChanged(new))
        self.watch_set.reload_patterns()
        await self.watch_set.resync("config reloaded")
        sdnotify.ready(self.status.line())


def _load_checked(source: Path) -> Config:
    config = load_config(source, check_owner=True)
    check_notify_available(config)
    # The state file follows a new state_dir: it must pass the start-time check.
    check_private_dir(config.daemon.state_dir, "state_dir")
    return config


def run_daemon(
    config: Config, *, log_format: LogFormat | None = None, force_dry_run: bool = False
) -> int:
    """Configure logging and run the daemon in a fresh event loop until stopped.

    ``force_dry_run`` (``--dry-run``) keeps dry run on across config reloads.
    """
    configure_logging(log_format)
    try:
        status = asyncio.run(Daemon(config, force_dry_run=force_dry_run).run())
    except KeyboardInterrupt:
        status = int(ExitCode.OK)
    rt.exit_past_stuck_threads(status)
    return status


__all__ = ["Daemon", "run_daemon"]
