"""The watch-set observer: Docker events -> inspect -> attach, detach, forget or resync,
and what the core is told. Fakes for the engine and the followers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from gpuwatchd.adapters.docker_engine import ContainerInfo, DockerUnavailable
from gpuwatchd.adapters.fakes import FakeDocker, FakeHost
from gpuwatchd.adapters.protocols import DockerPort
from gpuwatchd.config import Config, WatchConfig
from gpuwatchd.model.events import (
    ContainerRef,
    ContainerState,
    ContainerStateChanged,
    ContainerUnwatched,
    ContainerWatched,
    DockerAvailable,
    Event,
    ProbeTick,
)
from gpuwatchd.model.events import DockerUnavailable as DockerUnavailableEvent
from gpuwatchd.observers import watch_set as watch_set_module
from gpuwatchd.observers.log_follower import LogMatch
from gpuwatchd.observers.probe_timers import ProbeTimers
from gpuwatchd.observers.watch_set import WatchSet
from gpuwatchd.patterns import LogPattern
from gpuwatchd.runtime import DockerStatus, FollowerEnded, Resync, Runtime
from tests.unit.runtime_harness import T0, Recorded, container, make_runtime, queued, settle

KONOMI = container("konomi")


class Follower:
    def __init__(self, gateway: DockerPort, container_id: str, container_name: str,
                 since: float, patterns: tuple[LogPattern, ...],
                 on_match: Callable[[LogMatch], None],
                 on_end: Callable[[str, str | None], None]) -> None:
        self.container_id = container_id
        self.since = since
        self.patterns = patterns
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    @property
    def alive(self) -> bool:
        return self.started and not self.stopped


class World:
    def __init__(self, runtime: Runtime, recorded: Recorded, *containers: ContainerInfo,
                 driver: str = "cgroupfs", config: Config | None = None) -> None:
        self.runtime = runtime
        self.recorded = recorded
        self.docker = FakeDocker(*containers, cgroup_driver=driver)
        self.host = FakeHost(device_allow="DeviceAllow=")
        self.fed: list[Event] = []
        self.made: list[Follower] = []
        config = config or Config()
        self.timers = ProbeTimers(runtime, lambda: config)

        def follower(gateway: DockerPort, container_id: str, container_name: str,
                     since: float, patterns: tuple[LogPattern, ...],
                     on_match: Callable[[LogMatch], None],
                     on_end: Callable[[str, str | None], None]) -> Follower:
            made = Follower(gateway, container_id, container_name, since, patterns,
                            on_match, on_end)
            self.made.append(made)
            return made

        async def feed(event: Event) -> None:
            self.fed.append(event)

        self.watch_set = WatchSet(runtime, self.docker, self.host, lambda: config,
                                  self.timers, feed, follower=follower)

    async def event(self, action: str, info: ContainerInfo, **attributes: str) -> None:
        attrs = {"name": info.name, **info.labels, **attributes}
        await self.watch_set.on_container_event(
            {"Action": action, "id": info.id, "Actor": {"ID": info.id, "Attributes": attrs}})

    def following(self) -> dict[str, float]:
        return {cid: f.since for cid, f in self.watch_set.followers.items() if f.alive}


@pytest.fixture
async def world() -> AsyncIterator[World]:
    runtime, recorded = make_runtime()
    made = World(runtime, recorded, KONOMI)
    yield made
    made.timers.stop()
    made.watch_set.stop()


async def test_a_start_is_watched_followed_from_its_start_and_probed(world: World) -> None:
    await world.event("start", KONOMI)
    assert world.fed == [ContainerWatched(ContainerRef(KONOMI.id, "konomi"),
                                          ContainerState.RUNNING, T0, KONOMI.labels, "")]
    assert world.following() == {KONOMI.id: T0}
    await asyncio.sleep(1.1)  # the first probe comes within a second
    assert ProbeTick(ContainerRef(KONOMI.id, "konomi")) in queued(world.runtime)


async def test_an_event_of_a_container_not_selected_costs_no_inspect(world: World) -> None:
    other = container("mirakurun", labels={})
    world.docker.containers[other.id] = other
    await world.event("start", other)
    assert world.docker.called("inspect") == [] and world.fed == []


async def test_destroy_and_a_404_forget_the_container(world: World) -> None:
    await world.event("start", KONOMI)
    first = world.made[0]
    await world.event("destroy", KONOMI)
    assert world.fed[-1] == ContainerUnwatched(ContainerRef(KONOMI.id, "konomi"), "destroyed")
    assert first.stopped and world.watch_set.watched == {}
    await world.event("start", KONOMI)
    del world.docker.containers[KONOMI.id]  # the engine answers 404
    await world.event("die", KONOMI)
    assert world.fed[-1] == ContainerUnwatched(ContainerRef(KONOMI.id, "konomi"), "destroyed")


async def test_an_inspect_that_fails_keeps_the_watch_and_resyncs_later(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watch_set_module, "RETRY_RESYNC_AFTER", 0.05)
    await world.event("start", KONOMI)
    fed = len(world.fed)
    world.docker.fail["inspect"] = DockerUnavailable("engine error: 500")
    await world.event("die", KONOMI)
    await world.event("die", KONOMI)
    # Not "destroyed": the engine erred, the container may well be there.
    assert len(world.fed) == fed and KONOMI.id in world.watch_set.watched
    assert world.following() == {KONOMI.id: T0}
    assert len(world.recorded.events("docker_call_failed")) == 2
    await asyncio.sleep(0.2)
    resyncs = [i for i in queued(world.runtime) if isinstance(i, Resync)]
    assert resyncs == [Resync("inspect failed")]  # one, however many failed


async def test_a_stop_detaches_and_a_restart_is_followed_from_its_new_start(
    world: World,
) -> None:
    await world.event("start", KONOMI)
    first = world.made[0]
    stopped = replace(KONOMI, status="exited")
    world.docker.containers[KONOMI.id] = stopped
    await world.event("die", stopped)
    assert first.stopped and world.following() == {}
    assert isinstance(world.fed[-1], ContainerStateChanged)
    # A restart (the executor's or anyone's) is followed from the new run's start,
    # so a line written right after the start is read.
    again = replace(KONOMI, started_at=T0 + 30)
    world.docker.containers[KONOMI.id] = again
    await world.event("start", again)
    assert world.following() == {KONOMI.id: T0 + 30}


async def test_a_restart_seen_first_by_its_die_event_is_followed_once(world: World) -> None:
    await world.event("start", KONOMI)
    again = replace(KONOMI, started_at=T0 + 30)
    world.docker.containers[KONOMI.id] = again  # the restart finished before the inspect
    await world.event("die", again)
    await world.event("start", again)
    assert world.following() == {KONOMI.id: T0 + 30}
    assert len(world.made) == 2  # the same run is not attached twice


async def test_a_rename_unwatches_the_old_name_and_watches_the_new(world: World) -> None:
    await world.event("start", KONOMI)
    renamed = replace(KONOMI, name="konomi2")
    world.docker.containers[KONOMI.id] = renamed
    await world.event("rename", renamed)
    assert world.fed[-2] == ContainerUnwatched(ContainerRef(KONOMI.id, "konomi"), "renamed")
    assert isinstance(world.fed[-1], ContainerWatched)
    assert world.fed[-1].ref.name == "konomi2"


async def test_a_resync_forgets_the_missing_and_observes_the_rest(world: World) -> None:
    await world.event("start", KONOMI)
    gone = container("gone")
    world.watch_set.watched[gone.id] = gone
    await world.watch_set.resync("docker connected")
    assert ContainerUnwatched(ContainerRef(gone.id, "gone"), "destroyed") in world.fed
    assert set(world.watch_set.watched) == {KONOMI.id}


async def test_the_engine_going_and_coming_back(world: World) -> None:
    await world.watch_set.on_docker_status(DockerStatus(True, None))
    assert world.fed[0] == DockerAvailable()
    assert world.runtime.docker_ok is True
    assert isinstance(world.fed[1], ContainerWatched)  # the resync after the connection
    world.docker.fail["list_containers"] = DockerUnavailable("refused")
    await world.watch_set.resync("config reloaded")
    assert world.fed[-1] == DockerUnavailableEvent("refused")
    assert world.runtime.docker_ok is False


async def test_a_follower_that_ended(world: World) -> None:
    await world.event("start", KONOMI)
    world.made[0].stopped = True
    await world.watch_set.on_follower_ended(FollowerEnded(KONOMI.id, "log driver none"))
    [unreadable] = world.recorded.events("log_unreadable")
    assert unreadable.get("container") == "konomi"
    assert KONOMI.id in world.watch_set.followers  # no retry storm
    await world.watch_set.on_follower_ended(FollowerEnded(KONOMI.id, None))
    assert KONOMI.id not in world.watch_set.followers


async def test_the_reload_exposure_check_never_blocks_the_dispatcher_and_runs_once() -> None:
    runtime, recorded = make_runtime(inline=False)  # the read runs on a worker thread
    gpu = replace(KONOMI, expects_nvidia_device=True)
    world = World(runtime, recorded, gpu, driver="systemd")
    hold = world.host.hold = threading.Event()
    try:
        await world.watch_set.on_docker_status(DockerStatus(True, None))
        # The resync observed the container while systemctl hangs: it came back anyway.
        await asyncio.wait_for(world.event("start", gpu), 1.0)
        assert world.recorded.events("reload_will_break") == []
        hold.set()
        await settle(runtime)
        for _ in range(50):
            if world.recorded.events("reload_will_break"):
                break
            await asyncio.sleep(0.02)
        [warning] = world.recorded.events("reload_will_break")
        assert warning.get("container") == "konomi"
        await world.event("start", gpu)
        await settle(runtime)
        assert world.host.called("scope_device_allow") == [(gpu.id,)]  # once per container
    finally:
        hold.set()
        world.timers.stop()
        runtime.close()


async def test_a_reload_exposure_read_that_cannot_tell_is_tried_again() -> None:
    """systemctl timing out (or a scope not active yet) is no answer: the container's
    next event reads again, and the warning still comes once the scope answers."""
    runtime, recorded = make_runtime()
    gpu = replace(KONOMI, expects_nvidia_device=True)
    world = World(runtime, recorded, gpu, driver="systemd")
    world.host.device_allow = None
    try:
        await world.watch_set.on_docker_status(DockerStatus(True, None))
        await settle(runtime)
        assert world.recorded.events("reload_will_break") == []
        world.host.device_allow = "DeviceAllow="
        await world.event("start", gpu)
        await settle(runtime)
        [warning] = world.recorded.events("reload_will_break")
        assert warning.get("container") == "konomi"
        assert len(world.host.called("scope_device_allow")) == 2
    finally:
        world.timers.stop()
        runtime.close()


async def test_a_gpu_container_stopped_for_its_restart_stays_selected() -> None:
    """With all_gpu_containers, a container whose GPU shows only while it runs (in
    /proc; Podman's CDI containers show none in inspect) is not dropped when an event
    finds it stopped mid-restart: the core keeps its remediation."""
    runtime, recorded = make_runtime()
    config = Config(watch=WatchConfig(containers=(), labels=(), all_gpu_containers=True))
    gpu = container("cdi", labels={})
    world = World(runtime, recorded, gpu, config=config)
    try:
        await world.watch_set.observe(gpu, reason="start")
        world.docker.containers[gpu.id] = replace(gpu, status="exited", uses_gpu=False)
        await world.event("die", gpu)
        restarted = replace(gpu, started_at=gpu.started_at + 5)
        world.docker.containers[gpu.id] = restarted
        await world.event("start", restarted)
        assert not [e for e in world.fed if isinstance(e, ContainerUnwatched)]
        assert gpu.id in world.watch_set.watched
        assert world.following() == {gpu.id: restarted.started_at}
        # A container that never showed a GPU is still not selected when stopped.
        plain = container("plain", labels={}, cid="p" * 64)
        world.docker.containers[plain.id] = replace(plain, status="exited", uses_gpu=False)
        await world.event("die", plain)
        assert plain.id not in world.watch_set.watched
    finally:
        world.timers.stop()
        runtime.close()
