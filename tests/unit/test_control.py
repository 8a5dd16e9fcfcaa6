"""The control channel: one JSON request, one JSON answer, root-only socket."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest

from gpuwatchd.control import ControlError, ControlServer, NoDaemon, request


async def handler(req: dict[str, Any]) -> Any:
    if req.get("command") == "status":
        return {"containers": []}
    raise ControlError(f"unknown command {req.get('command')!r}")


async def test_round_trip_and_socket_mode(tmp_path: Path) -> None:
    """A request gets the handler's answer; the socket is 0600."""
    server = ControlServer(tmp_path, handler)
    await server.start()
    try:
        assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
        result = await asyncio.to_thread(request, tmp_path, {"command": "status"})
        assert result == {"containers": []}
        with pytest.raises(ControlError, match="unknown command 'nope'"):
            await asyncio.to_thread(request, tmp_path, {"command": "nope"})
    finally:
        await server.close()
    assert not server.path.exists()


async def test_garbage_request_is_answered_not_fatal(tmp_path: Path) -> None:
    server = ControlServer(tmp_path, handler)
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(server.path))
        writer.write(b"[1, 2\n")
        await writer.drain()
        answer = await reader.readline()
        writer.close()
        assert b'"ok": false' in answer and b"bad request" in answer
        # the server still serves afterwards
        assert await asyncio.to_thread(request, tmp_path, {"command": "status"}) is not None
    finally:
        await server.close()


def test_no_daemon(tmp_path: Path) -> None:
    """With nothing listening, the client says so in one line."""
    with pytest.raises(NoDaemon, match="no gpuwatchd daemon answered"):
        request(tmp_path, {"command": "status"})
