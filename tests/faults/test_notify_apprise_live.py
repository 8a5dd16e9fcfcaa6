"""Apprise notifications from the real daemon healing the field report's fault.

The real daemon, the real Docker engine and the stand-in driver: persistence goes
off, the driver idles, ER-05 appears, gpuwatchd restarts the container, and the
loopback servers behind ``json://`` and ``ntfy://`` URLs receive the short human
message. A third URL, with a token in it, points where nobody listens: it becomes
``notify_failed``, and the token appears nowhere in what the daemon writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from docker.models.containers import Container

from tests.bench import ONAIR_LINE, log_lines, wait_for
from tests.bench.gpu import GpuController
from tests.faults.hostile import HostileServer, answer, free_port
from tests.live.daemon_process import DaemonProcess

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(180)]

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
TOKEN = "tk_Zq8X3vN7pL2mR9wQ4sT6"


def messages(server: HostileServer) -> list[dict[str, Any]]:
    out = []
    for request in list(server.requests):
        document = json.loads(request.partition(b"\r\n\r\n")[2])
        assert isinstance(document, dict)
        out.append(document)
    return out


def restarted_message(server: HostileServer) -> dict[str, Any] | None:
    for document in messages(server):
        if str(document.get("title", "")).startswith("gpuwatchd: restarted "):
            return document
    return None


def test_a_healed_fault_reaches_ntfy_and_json_urls_and_no_token_leaks(
    gpu: GpuController,
    make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess],
    watched: dict[str, str],
) -> None:
    json_server = HostileServer(answer(OK))
    ntfy_server = HostileServer(answer(OK))
    nobody = free_port()
    try:
        konomi = make_container("konomi", labels=watched)
        wait_for(lambda: ONAIR_LINE in "\n".join(log_lines(konomi)), 20,
                 message="workload healthy")
        daemon = start_daemon({"notify": {"urls": [
            f"json://127.0.0.1:{json_server.port}/hook/{TOKEN}",
            f"ntfy://127.0.0.1:{ntfy_server.port}/gpu-{TOKEN}",
            f"json://admin:{TOKEN}@127.0.0.1:{nobody}/{TOKEN}",
        ], "timeout": "20s"}})
        daemon.wait_for("watch_set_changed", container=konomi.name, timeout=20)
        daemon.wait_for("gpu_persistence_enabled", timeout=20)
        gpu.set_persistence(False)
        assert gpu.idle_driver()

        daemon.wait_for("container_restarted", container=konomi.name, timeout=30)
        wait_for(lambda: restarted_message(json_server) is not None
                 and restarted_message(ntfy_server) is not None, 60,
                 message="the restart notified through both URLs")
        for server in (json_server, ntfy_server):
            document = restarted_message(server)
            assert document is not None
            assert document["title"] == f"gpuwatchd: restarted {konomi.name} (persistence_off)"
            cause, evidence, for_good = str(document["message"]).split("\n")
            assert "persistence mode was off" in cause
            assert evidence.startswith("Evidence: ") and "restart 1 of 3" in evidence
            assert for_good.startswith("For good: ") and "--persistence-mode" in for_good
        assert messages(ntfy_server)[0]["topic"] == f"gpu-{TOKEN}"

        failed = daemon.wait_for("notify_failed", timeout=60)
        assert str(failed["error"]).startswith("container_restarted: apprise urls[2] (json://)")
        daemon.stop()
        written = json.dumps(daemon.records) + "\n".join(daemon.other_lines)
        assert TOKEN not in written
        assert "127.0.0.1" not in written  # nor the host of any URL
        assert not [line for line in daemon.other_lines if "Traceback" in line]
    finally:
        json_server.close()
        ntfy_server.close()
