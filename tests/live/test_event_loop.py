"""The daemon never blocks its event loop: checked with blockbuster on a real heal.

The daemon runs in this process (not as a subprocess) so blockbuster sees every
call the event loop thread makes while it watches, detects, restarts and
verifies a container on the real engine with the stand-in driver.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from blockbuster import BlockBuster
from docker.models.containers import Container

from gpuwatchd.config import (
    Config,
    DaemonConfig,
    MetricsConfig,
    NotifyConfig,
    ProbeConfig,
    WatchConfig,
)
from gpuwatchd.daemon import Daemon
from gpuwatchd.model.records import Record
from tests.bench import Bench, wait_for
from tests.bench.gpu import GpuController

pytestmark = [pytest.mark.docker, pytest.mark.slow]


# The docker SDK can leave the socket of a finished exec to the garbage
# collector; the daemon does not care, but this test runs the daemon in the
# test process, where pytest turns that ResourceWarning into an error. The
# garbage is collected inside this test so it cannot fail a later one.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_heal_never_blocks_the_event_loop(
    bench: Bench, gpu: GpuController, make_container: Callable[..., Container],
    watched: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    blockbuster: BlockBuster,
) -> None:
    """Watch, detect, restart and verify with blockbuster active: no blocking call
    runs on the loop (pynvml and the docker SDK stay on worker threads)."""
    # The stand-in driver, loaded by path first so pynvml's dlopen of the
    # soname finds it (LD_LIBRARY_PATH is only read at process start).
    for key, value in gpu.env().items():
        if key != "LD_LIBRARY_PATH":
            monkeypatch.setenv(key, value)
    ctypes.CDLL(str(bench.lib), mode=ctypes.RTLD_GLOBAL)
    await asyncio.to_thread(gpu.set_persistence, True)
    konomi = await asyncio.to_thread(make_container, "konomi", labels=watched)

    # Notifications and metrics on too: their code runs on the loop as well.
    notified = tmp_path / "notified.json"
    hook = tmp_path / "hook.sh"
    await asyncio.to_thread(_write_hook, hook, notified)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = Config(
        daemon=DaemonConfig(state_dir=tmp_path / "state", runtime_dir=tmp_path / "run"),
        probe=ProbeConfig(start_grace=1.0),
        watch=WatchConfig(labels=tuple(f"{k}={v}" for k, v in watched.items())),
        notify=NotifyConfig(command=(str(hook),)),
        metrics=MetricsConfig(listen=f"127.0.0.1:{port}"),
    )
    daemon = Daemon(config)
    seen: list[Record] = []
    daemon.record_listeners.append(seen.append)

    async def record(event: str, within: float) -> Record:
        for _ in range(int(within * 10)):
            found = [r for r in seen if r.event == event and r.get("container") == konomi.name]
            if found:
                return found[0]
            await asyncio.sleep(0.1)
        raise AssertionError(f"no {event}; saw {[(r.event, dict(r.fields)) for r in seen]}")

    running = asyncio.create_task(daemon.run())
    try:
        await record("watch_set_changed", 20)
        await asyncio.sleep(1.5)  # past the start grace
        await asyncio.to_thread(gpu.revoke_device_access, konomi)
        restarted = await record("container_restarted", 30)
        assert restarted.get("cause") == "device_access_lost"
        await record("container_recovered", 60)
        scrape = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        assert "gpuwatchd_restarts_total" in scrape
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(running, 60) == 0
        del daemon
        gc.collect()
    await asyncio.to_thread(wait_for, lambda: os.path.exists(tmp_path / "state"), 5)
    text = await asyncio.to_thread(notified.read_text)
    assert '"container_restarted"' in text


def _write_hook(hook: Path, notified: Path) -> None:
    hook.write_text(f"#!/bin/sh\ncat >> {notified}\n")
    hook.chmod(0o755)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())
