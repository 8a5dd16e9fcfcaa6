"""A control-request fuzz run against the real daemon: a hostile local user with
access to the socket gets a one-line answer to anything, and the daemon keeps
serving and writes no traceback."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from gpuwatchd.observers.control import socket_path
from tests.bench import wait_for
from tests.live.daemon_process import DaemonProcess
from tests.unit.test_input_fuzz import request_lines


def ask(path: Path, line: bytes) -> bytes:
    """Send ``line`` (then EOF) and return everything the daemon answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(str(path))
        sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_control_fuzz_against_the_real_daemon(
    start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """1,000 hostile request lines: each answered with one JSON line, ``ok`` or a
    one-line error; afterwards the daemon answers status and wrote nothing but
    records, none of them internal_error."""
    daemon = start_daemon(
        {"watch": {"containers": ["KonomiTV"]}},
        env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"},
    )
    daemon.wait_for("daemon_started", timeout=30)
    path = socket_path(tmp_path / "run")
    wait_for(lambda: path.exists(), 30, 0.2, message="the control socket exists")

    @settings(max_examples=1000, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(request_lines())
    def one_request(line: bytes) -> None:
        answer = ask(path, line + b"\n")
        assert answer.endswith(b"\n") and answer.count(b"\n") == 1, answer
        document = json.loads(answer)
        assert isinstance(document, dict) and isinstance(document["ok"], bool), document
        if not document["ok"]:
            assert isinstance(document["error"], str) and "\n" not in document["error"]

    one_request()
    status = json.loads(ask(path, b'{"command": "status"}\n'))
    assert status["ok"] is True and status["result"]["pid"] == daemon.proc.pid
    assert daemon.proc.poll() is None
    assert not daemon.find("internal_error")
    assert daemon.other_lines == []
