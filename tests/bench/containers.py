"""The container factory behind the ``make_container`` fixture."""

from __future__ import annotations

import contextlib
import re
import secrets
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from tests.bench.gpu import GpuController
from tests.bench.images import BuiltImage

#: Every bench container carries this label (value: the test's name prefix).
BENCH_LABEL = "gpuwatchd-bench.test"
MODES = ("normal", "tuner_fault", "history")


class ContainerFactory:
    """Starts bench containers for one test and removes every one of them at :meth:`cleanup`.

    Containers always run with ``network_mode="none"``; their names start
    with a prefix unique to the test.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        images: dict[str, BuiltImage],
        gpu: GpuController,
        test_name: str,
    ) -> None:
        """Binds the factory to an engine, the bench images and a GPU world."""
        self.client = client
        self.images = images
        self.gpu = gpu
        slug = re.sub(r"[^a-zA-Z0-9_.-]+", "-", test_name).strip("-.")[:40]
        self.prefix = f"gwd-{slug}-{secrets.token_hex(2)}"
        self._created: list[tuple[docker.DockerClient, str]] = []
        self._count = 0

    def __call__(
        self,
        image: str = "konomi",
        *,
        name: str | None = None,
        mode: str = "normal",
        gpu: bool = True,
        labels: dict[str, str] | None = None,
        environment: dict[str, str] | None = None,
        client: docker.DockerClient | None = None,
        **run_kwargs: Any,
    ) -> Container:
        """Starts a container and returns it (running, detached).

        ``image``: "konomi", "nosmi", or any tag.  ``name`` is appended to the
        test's prefix.  ``mode`` sets WORKLOAD_MODE.  ``gpu`` gives it the
        simulated GPU (without nvidia-smi for "nosmi").  ``client`` starts it
        on another engine (the private one).  Other kwargs go to
        ``containers.run`` and win over the defaults.

        Raises:
            ValueError: for an unknown mode.
            docker.errors.DockerException: when Docker refuses the container.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        engine = client or self.client
        self._count += 1
        full_name = f"{self.prefix}-{name or self._count}"
        tag = self.images[image].tag if image in self.images else image
        kwargs: dict[str, Any] = {}
        env: dict[str, str] = {"WORKLOAD_MODE": mode}
        if gpu:
            gpu_kwargs = self.gpu.run_kwargs(smi=image != "nosmi")
            env.update(gpu_kwargs.pop("environment"))
            kwargs.update(gpu_kwargs)
        env.update(environment or {})
        kwargs.update(
            detach=True,
            name=full_name,
            network_mode="none",
            labels={BENCH_LABEL: self.prefix, **(labels or {})},
            environment=env,
        )
        kwargs.update(run_kwargs)
        # Recorded before run(): a container created but not started is removed too.
        self._created.append((engine, full_name))
        container: Container = engine.containers.run(tag, **kwargs)
        return container

    def cleanup(self) -> None:
        """Force-removes every container this factory created (missing ones are fine)."""
        for engine, name in reversed(self._created):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError, OSError):
                engine.containers.get(name).remove(force=True, v=True)
        self._created.clear()
