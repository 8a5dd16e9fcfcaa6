"""The executor: the core's actions carried out through the adapters.

Every action that does I/O ends in exactly one result event on the queue
(``ProbeFinished``, ``PersistenceSetFinished``, ``RestartFinished``),
whatever the adapter raised, so the core never waits for an answer that
cannot come. The executor calls adapters only, never an observer: evidence a
result needs (a fresh GPU reading after a failed probe, after setting
persistence) is read from NVML here and put on the queue as the same event
the poller puts there; the log follower of a restarted container is the
watch-set observer's work, from the events the restart causes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import docker.errors

from gpuwatchd.adapters.docker_engine import ContainerInfo, DockerUnavailable
from gpuwatchd.adapters.nvml import NvmlError, gpu_reading
from gpuwatchd.adapters.protocols import DockerPort, HostPort, NvmlPort
from gpuwatchd.adapters.state_file import save_state, state_path
from gpuwatchd.config import Config
from gpuwatchd.core.classify import classify_probe
from gpuwatchd.model.events import (
    Action,
    ContainerState,
    DeadlineReached,
    Emit,
    Gpu,
    PersistenceSetFinished,
    PersistenceSetResult,
    ProbeFinished,
    RestartContainer,
    RestartFinished,
    RestartOutcome,
    RunProbe,
    SaveState,
    ScheduleWakeup,
    SetPersistence,
)
from gpuwatchd.model.records import make_record
from gpuwatchd.model.vocabulary import ProbeResult
from gpuwatchd.runtime import Runtime, container_ref, container_state
from gpuwatchd.text import one_line

#: Probes running at once; more wait their turn (a storm must not fork-bomb the host).
MAX_CONCURRENT_PROBES = 8
#: Restarts running at once.
MAX_CONCURRENT_RESTARTS = 2
#: How long shutdown waits for restarts in flight beyond their own stop timeout.
SHUTDOWN_GRACE = 10.0

class Executor:
    """Starts the core's actions in order; the ones that do I/O run as tasks.

    ``gpus`` returns the GPUs of the last reading the core was given (for the
    UUIDs in persistence results).
    """

    def __init__(self, runtime: Runtime, gateway: DockerPort, nvml: NvmlPort, host: HostPort,
                 config: Callable[[], Config],
                 gpus: Callable[[], tuple[Gpu, ...]] = tuple) -> None:
        self._runtime = runtime
        self._gateway = gateway
        self._nvml = nvml
        self._host = host
        self._config = config
        self._gpus = gpus
        self._probe_slots = asyncio.Semaphore(MAX_CONCURRENT_PROBES)
        self._restart_slots = asyncio.Semaphore(MAX_CONCURRENT_RESTARTS)
        self._wakeups: set[asyncio.TimerHandle] = set()
        self.restarts: set[asyncio.Task[None]] = set()  #: restarts in flight

    async def start(self, action: Action) -> None:
        """Start one action. Awaited in order: ``SaveState`` is on disk (or its
        failure recorded) before the next action starts."""
        runtime = self._runtime
        match action:
            case Emit(record=record, fold=fold):
                runtime.record(record, fold=fold)
            case SaveState(state=state):
                path = state_path(self._config().daemon.state_dir)
                try:
                    await runtime.blocking(save_state, path, state)
                except OSError as exc:
                    runtime.record(make_record("state_save_failed", error=str(exc),
                                               path=str(path)))
            case RunProbe():
                runtime.spawn(self.probe(action), f"probe-{action.ref.name}")
            case SetPersistence():
                runtime.spawn(self.set_persistence(action), "set-persistence")
            case RestartContainer():
                task = runtime.spawn(self.restart(action), action.ref.name)
                self.restarts.add(task)
                task.add_done_callback(self.restarts.discard)
            case ScheduleWakeup(at=at, event=event):
                self._schedule(at, event)

    def _schedule(self, at: float, event: DeadlineReached) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._wakeups.discard(handle)
            self._runtime.inbox.put(event)

        handle = loop.call_later(max(0.0, at - time.time()), fire)
        self._wakeups.add(handle)

    def cancel_wakeups(self) -> None:
        for handle in self._wakeups:
            handle.cancel()

    async def finish_restarts(self) -> bool:
        """Let restarts in flight finish, each bounded by its stop timeout plus
        :data:`SHUTDOWN_GRACE`; False when none was in flight."""
        if not self.restarts:
            return False
        config = self._config()
        bound = max(config.for_container(t.get_name()).restart_timeout
                    for t in self.restarts) + SHUTDOWN_GRACE
        await asyncio.wait(self.restarts, timeout=bound)
        return True

    # -- probes --------------------------------------------------------------------

    async def probe(self, action: RunProbe) -> None:
        """Run one probe; it always ends in a ProbeFinished.

        A probe that could not run at all (the call failed, or anything raised)
        ends as ``not_running``: it proves nothing either way, so the core
        probes again rather than waiting for a result that cannot come.
        """
        try:
            finished = await self._run_probe(action)
        except Exception as exc:
            if not isinstance(exc, DockerUnavailable):
                self._runtime.record(make_record(
                    "internal_error", task=f"probe-{action.ref.name}",
                    error=f"{type(exc).__name__}: {exc}"))
            finished = ProbeFinished(action.ref, action.purpose, ProbeResult.NOT_RUNNING,
                                     None, f"probe could not run: {one_line(exc)}")
        self._runtime.inbox.put(finished)

    async def _run_probe(self, action: RunProbe) -> ProbeFinished:
        runtime = self._runtime
        async with self._probe_slots:
            outcome = await runtime.docker(
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
            # own NVML (on the queue before the result), and whether the kernel
            # lets the container's cgroups open its NVIDIA control node.
            await self._read_gpus()
            info = await self._inspect(action.ref.id)
            if info is not None:
                access = (await runtime.blocking(self._host.device_access, info)).ok
        excerpt = outcome.output[:512].decode(errors="replace").strip()
        if outcome.exec_error:
            excerpt = excerpt or outcome.exec_error
        return ProbeFinished(action.ref, action.purpose, result,
                             outcome.exit_code, excerpt, access)

    async def _read_gpus(self) -> None:
        self._runtime.inbox.put(await self._runtime.blocking(gpu_reading, self._nvml.read_gpus))

    # -- persistence -------------------------------------------------------------------

    async def set_persistence(self, action: SetPersistence) -> None:
        """Set persistence on each GPU; always ends in one PersistenceSetFinished,
        with a failed result for every GPU whose call raised anything, followed
        by a fresh GPU reading that shows the new state."""
        results = []
        for index in action.gpu_indices:
            uuid = next((g.uuid for g in self._gpus() if g.index == index), "")
            try:
                await self._runtime.blocking(self._nvml.set_persistence, index, True)
                results.append(PersistenceSetResult(index, True, uuid))
            except NvmlError as exc:
                hint = ": run gpuwatchd as root" if exc.kind == "no_permission" else ""
                results.append(PersistenceSetResult(index, False, uuid, f"{exc}{hint}"))
            except Exception as exc:
                results.append(PersistenceSetResult(index, False, uuid,
                                                    f"{type(exc).__name__}: {exc}"))
        self._runtime.inbox.put(PersistenceSetFinished(tuple(results)))
        await self._read_gpus()

    # -- restarts ----------------------------------------------------------------------

    async def restart(self, action: RestartContainer) -> None:
        """Restart one container; always ends in one RestartFinished, failed
        when anything raised (the engine, a parse, the thread pool)."""
        try:
            finished = await self._run_restart(action)
        except Exception as exc:
            finished = RestartFinished(action.ref, RestartOutcome.FAILED,
                                       error=f"{type(exc).__name__}: {one_line(exc)}")
        self._runtime.inbox.put(finished)

    async def _run_restart(self, action: RestartContainer) -> RestartFinished:
        ref = action.ref
        async with self._restart_slots:
            info = await self._inspect(ref.id)
            if info is None or info.status != "running":
                # Never start what the operator stopped, never fight Docker.
                state = container_state(info) if info is not None else ContainerState.DEAD
                return RestartFinished(ref, RestartOutcome.NOT_RUNNING, state=state)
            try:
                await self._runtime.docker("restart", ref.name, self._gateway.restart,
                                           ref.id, action.timeout)
                after = await self._inspect(ref.id)
            except (docker.errors.APIError, DockerUnavailable) as exc:
                return RestartFinished(ref, RestartOutcome.FAILED, error=one_line(exc))
        if after is None:
            return RestartFinished(ref, RestartOutcome.FAILED, error="container vanished")
        return RestartFinished(ref, RestartOutcome.RESTARTED, new_ref=container_ref(after),
                               started_at=after.started_at, state=container_state(after))

    async def _inspect(self, ref: str) -> ContainerInfo | None:
        """The container's inspect data; None when it is gone or the call failed."""
        try:
            return await self._runtime.docker("inspect", None, self._gateway.inspect, ref)
        except DockerUnavailable:
            return None
