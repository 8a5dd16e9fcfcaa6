"""The benchmark command, in its tiniest configuration: it runs and yields every figure.

No figure is held to a target here (benchmarks never fail a test because a
machine is slow); the test proves that ``scripts/bench`` works end to end:
the real daemon, the real engine, the stand-in driver, every measurement.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from bench.harness import LAB_LABEL
from bench.run import FIGURE_KEYS, lookup

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_benchmark_run_produces_every_figure_and_cleans_up(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """``python -m bench.run --tiny`` exits 0, its JSON holds a number for every figure
    key, the table names every item, and no benchmark container is left behind."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--tiny", "--quiet", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=540, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["errors"] == {}
    missing = []
    for key in FIGURE_KEYS:
        try:
            value = lookup(doc, key)
        except (KeyError, IndexError):
            missing.append(key)
            continue
        if value is None:
            missing.append(key)
    assert not missing, f"figures without a value: {missing}"
    assert isinstance(doc["machine"]["cpus"], int)
    assert doc["latency"]["missed"] == 0
    assert doc["scale"]["levels"][0]["missed"] == 0
    for item in ("1. log detection", "2. time to recovery", "3. silent loss", "4. idle CPU",
                 "5. 3x20 lines/s", "6. start → READY=1"):
        assert item in proc.stdout
    for run_id in doc["run_ids"]:
        left = docker_client.containers.list(all=True, filters={"label": f"{LAB_LABEL}={run_id}"})
        assert left == [], f"left behind by run {run_id}: {[c.name for c in left]}"
