"""The daemon's lifecycle: observers feed one queue, the core decides, actions run.

Observers (Docker events, log followers, the NVML poller, probe timers, the
systemd reload watcher, the control socket) only *enqueue*. One dispatcher
task takes each item in turn, hands core events to :class:`gpuwatchd.core.machine.Core`
and starts the actions it returns, so the core never needs a lock. Blocking
calls (docker SDK, pynvml, file writes) run in a bounded thread pool; streams
run on their own threads.

Signals only record: SIGTERM/SIGINT set the stop flag, SIGHUP asks for a
reload; a second SIGINT forces exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import docker.errors
import structlog

from gpuwatchd import __version__
from gpuwatchd.adapters import sdnotify
from gpuwatchd.adapters.device_check import device_access, scope_device_allow
from gpuwatchd.adapters.docker_engine import (
    ContainerInfo,
    DockerGateway,
    DockerUnavailable,
    one_line,
)
from gpuwatchd.adapters.instance import InstanceLock, check_private_dir, claim
from gpuwatchd.adapters.nvml import Nvml
from gpuwatchd.adapters.nvml import NvmlFailure as NvmlError
from gpuwatchd.adapters.state_file import load_state, save_state, state_path
from gpuwatchd.config import Config, ConfigError, check_notify_available, load_config
from gpuwatchd.core.classify import classify_probe
from gpuwatchd.core.device_access import ReloadExposure, reload_exposure
from gpuwatchd.core.machine import Core
from gpuwatchd.core.watchset import control_target, is_watched
from gpuwatchd.exitcodes import ExitCode
from gpuwatchd.model.events import (
    Action,
    ConfigChanged,
    ContainerRef,
    ContainerState,
    ContainerStateChanged,
    ContainerUnwatched,
    ContainerWatched,
    DeadlineReached,
    DockerAvailable,
    Emit,
    Event,
    GpuInfo,
    GpuSnapshot,
    LogMatched,
    NvmlFailure,
    NvmlUnavailable,
    PauseRequested,
    PersistenceSetFinished,
    PersistenceSetResult,
    ProbeFinished,
    ProbeTick,
    ResetRequested,
    RestartContainer,
    RestartFinished,
    RestartOutcome,
    ResumeRequested,
    RunProbe,
    SaveState,
    ScheduleWakeup,
    SetPersistence,
    SystemdReloaded,
)
from gpuwatchd.model.events import DockerUnavailable as DockerUnavailableEvent
from gpuwatchd.model.records import RELOAD_ADVICE, Record, RecordFolder, make_record
from gpuwatchd.model.vocabulary import ProbeResult
from gpuwatchd.observers.control import ControlError, ControlServer, pause_duration
from gpuwatchd.observers.docker_events import EventWatcher
from gpuwatchd.observers.log_follower import LogFollower, LogMatch
from gpuwatchd.observers.reload_watch import ReloadWatcher, ReloadWatchUnavailable
from gpuwatchd.sinks.log import LogFormat, configure_logging, write_record
from gpuwatchd.sinks.metrics import MAX_CONNECTIONS, Metrics
from gpuwatchd.sinks.notify import Notifier

T = TypeVar("T")
log = structlog.get_logger("gpuwatchd")

#: Worker threads for short blocking calls (inspect, exec, restart, NVML).
WORKERS = 16
#: Probes running at once; more wait their turn (a storm must not fork-bomb the host).
MAX_CONCURRENT_PROBES = 8
#: Restarts running at once.
MAX_CONCURRENT_RESTARTS = 2
#: How long shutdown waits for restarts in flight beyond their own stop timeout.
SHUTDOWN_GRACE = 10.0
#: How long shutdown lets notifications in flight finish before killing them.
NOTIFY_SHUTDOWN_GRACE = 5.0
#: Every container's first probe comes within this many seconds of watching it.
FIRST_PROBE_SPREAD = 1.0
#: Identical records within this many seconds are folded into one with a count.
FOLD_INTERVAL = 10.0

_STATES = {s.value: s for s in ContainerState}


@dataclass(frozen=True)
class _DockerEvent:
    raw: dict[str, Any]


@dataclass(frozen=True)
class _DockerStatus:
    connected: bool
    error: str | None
    #: From the event stream (a reconnect resyncs), or a worker's call that succeeded.
    stream: bool = True


@dataclass(frozen=True)
class _FollowerEnded:
    container_id: str
    error: str | None


@dataclass(frozen=True)
class _Resync:
    reason: str


@dataclass(frozen=True)
class _Reload:
    pass


@dataclass(frozen=True)
class _Apply:
    """A core event whose sender waits until the core has applied it."""

    event: Event
    done: asyncio.Future[None]


def _state(info: ContainerInfo) -> ContainerState:
    return _STATES.get(info.status, ContainerState.DEAD)


def _ref(info: ContainerInfo) -> ContainerRef:
    return ContainerRef(info.id, info.name)


class Daemon:
    """One gpuwatchd process: create, then ``await run()`` until stopped."""

    def __init__(
        self,
        config: Config,
        *,
        gateway: DockerGateway | None = None,
        nvml: Nvml | None = None,
        force_dry_run: bool = False,
    ) -> None:
        if force_dry_run and not config.daemon.dry_run:
            config = replace(config, daemon=replace(config.daemon, dry_run=True))
        self.config = config
        #: --dry-run on the command line outlives any reload of the file.
        self._force_dry_run = force_dry_run
        self.started_at = time.time()
        self._gateway = gateway or DockerGateway(
            config.docker.host, config.docker.timeout, pool_size=WORKERS
        )
        self._nvml = nvml or Nvml()
        self._executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="gpuwatchd-io")
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._sigint_count = 0
        self._stop_reason = "requested"
        self._probe_slots = asyncio.Semaphore(MAX_CONCURRENT_PROBES)
        self._restart_slots = asyncio.Semaphore(MAX_CONCURRENT_RESTARTS)
        self._folder = RecordFolder(FOLD_INTERVAL)
        self._core: Core | None = None
        # The daemon's own view of the world, for followers and timers.
        self._watched: dict[str, ContainerInfo] = {}
        self._followers: dict[str, LogFollower] = {}
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._wakeups: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._restarts: set[asyncio.Task[Any]] = set()
        self._docker_ok: bool | None = None
        self._cgroup_driver: str | None = None  #: Docker's, read at each connection
        self._reload_warned: set[str] = set()  #: container IDs recorded reload_will_break
        self._nvml_ok: bool | None = None
        self._gpus: tuple[GpuInfo, ...] = ()
        self._last_gpu_poll = 0.0
        self._last_dispatch = time.monotonic()
        self._events: EventWatcher | None = None
        self._reload_stop = threading.Event()
        self._control: ControlServer | None = None
        #: Held from the start of _start to the end of _shutdown: one daemon per runtime_dir.
        self._instance: InstanceLock | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._gpu_poller: asyncio.Task[None] | None = None
        #: Called on the event loop with every record written (after folding):
        #: notifications and metrics hang here. Must not block.
        self.record_listeners: list[Callable[[Record], None]] = []
        self._notifier: Notifier | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or :meth:`request_stop`); return the exit status."""
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(self._on_loop_exception)
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
        self._enqueue(_Reload())

    async def _start(self) -> None:
        config = self.config
        # Before anything acts: a second daemon must leave the first one's files alone.
        self._instance = await self._blocking(claim, config.daemon)
        state, warning = await self._blocking(load_state, state_path(config.daemon.state_dir))
        self._core = Core(config, state, dry_run=config.daemon.dry_run)
        # Notifications follow reloads (the lambda reads the config in force).
        self._notifier = Notifier(lambda: self.config.notify, self._record)
        self.record_listeners.append(self._notifier.on_record)
        if config.metrics.listen:
            await self._start_metrics(config.metrics.listen)
        self._record(
            make_record(
                "daemon_started",
                dry_run=config.daemon.dry_run,
                **self._started_fields(),
            )
        )
        if warning:
            self._record(make_record("state_file_invalid", reason=warning,
                                     path=str(state_path(config.daemon.state_dir))))
        for action in self._core.start(time.time()):
            await self._start_action(action)
        self._dispatcher = self._spawn(self._dispatch_forever(), "dispatcher")
        self._control = ControlServer(config.daemon.runtime_dir, self._handle_control)
        try:
            await self._control.start()
        except OSError as exc:
            self._record(make_record("control_unavailable", error=str(exc),
                                     path=str(config.daemon.runtime_dir)))
            self._control = None
        self._events = EventWatcher(self._gateway, self._on_docker_event, self._on_docker_status)
        self._events.start()
        self._gpu_poller = self._spawn(self._poll_gpus_forever(), "gpu-poller")
        self._start_reload_watch()
        self._spawn(self._heartbeat_forever(), "heartbeat")
        self._spawn(self._flush_folded_forever(), "folder")
        # READY once everything is scheduled, not done: a slow engine must not
        # hold start-up past systemd's TimeoutStartSec.
        sdnotify.ready(self.status_line())

    async def _start_metrics(self, listen: str) -> None:
        # A metrics address that cannot be bound costs the metrics, not the watchdog.
        metrics = Metrics(self.status_document)

        def busy() -> None:
            self._record(make_record("metrics_busy", listen=listen, limit=MAX_CONNECTIONS))

        try:
            await metrics.serve(listen, on_busy=busy)
        except (OSError, ValueError) as exc:
            self._record(make_record("metrics_unavailable", listen=listen, error=str(exc)))
            return
        self.record_listeners.append(metrics.on_record)
        self._spawn(metrics.refresh_forever(), "metrics")

    def _started_fields(self) -> dict[str, Any]:
        # Only fields the catalogue allows for daemon_started are passed.
        fields: dict[str, Any] = {"version": __version__}
        if self.config.source is not None:
            fields["config"] = str(self.config.source)
        return fields

    async def _shutdown(self) -> None:
        sdnotify.stopping("stopping")
        if self._core is not None:
            self._record(make_record("daemon_stopping", dry_run=self.config.daemon.dry_run,
                                     reason=self._stop_reason))
        self._reload_stop.set()
        if self._events is not None:
            self._events.stop()
        for follower in self._followers.values():
            follower.stop()
        for timer in self._timers.values():
            timer.cancel()
        for handle in self._wakeups:
            handle.cancel()
        # A restart already under way finishes (bounded) so it is recorded.
        if self._restarts:
            bound = max(self.config.for_container(t.get_name()).restart_timeout
                        for t in self._restarts) + SHUTDOWN_GRACE
            await asyncio.wait(self._restarts, timeout=bound)
            await self._drain_queue()
        if self._notifier is not None:
            # Bounded: what is not delivered in the grace is killed and recorded.
            await self._notifier.close(NOTIFY_SHUTDOWN_GRACE)
        for task in list(self._tasks):
            task.cancel(msg="gpuwatchd is stopping")
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        for record in self._folder.flush():
            self._write(record)
        if self._control is not None:
            await self._control.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._gateway.close()
        if self._instance is not None:
            # Last: the socket is gone before another daemon may start.
            self._instance.release()

    async def _drain_queue(self, bound: float = 5.0) -> None:
        # The dispatcher is still running: give it time to record the results.
        with contextlib.suppress(asyncio.TimeoutError):  # asyncio's own before 3.11
            await asyncio.wait_for(self._queue.join(), bound)

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
        loop = self._loop
        if loop is None:
            return
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)

    def _on_sigint(self) -> None:
        self._sigint_count += 1
        if self._sigint_count > 1:
            os._exit(int(ExitCode.PROBLEM))  # the operator insists: no more waiting
        self.request_stop("SIGINT")

    # -- plumbing --------------------------------------------------------------------

    def _on_loop_exception(self, loop: asyncio.AbstractEventLoop,
                           context: dict[str, Any]) -> None:
        """What asyncio cannot hand to a task becomes one record, never a traceback.

        A listening socket that fails to accept (out of file descriptors, say)
        is ``accept_failed``; asyncio retries it a second later, and the folder
        turns a storm of them into one summary.
        """
        exc = context.get("exception")
        message = str(context.get("message") or "")
        try:
            sock = context.get("socket")
            if isinstance(exc, OSError) and sock is not None and "accept" in message:
                self._record(make_record("accept_failed", listener=_sockname(sock),
                                         error=str(exc)))
                return
            error = f"{type(exc).__name__}: {exc}" if exc is not None else message
            self._record(make_record("internal_error", task=f"event loop: {message}",
                                     error=error))
        except Exception:  # a record that cannot be written: asyncio's own report then
            loop.default_exception_handler(context)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._restarts.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self._record(make_record("internal_error", task=task.get_name(),
                                     error=f"{type(exc).__name__}: {exc}"))

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _docker(self, call: str, container: str | None,
                      fn: Callable[..., T], *args: Any) -> T:
        """One Docker call on a worker: its error is that call's, not the engine's.

        A failure is recorded (``docker_call_failed``) and raised to the caller,
        which ends its own work failed; only the event stream reports the engine
        down. A call that succeeds while the engine is reported down marks it
        available again.

        Raises:
            DockerUnavailable: the engine did not answer this call.
        """
        try:
            result = await self._blocking(fn, *args)
        except DockerUnavailable as exc:
            self._record(make_record("docker_call_failed", call=call, container=container,
                                     error=str(exc)))
            raise
        if self._docker_ok is False:
            self._enqueue(_DockerStatus(True, None, stream=False))
        return result

    def _enqueue(self, item: object) -> None:
        """Thread-safe: observers on other threads call this."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if _in_loop(loop):
            self._queue.put_nowait(item)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed under us
                loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _record(self, record: Record, *, fold: bool = True) -> None:
        for out in self._folder.offer(record, time.time(), fold=fold):
            self._write(out)

    def _write(self, record: Record) -> None:
        write_record(record)
        for listener in self.record_listeners:
            try:
                listener(record)
            except Exception as exc:  # a broken listener must not lose the next record
                # Written directly: through _record it could fail the same way again.
                write_record(make_record("internal_error", task=f"listener {listener!r}",
                                         error=f"{type(exc).__name__}: {exc}"))

    async def _flush_folded_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for record in self._folder.due(time.time()):
                self._write(record)

    # -- the dispatcher ----------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        while True:
            item = await self._queue.get()
            self._last_dispatch = time.monotonic()
            try:
                await self._handle_item(item)
            except Exception as exc:  # one bad item must not stop the daemon
                self._record(make_record("internal_error", task=type(item).__name__,
                                         error=f"{type(exc).__name__}: {exc}"))
            finally:
                self._queue.task_done()

    async def _handle_item(self, item: object) -> None:
        if isinstance(item, _DockerEvent):
            await self._on_container_event(item.raw)
        elif isinstance(item, _DockerStatus):
            await self._on_docker_connection(item)
        elif isinstance(item, _FollowerEnded):
            await self._on_follower_ended(item)
        elif isinstance(item, _Resync):
            await self._resync(item.reason)
        elif isinstance(item, _Reload):
            await self._reload()
        elif isinstance(item, _Apply):
            try:
                await self._feed(item.event)
            finally:
                if not item.done.done():
                    item.done.set_result(None)
        else:
            await self._feed(item)  # type: ignore[arg-type]

    async def _feed(self, event: Event) -> None:
        assert self._core is not None
        if isinstance(event, GpuSnapshot):
            self._gpus = event.gpus
        actions = self._core.handle(event, time.time())
        for action in actions:
            await self._start_action(action)

    async def _start_action(self, action: Action) -> None:
        if isinstance(action, Emit):
            self._record(action.record, fold=action.fold)
        elif isinstance(action, SaveState):
            # Awaited in order: the budget is on disk before the restart starts.
            try:
                await self._blocking(
                    save_state, state_path(self.config.daemon.state_dir), action.state
                )
            except OSError as exc:
                self._record(make_record(
                    "state_save_failed", error=str(exc),
                    path=str(state_path(self.config.daemon.state_dir)),
                ))
        elif isinstance(action, RunProbe):
            self._spawn(self._probe(action), f"probe-{action.ref.name}")
        elif isinstance(action, SetPersistence):
            self._spawn(self._set_persistence(action), "set-persistence")
        elif isinstance(action, RestartContainer):
            task = self._spawn(self._restart(action), action.ref.name)
            self._restarts.add(task)
        elif isinstance(action, ScheduleWakeup):
            self._schedule(action.at, action.event)

    def _schedule(self, at: float, event: DeadlineReached) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._wakeups.discard(handle)
            self._queue.put_nowait(event)

        handle = loop.call_later(max(0.0, at - time.time()), fire)
        self._wakeups.add(handle)

    # -- actions -----------------------------------------------------------------------

    async def _probe(self, action: RunProbe) -> None:
        """Run one probe; it always ends in a ProbeFinished.

        A probe that could not run at all (the call failed, or anything raised)
        ends as ``not_running``: it proves nothing either way, so the core
        probes again rather than waiting for a result that cannot come.
        """
        try:
            finished = await self._run_probe(action)
        except Exception as exc:
            if not isinstance(exc, DockerUnavailable):
                self._record(make_record("internal_error", task=f"probe-{action.ref.name}",
                                         error=f"{type(exc).__name__}: {exc}"))
            finished = ProbeFinished(action.ref, action.purpose, ProbeResult.NOT_RUNNING,
                                     None, f"probe could not run: {one_line(exc)}")
        self._enqueue(finished)

    async def _run_probe(self, action: RunProbe) -> ProbeFinished:
        async with self._probe_slots:
            outcome = await self._docker(
                "exec_probe", action.ref.name,
                self._gateway.exec_probe, action.ref.id, action.command, action.timeout,
            )
        result = classify_probe(
            outcome.exit_code, outcome.output,
            timed_out=outcome.timed_out, exec_error=outcome.exec_error,
        )
        access: bool | None = None
        if result.is_gpu_fault:
            # Evidence for the cause, gathered now while it is fresh: the host's
            # own NVML, and whether the kernel lets the container's cgroups open
            # its NVIDIA control node (cgroup v1 and v2 alike).
            await self._poll_gpus_once()
            info = await self._inspect(action.ref.id)
            if info is not None:
                access = (await self._blocking(device_access, info)).ok
        excerpt = outcome.output[:512].decode(errors="replace").strip()
        if outcome.exec_error:
            excerpt = excerpt or outcome.exec_error
        return ProbeFinished(action.ref, action.purpose, result,
                             outcome.exit_code, excerpt, access)

    async def _set_persistence(self, action: SetPersistence) -> None:
        """Set persistence on each GPU; always ends in one PersistenceSetFinished,
        with a failed result for every GPU whose call raised anything."""
        results = []
        for index in action.gpu_indices:
            uuid = next((g.uuid for g in self._gpus if g.index == index), "")
            try:
                await self._blocking(self._nvml.set_persistence, index, True)
                results.append(PersistenceSetResult(index, True, uuid))
            except NvmlError as exc:
                hint = ": run gpuwatchd as root" if exc.kind == "no_permission" else ""
                results.append(PersistenceSetResult(index, False, uuid, f"{exc}{hint}"))
            except Exception as exc:
                results.append(PersistenceSetResult(index, False, uuid,
                                                    f"{type(exc).__name__}: {exc}"))
        self._enqueue(PersistenceSetFinished(tuple(results)))
        await self._poll_gpus_once()  # show the new state right away

    async def _restart(self, action: RestartContainer) -> None:
        """Restart one container; always ends in one RestartFinished, failed
        when anything raised (the engine, a parse, the thread pool)."""
        try:
            finished = await self._run_restart(action)
        except Exception as exc:
            finished = RestartFinished(action.ref, RestartOutcome.FAILED,
                                       error=f"{type(exc).__name__}: {one_line(exc)}")
        self._enqueue(finished)

    async def _run_restart(self, action: RestartContainer) -> RestartFinished:
        ref = action.ref
        async with self._restart_slots:
            info = await self._inspect(ref.id)
            if info is None or info.status != "running":
                # Never start what the operator stopped, never fight Docker.
                state = _state(info) if info is not None else ContainerState.DEAD
                return RestartFinished(ref, RestartOutcome.NOT_RUNNING, state=state)
            try:
                await self._docker("restart", ref.name, self._gateway.restart,
                                   ref.id, action.timeout)
                after = await self._inspect(ref.id)
            except (docker.errors.APIError, DockerUnavailable) as exc:
                return RestartFinished(ref, RestartOutcome.FAILED, error=one_line(exc))
        if after is None:
            return RestartFinished(ref, RestartOutcome.FAILED, error="container vanished")
        self._attach(after, since=after.started_at)
        return RestartFinished(ref, RestartOutcome.RESTARTED, new_ref=_ref(after),
                               started_at=after.started_at, state=_state(after))

    async def _inspect(self, ref: str) -> ContainerInfo | None:
        """The container's inspect data; None when it is gone or the call failed."""
        try:
            return await self._docker("inspect", None, self._gateway.inspect, ref)
        except DockerUnavailable:
            return None

    # -- Docker: events, watch set, followers, timers ----------------------------------

    def _on_docker_event(self, raw: dict[str, Any]) -> None:
        self._enqueue(_DockerEvent(raw))

    def _on_docker_status(self, connected: bool, error: str | None) -> None:
        self._enqueue(_DockerStatus(connected, error))

    async def _on_docker_connection(self, status: _DockerStatus) -> None:
        if status.connected == self._docker_ok:
            if status.connected and status.stream:
                # The stream is back after a drop a worker's call already saw
                # end: events may have been missed meanwhile.
                await self._resync("docker connected")
            return
        self._docker_ok = status.connected
        if status.connected:
            await self._read_cgroup_driver()
            await self._feed(DockerAvailable())
            await self._resync("docker connected")
        else:
            await self._feed(DockerUnavailableEvent(status.error or ""))

    async def _on_container_event(self, raw: dict[str, Any]) -> None:
        action = str(raw.get("Action") or raw.get("status") or "")
        cid = str(raw.get("id") or raw.get("Actor", {}).get("ID") or "")
        if not cid:
            return
        if action == "destroy":
            await self._forget(cid, "destroyed")
            return
        if cid not in self._watched and not self._may_select(cid, raw):
            return  # never watched, and its attributes say it is not selected: no I/O
        info = await self._inspect(cid)
        if info is None:
            await self._forget(cid, "destroyed")
            return
        await self._observe(info, reason=action)

    async def _observe(self, info: ContainerInfo, reason: str) -> None:
        """Bring followers, timers and the core in line with one container's state."""
        known = self._watched.get(info.id)
        if not is_watched(info, self.config.watch):
            if known is not None:
                await self._forget(info.id, f"no longer selected ({reason})")
            return
        if known is not None and known.name != info.name:
            # Renamed: budgets are keyed by name, so the old name leaves the set.
            await self._feed(ContainerUnwatched(_ref(known), "renamed"))
        self._watched[info.id] = info
        if info.status == "running":
            if known is None:
                # First sight: a container that has just started is read from
                # its start; one already running, from now: never the past.
                since = info.started_at if reason == "start" else time.time()
            elif known.started_at != info.started_at:
                since = info.started_at  # a new run: nothing older is in it
            else:
                since = time.time()  # the same run, attached again
            self._attach(info, since=since)
            self._ensure_timer(info)
        else:
            self._detach(info.id)
        if known is None or known.name != info.name:
            await self._feed(ContainerWatched(_ref(info), _state(info), info.started_at,
                                              info.labels, info.image))
        else:
            await self._feed(ContainerStateChanged(_ref(info), _state(info), info.started_at))
        if info.status == "running":
            await self._warn_reload_exposure(info)

    async def _read_cgroup_driver(self) -> None:
        try:
            info = await self._blocking(self._gateway.info)
        except DockerUnavailable:
            return  # the connection observer reports it
        driver = info.get("CgroupDriver")
        self._cgroup_driver = str(driver) if driver else None

    async def _warn_reload_exposure(self, info: ContainerInfo) -> None:
        """Once per container: record it when the next daemon-reload will revoke its GPU access."""
        if (self._cgroup_driver != "systemd" or not info.expects_nvidia_device
                or info.id in self._reload_warned):
            return
        allow = await self._blocking(scope_device_allow, info)
        if reload_exposure(self._cgroup_driver, (), allow) is ReloadExposure.WILL_BREAK:
            self._reload_warned.add(info.id)
            self._record(make_record(
                "reload_will_break", container=info.name, container_id=info.short_id,
                device_allow=allow, advice=RELOAD_ADVICE,
            ))

    async def _forget(self, cid: str, reason: str) -> None:
        self._detach(cid)
        info = self._watched.pop(cid, None)
        if info is not None:
            await self._feed(ContainerUnwatched(_ref(info), reason))

    async def _resync(self, reason: str) -> None:
        try:
            containers = await self._blocking(self._gateway.list_containers, self._candidate)
        except DockerUnavailable as exc:
            await self._on_docker_connection(_DockerStatus(False, str(exc)))
            return
        present = {info.id for info in containers}
        for cid in list(self._watched):
            if cid not in present:
                await self._forget(cid, "destroyed")
        for info in containers:
            await self._observe(info, reason=reason)

    def _may_select(self, cid: str, raw: dict[str, Any]) -> bool:
        """Whether the watch set may select the container an event is about,
        judged from the event alone (its name and labels are attributes of
        every container event). ``all_gpu_containers`` needs the inspect."""
        if self.config.watch.all_gpu_containers:
            return True
        attributes = raw.get("Actor", {}).get("Attributes") or {}
        if not isinstance(attributes, dict):
            return True
        name = str(attributes.get("name") or "")
        if not name:
            return True  # an event without a name: look, to be safe
        labels = {str(k): str(v) for k, v in attributes.items()}
        summary = ContainerInfo(cid, name.lstrip("/"), "", 0.0, labels)
        return is_watched(summary, self.config.watch)

    def _candidate(self, summary: ContainerInfo) -> bool:
        """Worth a full inspect in a resync (called on a worker thread)."""
        return (
            summary.id in self._watched
            or self.config.watch.all_gpu_containers  # GPU details need the inspect
            or is_watched(summary, self.config.watch)
        )

    def _attach(self, info: ContainerInfo, since: float) -> None:
        current = self._followers.get(info.id)
        if current is not None and current.alive and current.since >= info.started_at - 1e-3:
            return  # already following this run of the container
        if current is not None:
            current.stop()
        follower = LogFollower(
            self._gateway, info.id, info.name, since,
            self.config.for_container(info.name, info.image).patterns,
            self._on_log_match, self._on_follower_end,
        )
        self._followers[info.id] = follower
        follower.start()

    def _detach(self, cid: str) -> None:
        follower = self._followers.pop(cid, None)
        if follower is not None:
            follower.stop()
        timer = self._timers.pop(cid, None)
        if timer is not None:
            timer.cancel()

    def _on_log_match(self, match: LogMatch) -> None:
        self._enqueue(LogMatched(ContainerRef(match.container_id, match.container_name),
                                 match.pattern, match.line[:512]))

    def _on_follower_end(self, cid: str, error: str | None) -> None:
        self._enqueue(_FollowerEnded(cid, error))

    async def _on_follower_ended(self, ended: _FollowerEnded) -> None:
        follower = self._followers.get(ended.container_id)
        if follower is None or follower.alive:
            return
        info = self._watched.get(ended.container_id)
        if ended.error:
            name = info.name if info else ended.container_id[:12]
            self._record(make_record("log_unreadable", container=name,
                                     container_id=ended.container_id[:12], error=ended.error))
            return  # e.g. an unreadable log driver: one warning, no retry storm
        # The stream ended without error: the container stopped, or the engine
        # went away; the event stream and resync take it from here.
        del self._followers[ended.container_id]

    def _ensure_timer(self, info: ContainerInfo) -> None:
        timer = self._timers.get(info.id)
        if timer is not None and not timer.done():
            return
        interval = self.config.for_container(info.name, info.image).probe_interval
        ref = _ref(info)
        self._timers[info.id] = self._spawn(self._probe_timer(ref, interval), f"timer-{info.name}")

    async def _probe_timer(self, ref: ContainerRef, interval: float) -> None:
        # The first probe comes soon (within FIRST_PROBE_SPREAD), so a daemon
        # that starts learns every container's state in seconds; then a random
        # phase spreads the probes of many containers over the interval.
        delays = itertools.chain(
            (random.uniform(0, min(interval, FIRST_PROBE_SPREAD)), random.uniform(0, interval)),
            itertools.repeat(interval),
        )
        for delay in delays:
            await asyncio.sleep(delay)
            current = self._watched.get(ref.id)
            name = current.name if current else ref.name
            self._queue.put_nowait(ProbeTick(ContainerRef(ref.id, name)))

    # -- GPUs -----------------------------------------------------------------------

    async def _poll_gpus_forever(self) -> None:
        failures = 0
        while True:
            ok = await self._poll_gpus_once()
            failures = 0 if ok else failures + 1
            interval = self.config.gpu.poll_interval
            # Degraded: retry with backoff, capped at the normal interval.
            delay = interval if ok else min(interval, 2.0 ** min(failures, 10))
            await asyncio.sleep(delay)

    async def _poll_gpus_once(self) -> bool:
        try:
            gpus = await self._blocking(self._nvml.read_gpus)
        except NvmlError as exc:
            self._last_gpu_poll = time.time()
            reason = NvmlFailure(exc.kind) if exc.kind in NvmlFailure.__members__.values() \
                else NvmlFailure.UNKNOWN
            self._nvml_ok = False
            self._queue.put_nowait(NvmlUnavailable(reason, str(exc)))
            return False
        self._last_gpu_poll = time.time()
        self._nvml_ok = True
        self._queue.put_nowait(
            GpuSnapshot(tuple(GpuInfo(g.index, g.uuid, g.name, g.persistence) for g in gpus))
        )
        return True

    # -- systemd ------------------------------------------------------------------------

    def _start_reload_watch(self) -> None:
        watcher = ReloadWatcher()
        try:
            watcher.open()
        except ReloadWatchUnavailable as exc:
            log.debug("systemd_reload_watch_unavailable", reason=str(exc))
            return

        def follow() -> None:
            try:
                for when in watcher.follow(self._reload_stop):
                    self._enqueue(SystemdReloaded(when))
            except ReloadWatchUnavailable as exc:
                log.warning("systemd_reload_watch_failed", reason=str(exc))
            finally:
                watcher.close()

        threading.Thread(target=follow, name="systemd-reloads", daemon=True).start()

    async def _heartbeat_forever(self) -> None:
        interval = sdnotify.watchdog_interval()
        period = min(interval / 3, 5.0) if interval else 5.0
        while True:
            if interval is None or self._observers_alive():
                sdnotify.notify(f"WATCHDOG=1\nSTATUS={self.status_line()}"
                                if interval else f"STATUS={self.status_line()}")
            await asyncio.sleep(period)

    def _observers_alive(self) -> bool:
        """True when every observer is alive; a stuck one stops the heartbeat."""
        if self._dispatcher is None or self._dispatcher.done():
            return False
        if self._gpu_poller is None or self._gpu_poller.done():
            return False
        if self._events is None or not self._events.alive:
            return False
        # The GPU poller must have come back recently (an NVML call that hangs
        # forever blocks a worker and shows up here), the first poll included:
        # a poll that fails (no NVML at all) comes back and counts, one that
        # never returns does not.
        bound = self.config.gpu.poll_interval * 2 + 60.0
        if time.time() - (self._last_gpu_poll or self.started_at) > bound:
            return False
        # The dispatcher must not be stuck on one item while work waits.
        return not (self._queue.qsize() > 0 and time.monotonic() - self._last_dispatch > 60.0)

    def status_line(self) -> str:
        """The one-line STATUS= text for ``systemctl status``."""
        persistent = sum(1 for g in self._gpus if g.persistence)
        restarts = 0
        if self._core is not None:
            snap = self._core.snapshot(time.time())
            restarts = sum(c.restarts_in_window for c in snap.containers)
        parts = [f"watching {len(self._watched)} containers",
                 f"{persistent}/{len(self._gpus)} GPUs persistent",
                 f"{restarts} restarts in the window"]
        if self._docker_ok is False:
            parts.append("DEGRADED: docker unavailable")
        if self._nvml_ok is False:
            parts.append("DEGRADED: NVML unavailable")
        if self.config.daemon.dry_run:
            parts.append("dry run")
        return ", ".join(parts)

    # -- reload ---------------------------------------------------------------------------

    async def _reload(self) -> None:
        sdnotify.reloading("reloading configuration")
        source = self.config.source
        try:
            if source is None:
                raise ConfigError("no configuration file to reload")
            new = await self._blocking(self._load_checked, source)
        except ConfigError as exc:
            self._record(make_record("config_reload_failed", error=str(exc),
                                     config=str(source) if source else None))
            sdnotify.ready(self.status_line())
            return
        if self._force_dry_run and not new.daemon.dry_run:
            new = replace(new, daemon=replace(new.daemon, dry_run=True))
        self.config = new
        await self._feed(ConfigChanged(new))
        for cid, follower in self._followers.items():
            info = self._watched.get(cid)
            if info is not None:
                follower.patterns = new.for_container(info.name, info.image).patterns
        await self._resync("config reloaded")
        sdnotify.ready(self.status_line())

    @staticmethod
    def _load_checked(source: Path) -> Config:
        config = load_config(source, check_owner=True)
        check_notify_available(config)
        # The state file follows a new state_dir: it must pass the start-time check.
        check_private_dir(config.daemon.state_dir, "state_dir")
        return config

    # -- control channel ------------------------------------------------------------------

    async def _handle_control(self, request: dict[str, Any]) -> Any:
        command = request.get("command")
        container = request.get("container")
        if container is not None and not isinstance(container, str):
            raise ControlError("container must be a name")
        if command == "status":
            return self.status_document()
        if command == "history":
            assert self._core is not None
            return {"now": time.time(), "state": self._core.persisted().to_json()}
        if command == "reset":
            await self._apply(ResetRequested(container))
            return {"reset": container or "all"}
        if command == "pause":
            duration = pause_duration(request.get("for"))
            target = self._control_target(container)
            until = None if duration is None else time.time() + duration
            await self._apply(PauseRequested(target, until))
            return {"paused": target or "all", "until": until}
        if command == "resume":
            target = self._control_target(container, resuming=True)
            await self._apply(ResumeRequested(target))
            return {"resumed": target or "all"}
        raise ControlError(f"unknown command {command!r}")

    async def _apply(self, event: Event) -> None:
        """Hand ``event`` to the core through the dispatcher; return once applied."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Apply(event, done))
        await done

    def _control_target(self, name: str | None, *, resuming: bool = False) -> str | None:
        """The container a pause/resume names (see :func:`control_target`); raises
        ControlError for a name neither watched nor configured."""
        assert self._core is not None
        paused = self._core.persisted().paused if resuming else ()
        watched = {cid: info.name for cid, info in self._watched.items()}
        return control_target(name, watched, self.config, paused)

    def _engine_json(self) -> dict[str, str] | None:
        engine = self._events.engine if self._events is not None else None
        if engine is None:
            return None
        host = (self.config.docker.host or os.environ.get("DOCKER_HOST")
                or "unix:///var/run/docker.sock")
        return {"name": engine.name, "version": engine.version, "host": host}

    def status_document(self) -> dict[str, Any]:
        """What ``gpuwatchd status`` shows, as plain JSON data."""
        assert self._core is not None
        now = time.time()
        snap = self._core.snapshot(now)
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(now - self.started_at, 3),
            "dry_run": self.config.daemon.dry_run,
            "docker_available": self._docker_ok,
            "engine": self._engine_json(),
            "nvml_available": self._nvml_ok,
            "status": self.status_line(),
            "core": snap.to_json(),
        }


def _sockname(sock: Any) -> str:
    """A listening socket's address as one string: a path, or HOST:PORT."""
    try:
        name = sock.getsockname()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name)


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


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
    _exit_past_stuck_threads(status)
    return status


#: How long, after shutdown, threads still running may take to finish.
EXIT_GRACE = 2.0


def _exit_past_stuck_threads(status: int) -> None:
    """Exit at once when a worker is still stuck in a blocking call (an NVML call
    that never returns): the interpreter would otherwise wait for it at exit, past
    systemd's TimeoutStopSec. By now the state is saved and the last record written."""
    deadline = time.monotonic() + EXIT_GRACE
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threading.enumerate()
             if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if stuck:
        log.warning("exit_past_stuck_threads", threads=stuck)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)


__all__ = ["Daemon", "run_daemon"]
