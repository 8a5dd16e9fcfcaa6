"""The gateway's event stream: actions picked on the client side, in Docker's names."""

from __future__ import annotations

from typing import Any

from gpuwatchd.adapters.docker_engine import WATCHED_EVENTS, EventStream, event_action


def _event(action: str, cid: str = "c1") -> dict[str, Any]:
    return {"Type": "container", "Action": action, "status": action, "id": cid,
            "Actor": {"ID": cid, "Attributes": {}}}


def test_only_watched_actions_pass_and_exec_probes_do_not() -> None:
    raw = [_event(a) for a in ("create", "init", "start", "exec_create: sh -c nvidia-smi",
                               "exec_start: sh", "exec_die", "sync", "stop", "die", "destroy")]
    stream = EventStream(iter(raw), actions=frozenset(WATCHED_EVENTS))
    assert [e["Action"] for e in stream] == ["create", "start", "die", "destroy"]


def test_podman_remove_arrives_as_destroy() -> None:
    stream = EventStream(iter([_event("die"), _event("remove")]),
                         actions=frozenset(WATCHED_EVENTS))
    seen = list(stream)
    assert [(e["Action"], e["status"]) for e in seen] == [("die", "die"), ("destroy", "destroy")]
    assert seen[1]["id"] == "c1"


def test_without_actions_every_event_passes() -> None:
    raw = [_event("exec_die"), _event("start")]
    assert [e["Action"] for e in EventStream(iter(raw))] == ["exec_die", "start"]


def test_event_action_drops_the_detail_and_reads_old_status() -> None:
    assert event_action({"Action": "exec_create: sh -c true"}) == "exec_create"
    assert event_action({"status": "die"}) == "die"
    assert event_action({}) == ""
