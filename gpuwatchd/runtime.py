"""The plumbing the daemon's parts share: the one typed queue, tasks, worker threads.

Observers and the executor put :data:`Item` values into the :class:`Inbox`;
the dispatcher takes them one at a time and matches on their type. Core
events go to the core as they are; the other items are the observers' own
work that must run on the dispatcher (a Docker event to reconcile, a
connection change, a follower that ended, a resync, a reload, a control
command waiting for the core).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from gpuwatchd.adapters.docker_engine import ContainerInfo, DockerUnavailable
from gpuwatchd.model.events import ContainerRef, ContainerState, Event
from gpuwatchd.model.records import Record, make_record

T = TypeVar("T")
log = structlog.get_logger("gpuwatchd")

_STATES = {s.value: s for s in ContainerState}


def container_state(info: ContainerInfo) -> ContainerState:
    """The core's state of a container, from its inspect data (unknown: dead)."""
    return _STATES.get(info.status, ContainerState.DEAD)


def container_ref(info: ContainerInfo) -> ContainerRef:
    return ContainerRef(info.id, info.name)


@dataclass(frozen=True)
class DockerEventSeen:
    """One raw container event from the engine's event stream."""

    raw: dict[str, Any]


@dataclass(frozen=True)
class DockerStatus:
    connected: bool
    error: str | None
    #: From the event stream (a reconnect resyncs), or a worker's call that succeeded.
    stream: bool = True


@dataclass(frozen=True)
class FollowerEnded:
    container_id: str
    error: str | None


@dataclass(frozen=True)
class Resync:
    reason: str


@dataclass(frozen=True)
class Reload:
    pass


@dataclass(frozen=True)
class Apply:
    """A core event whose sender waits until the core has applied it."""

    event: Event
    done: asyncio.Future[None]

    def settle(self, error: BaseException | None = None) -> None:
        """Tell the sender the core is done with the event: applied, or ``error``."""
        if not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)


#: Everything the dispatcher reads.
Item = Event | DockerEventSeen | DockerStatus | FollowerEnded | Resync | Reload | Apply


class Inbox:
    """The one queue between the world and the dispatcher.

    :meth:`put` is thread-safe: observers on their own threads call it. Before
    :meth:`bind` and after the loop closed, items are dropped.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def put(self, item: Item) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if _in_loop(loop):
            self._queue.put_nowait(item)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed under us
                loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def get(self) -> Item:
        return await self._queue.get()

    def task_done(self) -> None:
        self._queue.task_done()

    def qsize(self) -> int:
        return self._queue.qsize()

    async def drain(self, bound: float = 5.0) -> None:
        """Wait (at most ``bound`` seconds) until every item put has been handled."""
        with contextlib.suppress(asyncio.TimeoutError):  # asyncio's own before 3.11
            await asyncio.wait_for(self._queue.join(), bound)


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class RecordFn(Protocol):
    def __call__(self, record: Record, *, fold: bool = True) -> None: ...


class Runtime:
    """Tasks, the bounded worker pool and Docker calls, shared by the daemon's parts.

    A task that dies of an exception is recorded (``internal_error``), never lost.
    """

    def __init__(self, record: RecordFn, workers: int) -> None:
        self.inbox = Inbox()
        self.record = record
        self.tasks: set[asyncio.Task[Any]] = set()
        #: Whether the engine answers, as the event stream (and calls) last showed.
        self.docker_ok: bool | None = None
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="gpuwatchd-io")

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.record(make_record("internal_error", task=task.get_name(),
                                    error=f"{type(exc).__name__}: {exc}"))

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def docker(self, call: str, container: str | None,
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
            result = await self.blocking(fn, *args)
        except DockerUnavailable as exc:
            self.record(make_record("docker_call_failed", call=call, container=container,
                                    error=str(exc)))
            raise
        if self.docker_ok is False:
            self.inbox.put(DockerStatus(True, None, stream=False))
        return result

    def on_loop_exception(self, loop: asyncio.AbstractEventLoop,
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
                self.record(make_record("accept_failed", listener=_sockname(sock),
                                        error=str(exc)))
                return
            error = f"{type(exc).__name__}: {exc}" if exc is not None else message
            self.record(make_record("internal_error", task=f"event loop: {message}",
                                    error=error))
        except Exception:  # a record that cannot be written: asyncio's own report then
            loop.default_exception_handler(context)

    def close(self) -> None:
        """Stop the worker pool without waiting for a call stuck in it."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _sockname(sock: Any) -> str:
    """A listening socket's address as one string: a path, or HOST:PORT."""
    try:
        name = sock.getsockname()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name)


#: How long, after shutdown, threads still running may take to finish.
EXIT_GRACE = 2.0


def exit_past_stuck_threads(status: int) -> None:
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
