"""The daemon's control channel: a root-only unix socket speaking JSON lines.

One request per connection: the client writes one JSON object and a newline,
the daemon answers with one JSON object and a newline, then closes. Requests:
``{"command": "status"}``, ``{"command": "reset", "container": NAME|null}``,
``{"command": "pause", "container": NAME|null, "for": SECONDS|null}``,
``{"command": "resume", "container": NAME|null}``. Answers are
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

SOCKET_NAME = "control.sock"
#: A request larger than this is refused: the channel carries commands, not data.
MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlError(Exception):
    """The daemon answered with an error (the message is one line for people)."""


class NoDaemon(Exception):
    """No daemon answered on the control socket."""


def socket_path(runtime_dir: Path) -> Path:
    return runtime_dir / SOCKET_NAME


class ControlServer:
    """Serves requests on ``runtime_dir/control.sock`` (mode 0600)."""

    def __init__(self, runtime_dir: Path, handler: Handler) -> None:
        self.path = socket_path(runtime_dir)
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window for others
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old_umask)

    def _prepare(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._remove()  # a stale socket from a crashed daemon

    def _remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await asyncio.to_thread(self._remove)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=5.0)
                if len(line) > MAX_REQUEST:
                    raise ValueError("request too large")
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("request must be a JSON object")
                answer: dict[str, Any] = {"ok": True, "result": await self._handler(request)}
            except ControlError as exc:
                answer = {"ok": False, "error": str(exc)}
            except (ValueError, asyncio.TimeoutError) as exc:  # asyncio's own before 3.11
                answer = {"ok": False, "error": f"bad request: {exc}"}
            writer.write(json.dumps(answer, default=str).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the client went away: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


def request(runtime_dir: Path, payload: dict[str, Any], timeout: float = 10.0) -> Any:
    """Send one request to the running daemon and return its result (blocking).

    Raises:
        NoDaemon: nothing listens on the socket (or it is not ours to open).
        ControlError: the daemon refused the request.
    """
    path = socket_path(runtime_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NoDaemon(f"no gpuwatchd daemon answered on {path}") from exc
        except PermissionError as exc:
            raise NoDaemon(f"permission denied on {path} (run as root)") from exc
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError as exc:
        raise NoDaemon(f"the daemon did not answer on {path} within {timeout:g}s") from exc
    finally:
        sock.close()
    try:
        answer = json.loads(data)
    except ValueError as exc:
        raise NoDaemon(f"no valid answer on {path}") from exc
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error", "request failed")))
    return answer.get("result")
