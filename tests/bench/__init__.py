"""The test bench: a real Docker engine and a simulated NVIDIA driver.

Public API (also reached through the fixtures in ``tests/conftest.py``):

- :class:`Bench` and :func:`build_bench`: the built stand-ins and images.
- :class:`GpuController` and :class:`CallRecord`: the simulated driver.
- :class:`ContainerFactory`: what ``make_container`` is.
- :class:`PrivateEngine`: a second dockerd that tests may stop and start.
- :func:`wait_for`, :func:`wait_for_log`, :func:`log_lines`, :class:`WaitTimeout`.
- :data:`ER05_LINE`, :data:`ONAIR_LINE`: the workload's log lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import docker

from tests.bench.containers import BENCH_LABEL, ContainerFactory
from tests.bench.engine import EngineError, PrivateEngine
from tests.bench.gpu import CallRecord, GpuController
from tests.bench.images import BUILD_DIR, BuiltImage, build_native, build_tars, ensure_imported
from tests.bench.waiting import WaitTimeout, log_lines, wait_for, wait_for_log

#: The exact line the KonomiTV-like workload logs when an encode task fails.
ER05_LINE = (
    "[INFO] [Live: gr041-1080p] [Status: Restart] "
    "チューナーとの接続が切断されました。エンコードタスクを再起動しています… (ER-05)"
)
#: The line it logs when an encode task starts normally.
ONAIR_LINE = "[INFO] [Live: gr041-1080p] [Status: ONAir] ストリーミングを開始しました。"


@dataclass(frozen=True)
class Bench:
    """The built bench: where the stand-ins are and which images the engine has."""

    lib_dir: Path  #: holds libnvidia-ml.so.1 (for LD_LIBRARY_PATH)
    nvidia_smi: Path  #: the stand-in nvidia-smi binary
    images: dict[str, BuiltImage]  #: by kind: "konomi", "nosmi"

    @property
    def lib(self) -> Path:
        """The stand-in libnvidia-ml.so.1."""
        return self.lib_dir / "libnvidia-ml.so.1"

    @property
    def konomi_image(self) -> str:
        """Tag of the KonomiTV-like image."""
        return self.images["konomi"].tag

    @property
    def nosmi_image(self) -> str:
        """Tag of the image without nvidia-smi."""
        return self.images["nosmi"].tag


def build_bench(client: docker.DockerClient | None, build: Path = BUILD_DIR) -> Bench:
    """Builds the stand-ins (make); with a ``client``, also the image tars, imported if missing.

    Raises:
        RuntimeError: when the build fails.
        docker.errors.DockerException: when the engine refuses an import.
    """
    build_native(build)
    images: dict[str, BuiltImage] = {}
    if client is not None:
        images = build_tars(build=build)
        ensure_imported(client, images)
    return Bench(build / "lib", build / "bin" / "nvidia-smi", images)


__all__ = [
    "BENCH_LABEL",
    "ER05_LINE",
    "ONAIR_LINE",
    "Bench",
    "BuiltImage",
    "CallRecord",
    "ContainerFactory",
    "EngineError",
    "GpuController",
    "PrivateEngine",
    "WaitTimeout",
    "build_bench",
    "log_lines",
    "wait_for",
    "wait_for_log",
]
