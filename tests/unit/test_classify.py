"""Probe-output classification, table-driven with the tools' real texts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuwatchd.core.classify import MAX_OUTPUT_CHARS, classify_probe, summarize_output
from gpuwatchd.model.vocabulary import ProbeResult

R = ProbeResult

NVML_UNKNOWN = "Failed to initialize NVML: Unknown Error\n"
NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n\n"
)
MISMATCH = (
    "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 535.54\n"
)
GPU_LOST = (
    "Unable to determine the device handle for GPU0: 0000:01:00.0: GPU is lost.  "
    "Reboot the system to recover this GPU\n"
)
OFF_THE_BUS = "NVRM: GPU 0000:01:00.0: GPU has fallen off the bus.\n"
HANDLE_UNKNOWN = "Unable to determine the device handle for GPU0: Unknown Error\n"
NO_DEVICES = "No devices were found\n"
NO_PERMISSION = "Failed to initialize NVML: Insufficient Permissions\n"
NO_LIBRARY = (
    "NVIDIA-SMI couldn't find libnvidia-ml.so library in your system. Please make sure that "
    "the NVIDIA Display Driver is properly installed and present in your system.\n"
    "Please also try adding directory that contains libnvidia-ml.so to your system PATH.\n"
)
HEALTHY = "GPU 0: NVIDIA GeForce RTX 3060 (UUID: GPU-5a8e0c47-2b4e-5f3c-9f0e-7c6d3a1b2c3d)\n"
OCI_NOT_FOUND = (
    "OCI runtime exec failed: exec failed: unable to start container process: exec: "
    '"nvidia-smi": executable file not found in $PATH: unknown\r\n'
)
OCI_NO_FILE = (
    "OCI runtime exec failed: exec failed: container_linux.go:380: starting container process "
    'caused: exec: "/usr/bin/nvidia-smi": stat /usr/bin/nvidia-smi: no such file or directory: '
    "unknown"
)
NOT_RUNNING = "Container 4f2c1b9e8d7a is not running"
PAUSED = "Container 4f2c1b9e8d7a is paused, unpause the container before exec"
RESTARTING = "Container 4f2c1b9e8d7a is restarting, wait until the container is running"
GONE = "No such container: 4f2c1b9e8d7a"


@pytest.mark.parametrize(
    ("exit_code", "output", "timed_out", "exec_error", "expected"),
    [
        # healthy
        (0, HEALTHY, False, None, R.OK),
        (0, b"", False, None, R.OK),
        (0, HEALTHY * 8, False, None, R.OK),
        # the field report's failure, with nvidia-smi's exit status and without
        (255, NVML_UNKNOWN, False, None, R.NVML_UNKNOWN_ERROR),
        (0, NVML_UNKNOWN, False, None, R.NVML_UNKNOWN_ERROR),
        (1, NVML_UNKNOWN.encode(), False, None, R.NVML_UNKNOWN_ERROR),
        (255, HANDLE_UNKNOWN, False, None, R.NVML_UNKNOWN_ERROR),
        (6, NO_DEVICES, False, None, R.NVML_UNKNOWN_ERROR),
        (4, NO_PERMISSION, False, None, R.NVML_UNKNOWN_ERROR),
        # host-side failures: text and exit status each suffice
        (9, NO_DRIVER, False, None, R.DRIVER_NOT_LOADED),
        (1, NO_DRIVER, False, None, R.DRIVER_NOT_LOADED),
        (9, "", False, None, R.DRIVER_NOT_LOADED),
        (255, "Failed to initialize NVML: Driver Not Loaded\n", False, None, R.DRIVER_NOT_LOADED),
        (18, MISMATCH, False, None, R.VERSION_MISMATCH),
        (255, MISMATCH, False, None, R.VERSION_MISMATCH),
        (18, "", False, None, R.VERSION_MISMATCH),
        (15, GPU_LOST, False, None, R.GPU_LOST),
        (255, GPU_LOST, False, None, R.GPU_LOST),
        (1, OFF_THE_BUS, False, None, R.GPU_LOST),
        (15, "", False, None, R.GPU_LOST),
        # the text is the verdict even when the probe then hung
        (None, NVML_UNKNOWN, True, None, R.NVML_UNKNOWN_ERROR),
        # the probe cannot run: never a fault
        (126, OCI_NOT_FOUND, False, None, R.PROBE_UNAVAILABLE),
        (127, "", False, None, R.PROBE_UNAVAILABLE),
        (126, "", False, None, R.PROBE_UNAVAILABLE),
        (1, OCI_NO_FILE, False, None, R.PROBE_UNAVAILABLE),
        (127, "sh: 1: nvidia-smi: not found\n", False, None, R.PROBE_UNAVAILABLE),
        (127, "bash: nvidia-smi: command not found\n", False, None, R.PROBE_UNAVAILABLE),
        (12, NO_LIBRARY, False, None, R.PROBE_UNAVAILABLE),
        (2, "Invalid combination of input arguments.\n", False, None, R.PROBE_UNAVAILABLE),
        (None, "", False, OCI_NOT_FOUND, R.PROBE_UNAVAILABLE),
        (None, "", False, OCI_NO_FILE, R.PROBE_UNAVAILABLE),
        (None, "", False, "500 Server Error: something else", R.PROBE_UNAVAILABLE),
        # no container to exec in
        (None, "", False, NOT_RUNNING, R.NOT_RUNNING),
        (None, "", False, PAUSED, R.NOT_RUNNING),
        (None, "", False, RESTARTING, R.NOT_RUNNING),
        (None, "", False, GONE, R.NOT_RUNNING),
        (1, f"Error response from daemon: {NOT_RUNNING}\n", False, None, R.NOT_RUNNING),
        # no verdict
        (None, "", True, None, R.TIMEOUT),
        (137, "", True, None, R.TIMEOUT),
        (None, "", False, None, R.TIMEOUT),
        (137, "", False, None, R.TIMEOUT),
        (143, "", False, None, R.TIMEOUT),
        (-9, "", False, None, R.TIMEOUT),
        (0, HEALTHY, True, None, R.TIMEOUT),
        # any other failure of the probe is an NVML failure (module docstring, rule 7)
        (3, "", False, None, R.NVML_UNKNOWN_ERROR),
        (255, "", False, None, R.NVML_UNKNOWN_ERROR),
        (139, "", False, None, R.NVML_UNKNOWN_ERROR),
        (-11, "", False, None, R.NVML_UNKNOWN_ERROR),
        (1, "some custom probe said no\n", False, None, R.NVML_UNKNOWN_ERROR),
        (1, "/dev/nvidia0: Permission denied\n", False, None, R.NVML_UNKNOWN_ERROR),
        # a healthy exit with "not found" words is still healthy
        (0, "model file not found, skipping\n", False, None, R.OK),
    ],
)
def test_classify_probe(
    exit_code: int | None,
    output: str | bytes,
    timed_out: bool,
    exec_error: str | None,
    expected: ProbeResult,
) -> None:
    """Each known output, exit status and exec error gets its documented result."""
    assert classify_probe(exit_code, output, timed_out=timed_out, exec_error=exec_error) is expected


def test_output_case_does_not_matter() -> None:
    """The phrases match whatever the capitalisation of a driver release."""
    assert classify_probe(1, NVML_UNKNOWN.upper()) is R.NVML_UNKNOWN_ERROR
    assert classify_probe(1, MISMATCH.lower()) is R.VERSION_MISMATCH


def test_only_the_head_of_a_huge_output_is_read() -> None:
    """A failure sentence past the cap is not seen; the exit status decides."""
    padding = "x" * MAX_OUTPUT_CHARS
    assert classify_probe(0, padding + NVML_UNKNOWN) is R.OK
    assert classify_probe(0, NVML_UNKNOWN + padding) is R.NVML_UNKNOWN_ERROR


def test_invalid_utf8_output_is_read() -> None:
    """Bytes that are not UTF-8 do not hide the sentence around them."""
    assert classify_probe(255, b"\xff\xfe" + NVML_UNKNOWN.encode()) is R.NVML_UNKNOWN_ERROR


@given(
    exit_code=st.none() | st.integers(min_value=-300, max_value=300),
    output=st.binary(max_size=300) | st.text(max_size=300),
    timed_out=st.booleans(),
    exec_error=st.none() | st.text(max_size=100),
)
def test_never_raises(
    exit_code: int | None, output: bytes | str, timed_out: bool, exec_error: str | None
) -> None:
    """Any combination gives a ProbeResult; exit 0 with nothing printed is healthy."""
    result = classify_probe(exit_code, output, timed_out=timed_out, exec_error=exec_error)
    assert isinstance(result, ProbeResult)
    if exit_code == 0 and not output and not timed_out and exec_error is None:
        assert result is R.OK


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (NVML_UNKNOWN, "Failed to initialize NVML: Unknown Error"),
        ("\n\n" + HEALTHY, HEALTHY.strip()),
        (
            "warning: something\n" + MISMATCH,
            "Failed to initialize NVML: Driver/library version mismatch",
        ),
        (OCI_NOT_FOUND.encode(), OCI_NOT_FOUND.strip()),
        ("", ""),
        ("  \n \n", ""),
    ],
)
def test_summarize_output(output: str | bytes, expected: str) -> None:
    """The summary is the line that explains the result."""
    assert summarize_output(output) == expected


def test_summarize_output_is_capped() -> None:
    """A long line is cut to the limit, with an ellipsis."""
    summary = summarize_output("y" * 500, limit=50)
    assert len(summary) == 50
    assert summary.endswith("…")
