"""Fixtures shared by the whole suite: the Docker engine, the bench, the simulated GPU.

Fixture contract (later issues build on these names):

- ``docker_client`` (session): SDK client to the shared engine.
- ``bench_native`` (session): the built stand-ins only, no Docker (:class:`Bench`).
- ``bench`` (session): the built stand-ins and imported images (:class:`Bench`).
- ``gpu`` (function): a fresh simulated GPU world (:class:`GpuController`).
- ``make_container`` (function): container factory; removes what it made.
- ``private_engine`` (function): a private dockerd (:class:`PrivateEngine`).
- ``blockbuster`` (function, opt-in): fails the test on blocking calls in the event loop.

Helpers to import: ``from tests.bench import wait_for, wait_for_log``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from tests.bench import Bench, ContainerFactory, GpuController, PrivateEngine, build_bench


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
    docker_client: docker.DockerClient,
    bench: Bench,
    gpu: GpuController,
) -> Iterator[ContainerFactory]:
    """``make_container(image="konomi", *, name=None, mode="normal", gpu=True, labels=None,
    environment=None, client=None, **run_kwargs)`` -> a started Container.

    Every container runs with ``--network none`` and is force-removed at
    teardown, whatever the test's outcome.
    """
    factory = ContainerFactory(docker_client, bench.images, gpu, request.node.name)
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
