"""The executor: each action -> the adapter calls it makes -> the result event it
puts on the queue, whatever the adapter raised. Fakes only, no threads."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gpuwatchd.adapters.docker_engine import DockerUnavailable, ExecOutcome
from gpuwatchd.adapters.fakes import FakeDocker, FakeHost, FakeNvml
from gpuwatchd.adapters.nvml import NvmlError
from gpuwatchd.adapters.state_file import PersistedState, state_path
from gpuwatchd.config import Config, DaemonConfig
from gpuwatchd.core.classify import classify_probe
from gpuwatchd.core.device_access import Access
from gpuwatchd.executor import Executor
from gpuwatchd.model.events import (
    ContainerRef,
    ContainerState,
    DeadlineKind,
    DeadlineReached,
    Emit,
    Gpu,
    GpuSnapshot,
    NvmlFailure,
    NvmlUnavailable,
    PersistenceSetFinished,
    ProbeFinished,
    ProbePurpose,
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
from gpuwatchd.runtime import Runtime
from tests.unit.runtime_harness import Recorded, container, make_runtime, queued, settle

GPU0 = Gpu(0, "GPU-0", "NVIDIA GeForce GTX 1080 Ti", True)
GPU1 = Gpu(1, "GPU-1", "NVIDIA GeForce GTX 1080 Ti", False)
KONOMI = container("konomi")
REF = ContainerRef(KONOMI.id, KONOMI.name)
FAULT_OUTPUT = b"Failed to initialize NVML: Unknown Error\n"


class World:
    def __init__(self, runtime: Runtime, recorded: Recorded, tmp_path: Path) -> None:
        self.docker = FakeDocker(KONOMI)
        self.nvml = FakeNvml(GPU0, GPU1)
        self.host = FakeHost(Access.LOST)
        self.runtime = runtime
        self.recorded = recorded
        config = Config(daemon=DaemonConfig(state_dir=tmp_path / "state",
                                            runtime_dir=tmp_path / "run"))
        self.executor = Executor(runtime, self.docker, self.nvml, self.host, lambda: config,
                                 lambda: (Gpu(0, "GPU-0", "x", True),
                                          Gpu(1, "GPU-1", "x", False)))

    async def run(self, action: object) -> list[object]:
        await self.executor.start(action)  # type: ignore[arg-type]
        await settle(self.runtime)
        return list(queued(self.runtime))


@pytest.fixture
async def world(tmp_path: Path) -> World:
    runtime, recorded = make_runtime()
    return World(runtime, recorded, tmp_path)


def probe() -> RunProbe:
    return RunProbe(REF, ProbePurpose.TIMER, ("nvidia-smi",), 10.0)


async def test_a_probe_that_passes_runs_one_exec_and_reads_nothing_else(world: World) -> None:
    world.docker.probe = ExecOutcome(0, b"GPU 0: fine\n")
    [finished] = await world.run(probe())
    assert world.docker.called("exec_probe") == [(KONOMI.id, ("nvidia-smi",), 10.0)]
    assert world.nvml.calls == [] and world.host.calls == []
    assert isinstance(finished, ProbeFinished)
    assert finished.result is classify_probe(0, b"GPU 0: fine\n")
    assert (finished.exit_code, finished.output, finished.device_access_ok) == (0, "GPU 0: fine",
                                                                              None)


async def test_a_gpu_fault_gathers_the_host_reading_first_then_device_access(
    world: World,
) -> None:
    assert classify_probe(1, FAULT_OUTPUT).is_gpu_fault
    world.docker.probe = ExecOutcome(1, FAULT_OUTPUT)
    reading, finished = await world.run(probe())
    # The same event the poller puts there, from NVML directly, before the result.
    assert reading == GpuSnapshot((Gpu(0, "GPU-0", GPU0.name, True),
                                   Gpu(1, "GPU-1", GPU1.name, False)))
    assert world.host.called("device_access") == [(KONOMI.id,)]
    assert isinstance(finished, ProbeFinished)
    assert finished.result is classify_probe(1, FAULT_OUTPUT)
    assert finished.device_access_ok is False


async def test_a_gpu_fault_with_nvml_down_puts_nvml_unavailable_before_the_result(
    world: World,
) -> None:
    world.docker.probe = ExecOutcome(1, FAULT_OUTPUT)
    world.nvml.fail["read_gpus"] = NvmlError("driver_not_loaded", "Driver Not Loaded")
    reading, finished = await world.run(probe())
    assert reading == NvmlUnavailable(NvmlFailure.DRIVER_NOT_LOADED, "Driver Not Loaded")
    assert isinstance(finished, ProbeFinished)


async def test_a_probe_whose_call_fails_ends_not_running_with_the_calls_error(
    world: World,
) -> None:
    world.docker.fail["exec_probe"] = DockerUnavailable("timed out")
    [finished] = await world.run(probe())
    assert isinstance(finished, ProbeFinished)
    assert finished.result is ProbeResult.NOT_RUNNING
    assert finished.output == "probe could not run: timed out"
    assert [r.get("call") for r in world.recorded.events("docker_call_failed")] == ["exec_probe"]
    assert world.recorded.events("internal_error") == []


async def test_a_probe_that_raises_anything_still_ends_and_is_recorded(world: World) -> None:
    world.docker.fail["exec_probe"] = RuntimeError("parse")
    [finished] = await world.run(probe())
    assert isinstance(finished, ProbeFinished)
    assert finished.result is ProbeResult.NOT_RUNNING
    [error] = world.recorded.events("internal_error")
    assert error.get("task") == "probe-konomi" and error.get("error") == "RuntimeError: parse"


async def test_persistence_is_set_per_gpu_and_each_failure_is_its_own(world: World) -> None:
    world.nvml.fail["set_persistence"] = NvmlError("no_permission", "Insufficient Permissions")
    world.nvml.once.add("set_persistence")
    finished, reading = await world.run(SetPersistence((1, 0)))
    assert world.nvml.called("set_persistence") == [(1, True), (0, True)]
    assert isinstance(finished, PersistenceSetFinished)
    failed, done = finished.results
    assert (failed.index, failed.ok, failed.uuid) == (1, False, "GPU-1")
    assert failed.error == "Insufficient Permissions: run gpuwatchd as root"
    assert (done.index, done.ok, done.uuid) == (0, True, "GPU-0")
    assert isinstance(reading, GpuSnapshot)  # the new state, read from NVML at once


async def test_a_persistence_call_that_raises_anything_ends_failed(world: World) -> None:
    world.nvml.fail["set_persistence"] = OSError("boom")
    finished, _ = await world.run(SetPersistence((0,)))
    assert isinstance(finished, PersistenceSetFinished)
    [result] = finished.results
    assert (result.ok, result.error) == (False, "OSError: boom")


async def test_a_restart_restarts_and_reports_the_new_run(world: World) -> None:
    [finished] = await world.run(RestartContainer(REF, 10.0))
    assert world.docker.called("restart") == [(KONOMI.id, 10.0)]
    assert isinstance(finished, RestartFinished)
    assert finished.outcome is RestartOutcome.RESTARTED
    assert finished.started_at == KONOMI.started_at + 10
    assert finished.new_ref == REF and finished.state is ContainerState.RUNNING
    # The executor attaches no follower: that is the watch set's, from the events.
    assert world.docker.called("log_stream") == []


async def test_a_container_that_is_not_running_is_never_restarted(world: World) -> None:
    world.docker.containers[KONOMI.id] = container("konomi", status="exited")
    [finished] = await world.run(RestartContainer(REF, 10.0))
    assert world.docker.called("restart") == []
    assert isinstance(finished, RestartFinished)
    assert finished.outcome is RestartOutcome.NOT_RUNNING
    assert finished.state is ContainerState.EXITED


@pytest.mark.parametrize("raised, error", [
    (DockerUnavailable("engine timed out"), "engine timed out"),
    (RuntimeError("thread pool"), "RuntimeError: thread pool"),
])
async def test_a_restart_that_raises_still_ends_failed(
    world: World, raised: Exception, error: str,
) -> None:
    world.docker.fail["restart"] = raised
    [finished] = await world.run(RestartContainer(REF, 10.0))
    assert isinstance(finished, RestartFinished)
    assert (finished.outcome, finished.error) == (RestartOutcome.FAILED, error)


async def test_a_restart_whose_container_vanished_ends_failed(world: World) -> None:
    world.docker.containers.clear()
    world.docker.containers[KONOMI.id] = KONOMI

    real_restart = world.docker.restart

    def restart_and_remove(ref: str, stop_timeout: float) -> None:
        real_restart(ref, stop_timeout)
        del world.docker.containers[ref]

    world.docker.restart = restart_and_remove  # type: ignore[method-assign]
    [finished] = await world.run(RestartContainer(REF, 10.0))
    assert isinstance(finished, RestartFinished)
    assert (finished.outcome, finished.error) == (RestartOutcome.FAILED, "container vanished")


async def test_records_state_and_wakeups(world: World, tmp_path: Path) -> None:
    record = make_record("daemon_started", dry_run=False, version="x")
    assert await world.run(Emit(record)) == []
    assert world.recorded.records == [record]
    (tmp_path / "state").mkdir(mode=0o700)
    assert await world.run(SaveState(PersistedState())) == []
    assert state_path(tmp_path / "state").exists()
    event = DeadlineReached(REF.name, DeadlineKind.VERIFY_PROBE, 1)
    await world.executor.start(ScheduleWakeup(time.time() + 0.01, event))
    await asyncio.sleep(0.05)
    assert queued(world.runtime) == [event]


async def test_a_state_that_cannot_be_saved_is_recorded(world: World, tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the directory should be")
    await world.run(SaveState(PersistedState()))
    assert len(world.recorded.events("state_save_failed")) == 1


def test_the_executor_imports_no_observer() -> None:
    import ast
    import inspect

    from gpuwatchd import executor

    tree = ast.parse(inspect.getsource(executor))
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert not {m for m in imported if m.startswith(("gpuwatchd.observers", "gpuwatchd.daemon"))}
