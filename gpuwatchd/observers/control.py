"""The daemon's control channel: a root-only unix socket speaking JSON lines.

One request per connection: the client writes one JSON object and a newline,
the daemon answers with one JSON object and a newline, then closes. Requests:
``{"command": "status"}``, ``{"command": "reset", "container": NAME|null}``,
``{"command": "pause", "container": NAME|null, "for": SECONDS|null}``,
``{"command": "resume", "container": NAME|null}``. Answers are
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
``pause`` and ``resume`` refuse a container that is neither watched nor named
in the configuration (``no watched or configured container named 'X'``; see
:func:`gpuwatchd.core.watchset.control_target`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gpuwatchd.config import MAX_DURATION
from gpuwatchd.core.watchset import UnknownTarget
from gpuwatchd.model.events import Event, PauseRequested, ResetRequested, ResumeRequested
from gpuwatchd.runtime import Apply

SOCKET_NAME = "control.sock"
#: A request larger than this is refused: the channel carries commands, not data.
MAX_REQUEST = 64 * 1024

#: Requests are flat objects; anything nested deeper than this is refused.
MAX_DEPTH = 4
#: The longest pause a request may ask for: the longest duration anywhere
#: ("for ever" is ``for`` left out).
MAX_PAUSE = MAX_DURATION

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlError(Exception):
    """The daemon answered with an error (the message is one line for people)."""


class NoDaemon(Exception):
    """No daemon answered on the control socket."""


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number the control channel takes")


def _too_deep(value: object, limit: int) -> bool:
    """Whether containers nest deeper than ``limit`` in ``value``; iterative, so a
    document nested just under json's own limit cannot exhaust the stack here."""
    level: list[object] = [value]
    depth = 0
    while level:
        children = [v for item in level if isinstance(item, dict | list)
                    for v in (item.values() if isinstance(item, dict) else item)]
        if any(isinstance(item, dict | list) for item in level):
            depth += 1
            if depth > limit:
                return True
        level = children
    return False


def parse_request(line: bytes) -> dict[str, Any]:
    """Decode one request line into a JSON object.

    Raises:
        ValueError: ``bad request: …`` for anything else: invalid JSON, NaN or
            Infinity, nesting deeper than :data:`MAX_DEPTH`, a non-object.
    """
    if len(line) > MAX_REQUEST:
        raise ValueError("bad request: request too large")
    try:
        request = json.loads(line, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("bad request: nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"bad request: {exc}") from None
    if not isinstance(request, dict):
        raise ValueError("bad request: request must be a JSON object")
    if _too_deep(request, MAX_DEPTH):
        raise ValueError("bad request: nested too deeply")
    return request


def pause_duration(value: object) -> float | None:
    """The ``for`` of a pause request as seconds, or None for no end.

    Raises:
        ControlError: not a finite number above 0 and at most :data:`MAX_PAUSE`
            (a bool is not a number here).
    """
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 < value <= MAX_PAUSE
    ):
        raise ControlError(f"'for' must be a number of seconds above 0 and at most {MAX_PAUSE:g}")
    return float(value)


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
                request = parse_request(line)
                answer: dict[str, Any] = {"ok": True, "result": await self._handler(request)}
            except (ControlError, UnknownTarget) as exc:
                answer = {"ok": False, "error": str(exc)}
            except ValueError as exc:
                text = str(exc)
                answer = {"ok": False, "error": text if text.startswith("bad request") else
                          f"bad request: {text}"}
            except asyncio.TimeoutError:  # asyncio's own before 3.11
                answer = {"ok": False, "error": "bad request: no request line within 5s"}
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


#: How long a command waits for the core to apply its event before answering "pending".
APPLY_TIMEOUT = 5.0


class ControlChannel:
    """The control observer: the socket, and each request turned into an answer
    or a core event.

    ``reset``, ``pause`` and ``resume`` put their event on the queue and are
    answered once the core has applied it, or marked ``pending`` when it has not
    within :data:`APPLY_TIMEOUT` (it is applied when its turn comes).
    ``target(name, resuming)`` resolves the container a pause or resume names
    and raises UnknownTarget for one neither watched nor configured.
    """

    def __init__(self, runtime_dir: Path, *,
                 status: Callable[[], dict[str, Any]],
                 history: Callable[[], dict[str, Any]],
                 target: Callable[[str | None, bool], str | None],
                 put: Callable[[Apply], None],
                 on_unavailable: Callable[[OSError], None]) -> None:
        self._server = ControlServer(runtime_dir, self.handle)
        self._status = status
        self._history = history
        self._target = target
        self._put = put
        self._on_unavailable = on_unavailable
        self._serving = False

    async def start(self) -> None:
        """Listen; a socket that cannot be made costs the channel, not the daemon."""
        try:
            await self._server.start()
        except OSError as exc:
            self._on_unavailable(exc)
            return
        self._serving = True

    def stop(self) -> None:
        pass  # requests in flight are answered; :meth:`close` removes the socket

    async def close(self) -> None:
        if self._serving:
            await self._server.close()
            self._serving = False

    def alive(self) -> bool:
        return True

    async def handle(self, request: dict[str, Any]) -> Any:
        command = request.get("command")
        container = request.get("container")
        if container is not None and not isinstance(container, str):
            raise ControlError("container must be a name")
        if command == "status":
            return self._status()
        if command == "history":
            return self._history()
        if command == "reset":
            return await self.apply(ResetRequested(container), {"reset": container or "all"})
        if command == "pause":
            duration = pause_duration(request.get("for"))
            target = self._target(container, False)
            until = None if duration is None else time.time() + duration
            return await self.apply(PauseRequested(target, until),
                                    {"paused": target or "all", "until": until})
        if command == "resume":
            target = self._target(container, True)
            return await self.apply(ResumeRequested(target), {"resumed": target or "all"})
        raise ControlError(f"unknown command {command!r}")

    async def apply(self, event: Event, answer: dict[str, Any]) -> dict[str, Any]:
        """Hand ``event`` to the core through the dispatcher; return ``answer`` once
        applied, or with ``"pending": true`` when the core has not applied it within
        :data:`APPLY_TIMEOUT` (it is queued, and applied when its turn comes).

        Raises:
            ControlError: the core failed to apply it.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._put(Apply(event, done))
        try:
            await asyncio.wait_for(asyncio.shield(done), APPLY_TIMEOUT)
        except asyncio.TimeoutError:  # asyncio's own before 3.11
            return {**answer, "pending": True}
        except Exception as exc:
            raise ControlError(f"not applied: {type(exc).__name__}: {exc}") from None
        return answer
