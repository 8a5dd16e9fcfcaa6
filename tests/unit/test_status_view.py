"""`gpuwatchd status` for people: ages, times, degraded conditions, given up and paused."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from gpuwatchd.core.base import Phase
from gpuwatchd.core.views import ContainerView, CoreView, GpuView
from gpuwatchd.model.events import ContainerState
from gpuwatchd.model.vocabulary import Cause, ProbeResult
from gpuwatchd.status_view import degraded, format_age, format_until, format_when, render_status

NOW = datetime(2024, 5, 1, 12, 0, 0).timestamp()


def document(view: CoreView, **changes: Any) -> dict[str, Any]:
    doc = {"version": "9.9", "pid": 4242, "uptime": 7380.0, "dry_run": view.dry_run,
           "docker_available": True, "nvml_available": True, "status": "",
           "core": view.to_json()}
    doc.update(changes)
    return doc


def view(**changes: Any) -> CoreView:
    base: dict[str, Any] = dict(
        dry_run=False,
        gpus=(GpuView(0, "GPU-aaaa", "NVIDIA GeForce GTX 1080 Ti", True, NOW - 4, None),),
        containers=(
            ContainerView("KonomiTV", "0123456789ab", ContainerState.RUNNING, False,
                          ProbeResult.OK, NOW - 12, 1, None, None, False, None, None, None),
        ),
        nvml_unavailable=None, docker_unavailable=None, paused_all=False, paused_all_until=None,
    )
    base.update(changes)
    return CoreView(**base)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (42.9, "42s"), (303, "5m 3s"), (7800, "2h 10m"), (3 * 86400 + 4 * 3600, "3d 4h"),
     (-5, "0s")],
)
def test_format_age(seconds: float, text: str) -> None:
    assert format_age(seconds) == text


def test_format_when() -> None:
    assert format_when(None, NOW) == "never"
    assert format_when(NOW - 12, NOW) == "12s ago (11:59:48)"
    assert format_when(NOW + 60, NOW) == "in 1m 0s (12:01:00)"
    assert format_when(NOW - 2 * 86400, NOW) == "2d 0h ago (2024-04-29 12:00)"


def test_format_until() -> None:
    assert format_until(None, NOW) == "until resumed"
    assert format_until(NOW + 3600, NOW) == "until 13:00:00 (1h 0m left)"


def test_healthy_status() -> None:
    """The header, the GPU with persistence and check time, the container with its probe."""
    text = render_status(document(view()), NOW)
    lines = text.splitlines()
    assert lines[0] == "gpuwatchd 9.9 (pid 4242), up 2h 3m, mode: active"
    assert lines[1] == "degraded: no"
    gpu_row = next(line for line in lines if "GPU-aaaa" in line)
    assert "NVIDIA GeForce GTX 1080 Ti" in gpu_row
    assert " on " in gpu_row
    assert "4s ago (11:59:56)" in gpu_row
    row = next(line for line in lines if line.lstrip().startswith("KonomiTV"))
    assert row.split()[1:5] == ["ok", "12s", "ago", "(11:59:48)"]
    assert " 1 " in row
    assert row.rstrip().endswith("running")


def test_given_up_paused_remediating_and_persistence_off() -> None:
    containers = (
        ContainerView("broken", "b" * 12, ContainerState.RUNNING, False,
                      ProbeResult.NVML_UNKNOWN_ERROR, NOW - 30, 3, NOW - 60, NOW + 3540,
                      True, NOW + 1800, None, None),
        ContainerView("healing", "c" * 12, ContainerState.RUNNING, False, None, None, 1,
                      None, None, False, None, Phase.VERIFYING, Cause.PERSISTENCE_OFF),
    )
    gpus = (GpuView(0, "GPU-aaaa", "X", False, NOW - 1, NOW - 1),)
    text = render_status(document(view(containers=containers, gpus=gpus)), NOW)
    broken = next(line for line in text.splitlines() if line.lstrip().startswith("broken"))
    assert "GIVEN UP" in broken
    assert "gpuwatchd reset broken" in broken
    assert "PAUSED until 12:30:00 (30m 0s left)" in broken
    healing = next(line for line in text.splitlines() if line.lstrip().startswith("healing"))
    assert "never" in healing
    assert "remediating: verifying (cause persistence_off)" in healing
    assert "OFF" in next(line for line in text.splitlines() if "GPU-aaaa" in line)


def test_degraded_dry_run_and_pause_all() -> None:
    """Docker and NVML down, dry run and a global pause are each said plainly."""
    v = view(dry_run=True, gpus=(), containers=(), nvml_unavailable="driver_not_loaded",
             docker_unavailable="connection refused", paused_all=True, paused_all_until=None)
    doc = document(v, docker_available=False, nvml_available=False)
    assert degraded(doc) == ["Docker unavailable (connection refused)",
                             "host NVML unavailable (driver_not_loaded)"]
    text = render_status(doc, NOW)
    assert "mode: DRY RUN" in text
    assert ("degraded: Docker unavailable (connection refused); "
            "host NVML unavailable (driver_not_loaded)") in text
    assert "remediation PAUSED for every container until resumed" in text
    assert "none (see degraded)" in text
    assert "none (check [watch] in the configuration)" in text


def test_a_sparse_document_does_not_raise() -> None:
    """A document from another version, missing fields, still renders."""
    text = render_status({"core": {"containers": [{"name": "x"}], "gpus": [{}]}}, NOW)
    assert "gpuwatchd ? (pid ?)" in text
    assert text.endswith("\n")
