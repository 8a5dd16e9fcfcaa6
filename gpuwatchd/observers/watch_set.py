"""The watch set: which containers are watched, kept in line with the engine.

Docker's container events (from :class:`~gpuwatchd.observers.docker_events.EventWatcher`
on its own thread) are put on the queue; the dispatcher hands each back to
:meth:`WatchSet.on_container_event`, which inspects the container and
reconciles: a log follower and a probe timer for every running watched
container, the core told what was watched, changed or unwatched. A full
listing (:meth:`WatchSet.resync`) does the same for every container after a
reconnect or a reload, since events missed meanwhile are not replayed.

A container restarted (by anyone, gpuwatchd's executor included) is followed
again from the events its restart causes, read from its new start time, so no
line it writes after the start is missed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol

from gpuwatchd.adapters.docker_engine import ContainerInfo, DockerUnavailable
from gpuwatchd.adapters.protocols import DockerPort, HostPort
from gpuwatchd.config import Config
from gpuwatchd.core.device_access import ReloadExposure, reload_exposure
from gpuwatchd.core.docker_inspect import EngineVersion
from gpuwatchd.core.watchset import is_watched
from gpuwatchd.model.events import (
    ContainerRef,
    ContainerStateChanged,
    ContainerUnwatched,
    ContainerWatched,
    DockerAvailable,
    Event,
    LogMatched,
)
from gpuwatchd.model.events import DockerUnavailable as DockerUnavailableEvent
from gpuwatchd.model.records import RELOAD_ADVICE, make_record
from gpuwatchd.observers.docker_events import EventWatcher
from gpuwatchd.observers.log_follower import LogFollower, LogMatch
from gpuwatchd.observers.probe_timers import ProbeTimers
from gpuwatchd.patterns import LogPattern
from gpuwatchd.runtime import (
    DockerEventSeen,
    DockerStatus,
    FollowerEnded,
    Resync,
    Runtime,
    container_ref,
    container_state,
)

#: After an inspect that failed (the engine erred or timed out), a resync this much later.
RETRY_RESYNC_AFTER = 5.0

Feed = Callable[[Event], Awaitable[None]]


class Follower(Protocol):
    """What the watch set needs of a log follower (:class:`LogFollower`)."""

    since: float
    patterns: tuple[LogPattern, ...]

    def start(self) -> None: ...

    def stop(self) -> None: ...

    @property
    def alive(self) -> bool: ...


class FollowerFactory(Protocol):
    def __call__(self, gateway: DockerPort, container_id: str, container_name: str,
                 since: float, patterns: tuple[LogPattern, ...],
                 on_match: Callable[[LogMatch], None],
                 on_end: Callable[[str, str | None], None]) -> Follower: ...


class WatchSet:
    """The watch-set observer; its reconciliation runs on the dispatcher.

    ``feed`` hands a core event to the core at once (on the dispatcher, in
    order with the reconciliation that produced it).
    """

    def __init__(self, runtime: Runtime, gateway: DockerPort, host: HostPort,
                 config: Callable[[], Config], timers: ProbeTimers, feed: Feed,
                 follower: FollowerFactory = LogFollower) -> None:
        self._runtime = runtime
        self._gateway = gateway
        self._host = host
        self._config = config
        self._timers = timers
        self._feed = feed
        self._new_follower = follower
        self.watched: dict[str, ContainerInfo] = {}
        self.followers: dict[str, Follower] = {}
        self._events: EventWatcher | None = None
        self._cgroup_driver: str | None = None  #: Docker's, read at each connection
        self._reload_checked: set[str] = set()  #: container IDs whose scope was read
        self._retry: asyncio.TimerHandle | None = None

    # -- the observer --------------------------------------------------------------------

    async def start(self) -> None:
        inbox = self._runtime.inbox
        self._events = EventWatcher(
            self._gateway,
            lambda raw: inbox.put(DockerEventSeen(raw)),
            lambda connected, error: inbox.put(DockerStatus(connected, error)),
        )
        self._events.start()

    def stop(self) -> None:
        if self._events is not None:
            self._events.stop()
        for follower in self.followers.values():
            follower.stop()
        if self._retry is not None:
            self._retry.cancel()

    def alive(self) -> bool:
        return self._events is not None and self._events.alive

    @property
    def engine(self) -> EngineVersion | None:
        """The engine of the event stream's last connection."""
        return self._events.engine if self._events is not None else None

    # -- the engine's connection ------------------------------------------------------

    async def on_docker_status(self, status: DockerStatus) -> None:
        runtime = self._runtime
        if status.connected == runtime.docker_ok:
            if status.connected and status.stream:
                # The stream is back after a drop a worker's call already saw
                # end: events may have been missed meanwhile.
                await self.resync("docker connected")
            return
        runtime.docker_ok = status.connected
        if status.connected:
            await self._read_cgroup_driver()
            await self._feed(DockerAvailable())
            await self.resync("docker connected")
        else:
            await self._feed(DockerUnavailableEvent(status.error or ""))

    async def _read_cgroup_driver(self) -> None:
        try:
            info = await self._runtime.blocking(self._gateway.info)
        except DockerUnavailable:
            return  # the connection observer reports it
        driver = info.get("CgroupDriver")
        self._cgroup_driver = str(driver) if driver else None

    # -- reconciliation ---------------------------------------------------------------

    async def on_container_event(self, raw: dict[str, Any]) -> None:
        action = str(raw.get("Action") or raw.get("status") or "")
        cid = str(raw.get("id") or raw.get("Actor", {}).get("ID") or "")
        if not cid:
            return
        if action == "destroy":
            await self._forget(cid, "destroyed")
            return
        if cid not in self.watched and not self._may_select(cid, raw):
            return  # never watched, and its attributes say it is not selected: no I/O
        try:
            info = await self._runtime.docker("inspect", None, self._gateway.inspect, cid)
        except DockerUnavailable:
            # The engine erred, not the container: only a 404 means it is gone.
            self._retry_later()
            return
        if info is None:
            await self._forget(cid, "destroyed")
            return
        await self.observe(info, reason=action)

    def _retry_later(self) -> None:
        if self._retry is not None:
            return  # one is due already

        def fire() -> None:
            self._retry = None
            self._runtime.inbox.put(Resync("inspect failed"))

        self._retry = asyncio.get_running_loop().call_later(RETRY_RESYNC_AFTER, fire)

    async def observe(self, info: ContainerInfo, reason: str) -> None:
        """Bring followers, timers and the core in line with one container's state."""
        known = self.watched.get(info.id)
        if known is not None and known.uses_gpu and info.status != "running":
            # Stopped, it shows no GPU in /proc (Podman's CDI containers show none
            # in inspect either): what its last run showed holds until it runs again,
            # so a restart under way is never taken for a container no longer selected.
            info = replace(info, uses_gpu=True,
                           expects_nvidia_device=info.expects_nvidia_device
                           or known.expects_nvidia_device)
        if not is_watched(info, self._config().watch):
            if known is not None:
                await self._forget(info.id, f"no longer selected ({reason})")
            return
        if known is not None and known.name != info.name:
            # Renamed: budgets are keyed by name, so the old name leaves the set.
            await self._feed(ContainerUnwatched(container_ref(known), "renamed"))
        self.watched[info.id] = info
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
            self._timers.ensure(info)
        else:
            self._detach(info.id)
        if known is None or known.name != info.name:
            await self._feed(ContainerWatched(container_ref(info), container_state(info),
                                              info.started_at, info.labels, info.image))
        else:
            await self._feed(ContainerStateChanged(container_ref(info), container_state(info),
                                                   info.started_at))
        if info.status == "running":
            self._check_reload_exposure(info)

    async def _forget(self, cid: str, reason: str) -> None:
        self._detach(cid)
        self._reload_checked.discard(cid)
        info = self.watched.pop(cid, None)
        if info is not None:
            await self._feed(ContainerUnwatched(container_ref(info), reason))

    async def resync(self, reason: str) -> None:
        """Reconcile every container the engine lists."""
        try:
            containers = await self._runtime.blocking(self._gateway.list_containers,
                                                      self._candidate)
        except DockerUnavailable as exc:
            await self.on_docker_status(DockerStatus(False, str(exc)))
            return
        present = {info.id for info in containers}
        for cid in list(self.watched):
            if cid not in present:
                await self._forget(cid, "destroyed")
        for info in containers:
            await self.observe(info, reason=reason)

    def _may_select(self, cid: str, raw: dict[str, Any]) -> bool:
        """Whether the watch set may select the container an event is about,
        judged from the event alone (its name and labels are attributes of
        every container event). ``all_gpu_containers`` needs the inspect."""
        watch = self._config().watch
        if watch.all_gpu_containers:
            return True
        attributes = raw.get("Actor", {}).get("Attributes") or {}
        if not isinstance(attributes, dict):
            return True
        name = str(attributes.get("name") or "")
        if not name:
            return True  # an event without a name: look, to be safe
        labels = {str(k): str(v) for k, v in attributes.items()}
        summary = ContainerInfo(cid, name.lstrip("/"), "", 0.0, labels)
        return is_watched(summary, watch)

    def _candidate(self, summary: ContainerInfo) -> bool:
        """Worth a full inspect in a resync (called on a worker thread)."""
        watch = self._config().watch
        return (
            summary.id in self.watched
            or watch.all_gpu_containers  # GPU details need the inspect
            or is_watched(summary, watch)
        )

    # -- followers ----------------------------------------------------------------------

    def _attach(self, info: ContainerInfo, since: float) -> None:
        current = self.followers.get(info.id)
        if current is not None and current.alive and current.since >= info.started_at - 1e-3:
            return  # already following this run of the container
        if current is not None:
            current.stop()
        inbox = self._runtime.inbox
        follower = self._new_follower(
            self._gateway, info.id, info.name, since,
            self._config().for_container(info.name, info.image).patterns,
            lambda m: inbox.put(LogMatched(ContainerRef(m.container_id, m.container_name),
                                           m.pattern, m.line[:512])),
            lambda cid, error: inbox.put(FollowerEnded(cid, error)),
        )
        self.followers[info.id] = follower
        follower.start()

    def _detach(self, cid: str) -> None:
        follower = self.followers.pop(cid, None)
        if follower is not None:
            follower.stop()
        self._timers.cancel(cid)

    async def on_follower_ended(self, ended: FollowerEnded) -> None:
        follower = self.followers.get(ended.container_id)
        if follower is None or follower.alive:
            return
        info = self.watched.get(ended.container_id)
        if ended.error:
            name = info.name if info else ended.container_id[:12]
            self._runtime.record(make_record("log_unreadable", container=name,
                                             container_id=ended.container_id[:12],
                                             error=ended.error))
            return  # e.g. an unreadable log driver: one warning, no retry storm
        # The stream ended without error: the container stopped, or the engine
        # went away; the event stream and resync take it from here.
        del self.followers[ended.container_id]

    def reload_patterns(self) -> None:
        """Give every follower the patterns of the configuration now in force."""
        config = self._config()
        for cid, follower in self.followers.items():
            info = self.watched.get(cid)
            if info is not None:
                follower.patterns = config.for_container(info.name, info.image).patterns

    # -- systemd's reload exposure ------------------------------------------------------

    def _check_reload_exposure(self, info: ContainerInfo) -> None:
        """Once per container, in a task of its own (``systemctl`` blocks): record
        it when the next daemon-reload will revoke its GPU access. A read that cannot
        tell is tried again at the container's next event."""
        if (self._cgroup_driver != "systemd" or not info.expects_nvidia_device
                or info.id in self._reload_checked):
            return
        self._reload_checked.add(info.id)
        self._runtime.spawn(self._warn_reload_exposure(info, self._cgroup_driver),
                            f"reload-exposure-{info.name}")

    async def _warn_reload_exposure(self, info: ContainerInfo, driver: str) -> None:
        allow = None
        try:
            allow = await self._runtime.blocking(self._host.scope_device_allow, info)
        finally:
            if allow is None:  # could not tell (a timeout, a scope not active yet): ask again
                self._reload_checked.discard(info.id)
        if reload_exposure(driver, (), allow) is ReloadExposure.WILL_BREAK:
            self._runtime.record(make_record(
                "reload_will_break", container=info.name, container_id=info.short_id,
                device_allow=allow, advice=RELOAD_ADVICE,
            ))
