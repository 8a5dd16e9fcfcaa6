"""A private Docker engine, for tests that must stop and start an engine.

The shared engine must never be stopped; a private ``dockerd`` has its own
socket, ``--data-root``, ``--exec-root`` and ``--pidfile`` (and so its own
managed containerd under the exec root), and is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import docker.errors

from tests.bench.images import BuiltImage, ensure_imported

#: The API version to speak: dockerd 20.10's.  Fixed, because "auto" asks the
#: engine at client creation, before a starting engine can answer.
API_VERSION = "1.41"


class EngineError(RuntimeError):
    """The private engine did not start or stop; the message carries its log tail."""


class PrivateEngine:
    """One private ``dockerd``: ``stop()`` and ``start()`` keep its data root (containers survive).

    The root is a short directory under /tmp: a unix socket path must stay
    under 108 bytes.
    """

    def __init__(self, images: dict[str, BuiltImage] | None = None) -> None:
        """Prepares the directories; call :meth:`start` to run the engine."""
        self.root = Path(tempfile.mkdtemp(prefix="gwd-eng-", dir="/tmp"))
        self.socket_path = self.root / "docker.sock"
        self.socket_url = f"unix://{self.socket_path}"
        self.data_root = self.root / "data"
        self.exec_root = self.root / "exec"
        self.pidfile = self.root / "docker.pid"
        self.log_path = self.root / "dockerd.log"
        self.config_file = self.root / "daemon.json"
        # An empty config: /etc/docker/daemon.json may name hosts or roots of its own.
        self.config_file.write_text(json.dumps({}))
        self._images = images or {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._clients: list[docker.DockerClient] = []

    @property
    def pid(self) -> int | None:
        """The dockerd PID while it runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def start(self, timeout: float = 60) -> None:
        """Starts dockerd (idempotent) and waits until it answers; imports the bench images.

        Raises:
            EngineError: when dockerd exits or does not answer within ``timeout``.
        """
        if self.pid is not None:
            return
        argv = [
            "dockerd",
            f"--host={self.socket_url}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            f"--config-file={self.config_file}",
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
        ]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self._proc.poll() is not None:
                raise EngineError(
                    f"private dockerd exited with {self._proc.returncode}:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"private dockerd did not answer:\n{self._log_tail()}")
            time.sleep(0.1)
        client = docker.DockerClient(base_url=self.socket_url, version=API_VERSION, timeout=60)
        try:
            ensure_imported(client, self._images)
        finally:
            client.close()

    def answers(self) -> bool:
        """True when the engine answers ``GET /_ping`` on its socket now.

        A raw socket, closed in every case: the SDK leaks the socket of a
        refused connection, which filterwarnings=error turns into a failure.
        """
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(self.socket_path))
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.startswith(b"HTTP/1.") and b" 200 " in reply

    def stop(self, timeout: float = 30) -> None:
        """Stops dockerd with SIGTERM (SIGKILL after ``timeout``) and waits for it (idempotent)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Its own process group (start_new_session): the managed containerd too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def client(self) -> docker.DockerClient:
        """A new SDK client to this engine (closed at :meth:`close`)."""
        client = docker.DockerClient(base_url=self.socket_url, version=API_VERSION, timeout=60)
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Stops the engine, closes the clients and removes its directories."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self.pid is not None:
            # Remove containers first so no shim or mount outlives the engine.
            with contextlib.suppress(docker.errors.DockerException, OSError):
                cleanup = docker.DockerClient(
                    base_url=self.socket_url, version=API_VERSION, timeout=30
                )
                try:
                    for c in cleanup.containers.list(all=True):
                        c.remove(force=True)
                finally:
                    cleanup.close()
        self.stop()
        self._unmount_below(self.root)
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _unmount_below(root: Path) -> None:
        """Lazily unmounts anything still mounted under ``root`` (deepest first)."""
        prefix = f"{root}/"
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
        for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)

    def __repr__(self) -> str:
        return f"PrivateEngine({self.socket_url}, pid={self.pid})"
