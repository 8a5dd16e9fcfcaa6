"""Control commands that wait for the core are bounded: a busy dispatcher gets a
"pending" answer after APPLY_TIMEOUT, never a client that hangs; a core that fails
to apply the event gets a one-line refusal, never an "ok"."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gpuwatchd.model.events import ResetRequested
from gpuwatchd.observers import control
from gpuwatchd.observers.control import ControlChannel, ControlError
from gpuwatchd.runtime import Apply


def channel(tmp_path: Path, put: list[Apply]) -> ControlChannel:
    return ControlChannel(tmp_path, status=dict, history=dict,
                          target=lambda name, resuming: name, put=put.append,
                          on_unavailable=lambda exc: None)


async def test_a_command_the_core_does_not_apply_in_time_is_answered_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(control, "APPLY_TIMEOUT", 0.05)
    put: list[Apply] = []  # a dispatcher stuck elsewhere: nothing takes the item
    answer = await asyncio.wait_for(channel(tmp_path, put).handle({"command": "reset"}), 2.0)
    assert answer == {"reset": "all", "pending": True}
    assert [a.event for a in put] == [ResetRequested(None)]
    put[0].settle()  # applied later, when its turn comes: nothing breaks


async def test_a_command_the_core_fails_to_apply_is_refused(tmp_path: Path) -> None:
    put: list[Apply] = []
    answer = asyncio.ensure_future(channel(tmp_path, put).handle({"command": "reset"}))
    await asyncio.sleep(0.01)
    put[0].settle(RuntimeError("the core broke"))
    with pytest.raises(ControlError, match=r"^not applied: RuntimeError: the core broke$"):
        await asyncio.wait_for(answer, 1.0)


async def test_a_command_is_answered_once_applied(tmp_path: Path) -> None:
    put: list[Apply] = []
    answer = asyncio.ensure_future(channel(tmp_path, put).handle(
        {"command": "pause", "container": "konomi", "for": 60}))
    await asyncio.sleep(0.01)
    assert not answer.done()  # not before the core applied it
    put[0].settle()
    result = await asyncio.wait_for(answer, 1.0)
    assert result["paused"] == "konomi"


def test_the_bound_is_five_seconds() -> None:
    assert control.APPLY_TIMEOUT == 5.0
