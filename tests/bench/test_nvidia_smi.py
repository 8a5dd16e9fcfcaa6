"""The stand-in nvidia-smi on the host: the real tool's texts and exit statuses."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.bench import GpuController


def smi(gpu: GpuController, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs the stand-in nvidia-smi (found through PATH from gpu.env())."""
    return subprocess.run(
        ["nvidia-smi", *args],
        env={**os.environ, **gpu.env()},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_list_query_and_status_table(gpu: GpuController) -> None:
    """-L lists GPUs, -q shows persistence mode, no arguments shows the status table."""
    gpu.set_gpu_count(2)
    listed = smi(gpu, "-L")
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("GPU 0: NVIDIA GeForce GTX 1080 Ti (UUID: GPU-")
    assert lines[1].startswith("GPU 1: NVIDIA GeForce GTX 1080 Ti (UUID: GPU-")
    query = smi(gpu, "-q")
    assert "    Persistence Mode                      : Disabled" in query.stdout
    table = smi(gpu)
    assert table.returncode == 0
    assert "Driver Version: 535.274.02" in table.stdout
    assert "NVIDIA GeForce GTX 1080 Ti     Off | 00000000:01:00.0" in table.stdout


def test_set_persistence_with_the_real_messages(gpu: GpuController) -> None:
    """-pm 1 enables with the real messages and is visible to every later reader."""
    on = smi(gpu, "-pm", "1")
    assert on.returncode == 0
    assert on.stdout.splitlines() == [
        "Enabled persistence mode for GPU 00000000:01:00.0.",
        "All done.",
    ]
    assert gpu.persistence() == [True]
    assert "Persistence Mode                      : Enabled" in smi(gpu, "-q").stdout
    again = smi(gpu, "-pm", "1")
    assert again.stdout.startswith("Persistence mode is already Enabled for GPU 00000000:01:00.0.")
    off = smi(gpu, "-pm", "0")
    assert off.stdout.startswith("Disabled persistence mode for GPU 00000000:01:00.0.")
    assert gpu.persistence() == [False]


@pytest.mark.parametrize(
    ("setup", "args", "text", "status"),
    [
        (
            lambda g: g.set_forced_error(999),
            ["-L"],
            "Failed to initialize NVML: Unknown Error",
            255,
        ),
        (
            lambda g: g.set_driver_loaded(False),
            ["-L"],
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
            "Make sure that the latest NVIDIA driver is installed and running.",
            9,
        ),
        (
            lambda g: g.set_version_mismatch(True),
            [],
            "Failed to initialize NVML: Driver/library version mismatch",
            18,
        ),
        (
            lambda g: g.set_gpu_lost(True),
            ["-L"],
            "Unable to determine the device handle for GPU0: 0000:01:00.0: GPU is lost.  "
            "Reboot the system to recover this GPU",
            15,
        ),
        (
            lambda g: g.set_set_permitted(False),
            ["-pm", "1"],
            "Unable to set persistence mode for GPU 00000000:01:00.0: Insufficient Permissions",
            4,
        ),
    ],
    ids=["unknown", "driver-not-loaded", "version-mismatch", "gpu-lost", "no-permission"],
)
def test_failures_print_real_texts_and_statuses(
    gpu: GpuController, setup: object, args: list[str], text: str, status: int
) -> None:
    """Each failure prints the real tool's first line and exits with its status."""
    setup(gpu)  # type: ignore[operator]
    result = smi(gpu, *args)
    assert result.stdout.splitlines()[0] == text
    assert result.returncode == status


def test_bad_arguments_exit_2(gpu: GpuController) -> None:
    """Unknown arguments: the real usage error, status 2, no NVML call."""
    result = smi(gpu, "--bogus")
    assert result.returncode == 2
    assert result.stdout.startswith("Invalid combination of input arguments.")
    assert gpu.calls() == []
