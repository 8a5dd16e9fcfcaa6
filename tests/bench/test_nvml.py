"""The stand-in NVML library as the real pynvml sees it (no Docker needed).

pynvml loads the library once per process, so each check runs pynvml in a
subprocess with the GPU world's environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from tests.bench import GpuController

PRELUDE = """
import json, pynvml
def err(exc):
    return {"error": type(exc).__name__, "value": exc.value, "text": str(exc)}
out = {}
"""


def run_pynvml(gpu: GpuController, body: str, stdin: str | None = None) -> dict[str, Any]:
    """Runs ``body`` (which fills ``out``) under pynvml against ``gpu``; returns ``out``."""
    code = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **gpu.env()},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def test_pynvml_answers_every_query(gpu: GpuController) -> None:
    """Every query the daemon may make answers through the stand-in, with two GPUs."""
    gpu.set_gpu_count(2)
    out = run_pynvml(
        gpu,
        """
        pynvml.nvmlInit()
        out["driver"] = pynvml.nvmlSystemGetDriverVersion()
        out["nvml"] = pynvml.nvmlSystemGetNVMLVersion()
        out["cuda"] = pynvml.nvmlSystemGetCudaDriverVersion()
        out["cuda_v2"] = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        out["count"] = pynvml.nvmlDeviceGetCount()
        gpus = []
        for i in range(out["count"]):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            by_uuid = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            pci = pynvml.nvmlDeviceGetPciInfo(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            mem2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
            util = pynvml.nvmlDeviceGetUtilizationRates(h)
            gpus.append({
                "index": pynvml.nvmlDeviceGetIndex(h),
                "index_by_uuid": pynvml.nvmlDeviceGetIndex(by_uuid),
                "name": pynvml.nvmlDeviceGetName(h),
                "uuid": uuid,
                "serial": pynvml.nvmlDeviceGetSerial(h),
                "bus_id": pci.busId if isinstance(pci.busId, str) else pci.busId.decode(),
                "minor": pynvml.nvmlDeviceGetMinorNumber(h),
                "persistence": pynvml.nvmlDeviceGetPersistenceMode(h),
                "mem": [mem.total, mem.used, mem.free],
                "mem2_total": mem2.total,
                "temp": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
                "util": [util.gpu, util.memory],
            })
        out["gpus"] = gpus
        h1 = pynvml.nvmlDeviceGetHandleByIndex(1)
        pynvml.nvmlDeviceSetPersistenceMode(h1, pynvml.NVML_FEATURE_ENABLED)
        out["after_set"] = pynvml.nvmlDeviceGetPersistenceMode(h1)
        pynvml.nvmlShutdown()
        """,
    )
    assert out["driver"] == "535.274.02"
    assert out["nvml"].startswith("12.535")
    assert out["cuda"] == out["cuda_v2"] == 12020
    assert out["count"] == 2
    first, second = out["gpus"]
    assert first["name"] == "NVIDIA GeForce GTX 1080 Ti"
    assert first["uuid"].startswith("GPU-") and first["uuid"] != second["uuid"]
    assert [first["index"], second["index"]] == [0, 1]
    assert [first["index_by_uuid"], second["index_by_uuid"]] == [0, 1]
    assert [first["bus_id"], second["bus_id"]] == ["00000000:01:00.0", "00000000:02:00.0"]
    assert first["minor"] == 0 and second["minor"] == 1
    assert first["persistence"] == 0
    total, used, free = first["mem"]
    assert total == first["mem2_total"] == 11264 * 2**20 and used + free == total
    assert first["temp"] > 0 and first["util"] == [0, 0]
    assert out["after_set"] == 1
    assert gpu.persistence() == [False, True]
    sets = gpu.calls("nvmlDeviceSetPersistenceMode")
    assert [(c.args, c.rc) for c in sets] == [({"index": "1", "mode": "1"}, 0)]
    assert gpu.calls("nvmlInitWithFlags")[0].args == {"flags": "0"}
    assert gpu.calls("nvmlShutdown")


def test_state_is_reread_on_every_call(gpu: GpuController) -> None:
    """A change made while a process holds NVML open is seen by its next call."""
    body = """
    import sys
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    before = pynvml.nvmlDeviceGetPersistenceMode(h)
    print("ready", flush=True)
    sys.stdin.readline()
    out["modes"] = [before, pynvml.nvmlDeviceGetPersistenceMode(h)]
    """
    code = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    with subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, **gpu.env()},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        gpu.set_persistence(True)
        stdout, _ = proc.communicate("go\n", timeout=60)
    assert json.loads(stdout.splitlines()[-1])["modes"] == [0, 1]


@pytest.mark.parametrize(
    ("setup", "error", "value"),
    [
        (lambda g: g.set_driver_loaded(False), "NVMLError_DriverNotLoaded", 9),
        (lambda g: g.set_version_mismatch(True), "NVMLError_LibRmVersionMismatch", 18),
        (lambda g: g.set_forced_error(999), "NVMLError_Unknown", 999),
    ],
    ids=["driver-not-loaded", "version-mismatch", "unknown"],
)
def test_init_errors_map_to_pynvml_classes(
    gpu: GpuController, setup: Any, error: str, value: int
) -> None:
    """Each init failure reaches pynvml as its own exception class."""
    setup(gpu)
    out = run_pynvml(
        gpu,
        """
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            out = err(exc)
        """,
    )
    assert (out["error"], out["value"]) == (error, value)


def test_gpu_lost_maps_to_gpu_is_lost(gpu: GpuController) -> None:
    """A lost GPU: init works, its handle answers NVMLError_GpuIsLost."""
    gpu.set_gpu_lost(True)
    out = run_pynvml(
        gpu,
        """
        pynvml.nvmlInit()
        out["count"] = pynvml.nvmlDeviceGetCount()
        try:
            pynvml.nvmlDeviceGetHandleByIndex(0)
        except pynvml.NVMLError as exc:
            out["handle"] = err(exc)
        """,
    )
    assert out["count"] == 1
    assert out["handle"]["error"] == "NVMLError_GpuIsLost"
    assert out["handle"]["text"] == "GPU is lost"


def test_set_not_permitted_maps_to_no_permission(gpu: GpuController) -> None:
    """Setting persistence when not permitted: NVMLError_NoPermission, state unchanged."""
    gpu.set_set_permitted(False)
    out = run_pynvml(
        gpu,
        """
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        try:
            pynvml.nvmlDeviceSetPersistenceMode(h, 1)
        except pynvml.NVMLError as exc:
            out = err(exc)
        """,
    )
    assert out["error"] == "NVMLError_NoPermission"
    assert out["text"] == "Insufficient Permissions"
    assert gpu.persistence() == [False]
    assert [c.rc for c in gpu.calls("nvmlDeviceSetPersistenceMode")] == [4]


def test_failure_during_a_session_reaches_open_handles(gpu: GpuController) -> None:
    """A driver unloaded after init fails the next call of a process that holds NVML open."""
    body = """
    import sys
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        pynvml.nvmlDeviceGetPersistenceMode(h)
    except pynvml.NVMLError as exc:
        out = err(exc)
    """
    code = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    with subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, **gpu.env()},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        gpu.set_driver_loaded(False)
        stdout, _ = proc.communicate("go\n", timeout=60)
    assert json.loads(stdout.splitlines()[-1])["error"] == "NVMLError_DriverNotLoaded"


def test_idling_never_affects_the_host(gpu: GpuController) -> None:
    """The host records no driver session: idling with persistence off leaves it working."""
    assert gpu.idle_driver() is True
    assert gpu.session() == 2
    out = run_pynvml(gpu, "pynvml.nvmlInit(); out['n'] = pynvml.nvmlDeviceGetCount()")
    assert out == {"n": 1}


def test_idling_with_persistence_on_changes_nothing(gpu: GpuController) -> None:
    """With persistence on everywhere, the driver session survives an idle."""
    gpu.set_gpu_count(2)
    gpu.set_persistence(True)
    assert gpu.idle_driver() is False
    assert gpu.session() == 1
    gpu.set_persistence(False, index=1)
    assert gpu.idle_driver() is True


def test_init_delay_slows_init(gpu: GpuController) -> None:
    """The init-delay knob makes NVML init take at least that long."""
    gpu.set_init_delay(300)
    start = time.monotonic()
    run_pynvml(gpu, "pynvml.nvmlInit()")
    assert time.monotonic() - start >= 0.3


def test_calls_can_be_cleared(gpu: GpuController) -> None:
    """clear_calls() empties the log; later calls are logged again."""
    run_pynvml(gpu, "pynvml.nvmlInit()")
    assert gpu.calls()
    gpu.clear_calls()
    assert gpu.calls() == []
    run_pynvml(gpu, "pynvml.nvmlInit()")
    assert [c.function for c in gpu.calls()] == ["nvmlInitWithFlags"]
