"""Hostile peers for notification tests: raw HTTP servers on loopback that answer
with whatever bytes a test gives them, and helpers to see whether processes live.

The servers speak raw sockets on purpose: a well-behaved HTTP library cannot
send a bad status line, 101 headers or a response one byte at a time.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

Responder = Callable[[socket.socket], None]


class HostileServer:
    """Accepts connections on 127.0.0.1, reads one request, then hands the socket to
    ``respond``. Counts connections and requests; notes when a client hangs up while
    the responder is still sending (``client_gone``)."""

    def __init__(self, respond: Responder) -> None:
        self._respond = respond
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self.client_gone = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                self.requests.append(read_request(conn))
                self._respond(conn)
            except (BrokenPipeError, ConnectionResetError):
                self.client_gone.set()
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._accepter.join(2)


def read_request(conn: socket.socket) -> bytes:
    """One HTTP request: the head, then Content-Length bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def answer(raw: bytes) -> Responder:
    """Send ``raw`` and close."""
    def respond(conn: socket.socket) -> None:
        conn.sendall(raw)
    return respond


def trickle(head: bytes = b"HTTP/1.1 200 OK\r\nX-Slow: ", every: float = 0.5,
            forever: float = 600.0) -> Responder:
    """Send ``head``, then one byte every ``every`` seconds until the client hangs up."""
    def respond(conn: socket.socket) -> None:
        conn.sendall(head)
        end = time.monotonic() + forever
        while time.monotonic() < end:
            time.sleep(every)
            conn.sendall(b"x")
    return respond


def free_port() -> int:
    """A loopback port nobody listens on (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def pids_in(directory: Path) -> list[int]:
    """The PIDs that test commands wrote, one file per process, into ``directory``."""
    out = []
    for p in directory.iterdir():
        with contextlib.suppress(ValueError):
            out.append(int(p.read_text()))
    return out
