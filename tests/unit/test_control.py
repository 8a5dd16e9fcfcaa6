"""The control channel: one JSON request, one JSON answer, root-only socket."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest

from gpuwatchd.observers.control import (
    MAX_PAUSE,
    ControlError,
    ControlServer,
    NoDaemon,
    parse_request,
    pause_duration,
    request,
)


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


# -- hostile input: every request gets a one-line refusal, never a crash -------------


@pytest.mark.parametrize(
    "line",
    [
        b'{"command": "pause", "for": NaN}\n',
        b'{"command": "pause", "for": Infinity}\n',
        b'{"command": "pause", "for": -Infinity}\n',
        b"[" * 20_000 + b"]" * 20_000 + b"\n",
        b'{"a": ' * 10_000 + b"1" + b"}" * 10_000 + b"\n",
        b'{"command": {"a": {"b": {"c": {"d": 1}}}}}\n',
    ],
)
def test_parse_request_refuses_non_finite_numbers_and_deep_nesting(line: bytes) -> None:
    """NaN/Infinity and nesting past MAX_DEPTH are a ValueError, not a RecursionError."""
    with pytest.raises(ValueError, match="bad request"):
        parse_request(line)


def test_parse_request_takes_an_ordinary_request() -> None:
    assert parse_request(b'{"command": "pause", "container": "k", "for": 60}\n') == {
        "command": "pause", "container": "k", "for": 60,
    }


@pytest.mark.parametrize("value", [True, False, 0, -1, 0.0, float("nan"), float("inf"),
                                   MAX_PAUSE + 1, "60", [60], {}])
def test_pause_duration_refuses_what_is_not_a_sane_number_of_seconds(value: object) -> None:
    """``for`` is a finite number of seconds above 0 and at most 365 days; bools are not numbers."""
    with pytest.raises(ControlError, match="'for' must be"):
        pause_duration(value)


@pytest.mark.parametrize("value, expected", [(None, None), (1, 1.0), (0.5, 0.5),
                                             (MAX_PAUSE, float(MAX_PAUSE))])
def test_pause_duration_accepts_seconds_up_to_a_year(value: object, expected: float | None) -> None:
    assert pause_duration(value) == expected


async def test_hostile_requests_are_answered_and_the_server_keeps_serving(tmp_path: Path) -> None:
    """NaN, deep nesting: each gets ok=false with one line; status still answers after."""
    server = ControlServer(tmp_path, handler)
    await server.start()
    try:
        for line in (b'{"command": "pause", "for": NaN}\n', b"[" * 30_000 + b"\n"):
            reader, writer = await asyncio.open_unix_connection(str(server.path), limit=2**20)
            writer.write(line)
            await writer.drain()
            answer = await reader.readline()
            writer.close()
            assert b'"ok": false' in answer and b"bad request" in answer
            assert answer.count(b"\n") == 1
        assert await asyncio.to_thread(request, tmp_path, {"command": "status"}) is not None
    finally:
        await server.close()
