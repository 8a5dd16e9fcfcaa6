"""Fixtures shared by the whole suite: the Docker engine, the bench, the simulated GPU.

Fixture contract (later issues build on these names):

- ``docker_client`` (session): SDK client to the shared engine.
- ``bench_native`` (session): the built stand-ins only, no Docker (:class:`Bench`).
- ``bench`` (session): the built stand-ins and imported images (:class:`Bench`).
- ``gpu`` (function): a fresh simulated GPU world (:class:`GpuController`).
- ``engine`` (function): the engine a test runs against (:class:`Engine`); Docker
  unless parametrised with ``@on_every_engine`` (Docker and the private Podman).
- ``podman_client`` (session): SDK client to the private Podman service.
- ``make_container`` (function): container factory on ``engine``; removes what it made.
- ``private_engine`` (function): a private dockerd (:class:`PrivateEngine`).
- ``blockbuster`` (function, opt-in): fails the test on blocking calls in the event loop.

Helpers to import: ``from tests.bench import wait_for, wait_for_log``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from tests.bench import Bench, ContainerFactory, GpuController, PrivateEngine, build_bench
from tests.bench.engines import Engine, podman_host
from tests.bench.images import ensure_imported


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """An SDK client to the shared engine (DOCKER_HOST, else /var/run/docker.sock).

    Fails (never skips) when no engine answers: scripts/test starts one.
    """
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        pytest.fail(
            f"no Docker engine answers ({exc}); run the suite with scripts/test, which starts one",
            pytrace=False,
        )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def bench_native() -> Bench:
    """The stand-in library and nvidia-smi, built (no Docker needed; ``images`` is empty)."""
    try:
        return build_bench(None)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def bench(bench_native: Bench, docker_client: docker.DockerClient) -> Bench:
    """The bench: stand-in library and nvidia-smi built, images imported into the engine."""
    try:
        return build_bench(docker_client)
    except (RuntimeError, docker.errors.DockerException) as exc:
        pytest.fail(f"building the bench images failed: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def podman_client(bench: Bench) -> Iterator[docker.DockerClient]:
    """An SDK client to the private Podman service, with the bench images imported.

    Fails (never skips) when it does not answer: scripts/test starts it.
    """
    host = podman_host()
    try:
        client = docker.DockerClient(base_url=host, timeout=120)
        client.ping()
        ensure_imported(client, bench.images)
    except (docker.errors.DockerException, OSError) as exc:
        pytest.fail(f"the podman service at {host} does not answer ({exc})", pytrace=False)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def engine(request: pytest.FixtureRequest, bench: Bench,
           docker_client: docker.DockerClient) -> Engine:
    """The engine this test runs against: ``docker`` (the default) or ``podman``
    (``@on_every_engine``, or ``@pytest.mark.parametrize("engine", [...], indirect=True)``)."""
    name = getattr(request, "param", "docker")
    request.node.user_properties.append(("engine", name))
    if name == "docker":
        host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        return Engine("docker", host, docker_client, bench.images)
    if name == "podman":
        client = request.getfixturevalue("podman_client")
        return Engine("podman", podman_host(), client, bench.images)
    raise ValueError(f"unknown engine {name!r}")


@pytest.fixture
def gpu(bench_native: Bench, tmp_path: Path) -> GpuController:
    """A fresh simulated GPU world: one GTX 1080 Ti, persistence off, driver loaded.

    Needs no Docker; ``gpu.run_kwargs()`` gives containers the same world.
    """
    root = tmp_path / "gpu"
    root.mkdir()
    return GpuController(root, bench_native.lib_dir, bench_native.nvidia_smi)


@pytest.fixture
def make_container(
    request: pytest.FixtureRequest,
    engine: Engine,
    gpu: GpuController,
) -> Iterator[ContainerFactory]:
    """``make_container(image="konomi", *, name=None, mode="normal", gpu=True, labels=None,
    environment=None, client=None, **run_kwargs)`` -> a started Container.

    Every container runs with ``--network none`` and is force-removed at
    teardown, whatever the test's outcome.
    """
    factory = ContainerFactory(engine.client, engine.images, gpu, request.node.name)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def private_engine(bench: Bench) -> Iterator[PrivateEngine]:
    """A private dockerd (own socket, data root, exec root, pidfile) with the bench images.

    Stopped by its PID and removed at teardown.
    """
    engine = PrivateEngine(bench.images)
    try:
        engine.start()
        yield engine
    finally:
        engine.close()


@pytest.fixture
def blockbuster() -> Iterator[BlockBuster]:
    """Fails the test when a blocking call runs in the event loop (opt in per test or module)."""
    with blockbuster_ctx() as bb:
        yield bb


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Prints the time spent in tests on each engine (set-up and teardown included)."""
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if not isinstance(report, pytest.TestReport):
                continue
            found = dict(report.user_properties).get("engine")
            if found is None:
                continue
            engine = str(found)
            totals[engine] = totals.get(engine, 0.0) + report.duration
            if report.when == "call":
                counts[engine] = counts.get(engine, 0) + 1
    if totals:
        terminalreporter.write_sep("-", "time per engine")
        for engine, seconds in sorted(totals.items()):
            terminalreporter.write_line(
                f"{engine}: {counts.get(engine, 0)} tests, {seconds:.0f} s"
            )
