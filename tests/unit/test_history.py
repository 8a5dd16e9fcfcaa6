"""What gpuwatchd did to each container, kept in the state file (version 2) for
``diagnose``: written by the core, read back, and old files still read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuwatchd.adapters.state_file import (
    MAX_HISTORY,
    MAX_HISTORY_CONTAINERS,
    STATE_VERSION,
    HistoryEntry,
    PersistedState,
    load_state,
    save_state,
    state_path,
)
from gpuwatchd.model.events import ContainerRef
from gpuwatchd.model.vocabulary import ProbeResult

from .core_harness import GPU0, GPU0_OFF, T0, Harness, make_config

#: A state file exactly as the previous release (state version 1) writes it.
VERSION_1_FILE = {
    "version": 1,
    "restarts": {"KonomiTV": [T0 - 600.0, T0 - 300.0]},
    "given_up": {"Mirakurun": T0 - 100.0},
    "paused": {"*": None, "EPGStation": T0 + 3600.0},
    "gpu_last_disabled": {"GPU-00000000-0000-0000-0000-000000000000": T0 - 700.0},
}


def test_a_version_1_file_keeps_every_budget_give_up_and_pause(tmp_path: Path) -> None:
    """An upgrade reads the old file whole (no history yet) and writes version 2."""
    path = state_path(tmp_path)
    path.write_text(json.dumps(VERSION_1_FILE))
    state, warning = load_state(path, now=T0)
    assert warning is None
    assert state.restarts == {"KonomiTV": (T0 - 600.0, T0 - 300.0)}
    assert state.given_up == {"Mirakurun": T0 - 100.0}
    assert state.paused == {"*": None, "EPGStation": T0 + 3600.0}
    assert state.history == {}
    save_state(path, state)
    doc = json.loads(path.read_text())
    assert doc["version"] == STATE_VERSION == 2
    assert {k: v for k, v in doc.items() if k not in ("version", "history")} == {
        k: v for k, v in VERSION_1_FILE.items() if k != "version"}


def test_history_round_trips(tmp_path: Path) -> None:
    entries = (HistoryEntry(T0, "restarted", "persistence_off", "certain"),
               HistoryEntry(T0 + 1, "recovered", "persistence_off", "ok"),
               HistoryEntry(T0 + 9, "gave_up", "device_access_lost"))
    path = state_path(tmp_path)
    save_state(path, PersistedState(history={"KonomiTV": entries}))
    state, warning = load_state(path, now=T0 + 10)
    assert warning is None and state.history == {"KonomiTV": entries}


@pytest.mark.parametrize("history", [
    {"KonomiTV": "restarted"},
    {"KonomiTV": [{"at": T0, "event": "exploded", "cause": "x"}]},
    {"KonomiTV": [{"at": T0, "event": "restarted"}]},
    {"KonomiTV": [{"at": T0 + 1e9, "event": "restarted", "cause": "x"}]},
    {"KonomiTV": [{"at": T0, "event": "restarted", "cause": "x", "extra": 1}]},
    {"KonomiTV": [{"at": T0, "event": "restarted", "cause": "x", "detail": 5}]},
])
def test_a_bad_history_is_refused_whole(tmp_path: Path, history: object) -> None:
    path = state_path(tmp_path)
    path.write_text(json.dumps({"version": 2, "history": history}))
    state, warning = load_state(path, now=T0)
    assert state == PersistedState() and warning is not None and "corrupt" in warning


def test_history_is_not_in_a_version_1_file(tmp_path: Path) -> None:
    path = state_path(tmp_path)
    path.write_text(json.dumps({"version": 1, "history": {}}))
    assert load_state(path, now=T0)[1] is not None


def history_of(h: Harness, name: str = "KonomiTV") -> list[tuple[str, str, str | None]]:
    return [(e.event, e.cause, e.detail) for e in h.saved().history.get(name, ())]


def test_the_core_remembers_a_heal_with_its_cause_and_confidence() -> None:
    h = Harness()
    h.gpus(GPU0)
    h.watch(started_at=T0 - 7200)
    h.gpus(GPU0_OFF)
    h.answer(ProbeResult.NVML_UNKNOWN_ERROR)
    h.finish_set()
    h.finish_restart()
    assert history_of(h) == [("restarted", "persistence_off", "certain")]
    assert h.saved().history["KonomiTV"][0].at == h.now
    h.later(0.5)
    h.answer(ProbeResult.OK)
    assert history_of(h) == [("restarted", "persistence_off", "certain"),
                             ("recovered", "persistence_off", "ok")]


def test_the_core_remembers_a_give_up_and_keeps_the_newest_entries() -> None:
    h = Harness(config=make_config(max_restarts=1, cooldown=1.0, verify_timeout=5.0))
    h.gpus(GPU0)
    h.watch(started_at=T0 - 7200)
    for _ in range(MAX_HISTORY):
        h.core._remember("KonomiTV", HistoryEntry(h.now, "recovered", "unknown", "ok"))
    h.fault()
    h.finish_restart()
    h.later(0.5)
    h.answer(ProbeResult.OK)
    h.later(10)  # past start grace and cooldown; the budget of one is spent
    h.fault()
    history = h.saved().history["KonomiTV"]
    assert len(history) == MAX_HISTORY
    assert [e.event for e in history[-3:]] == ["restarted", "recovered", "gave_up"]


def test_dry_run_remembers_nothing() -> None:
    h = Harness(dry_run=True)
    h.gpus(GPU0)
    h.watch(started_at=T0 - 7200)
    h.fault(device_access_ok=False)
    assert h.core.persisted().history == {}


def test_other_containers_history_is_untouched() -> None:
    other = ContainerRef("c" * 64, "EPGStation")
    h = Harness(state=PersistedState(history={other.name: (
        HistoryEntry(T0 - 50, "restarted", "unknown", "unknown"),)}))
    h.gpus(GPU0)
    h.watch(started_at=T0 - 7200)
    h.fault(device_access_ok=False)
    h.finish_restart()
    assert h.saved().history[other.name] == (HistoryEntry(T0 - 50, "restarted", "unknown",
                                                          "unknown"),)
    assert history_of(h) == [("restarted", "device_access_lost", "certain")]


def test_history_keeps_the_most_recently_touched_containers() -> None:
    """At most MAX_HISTORY_CONTAINERS containers have history: a new entry drops the
    container touched longest ago, and a state document holding more keeps the newest."""
    old = {f"c{i:03d}": (HistoryEntry(T0 - 10_000 + i, "restarted", "unknown"),)
           for i in range(MAX_HISTORY_CONTAINERS)}
    h = Harness(state=PersistedState(history=old))
    h.gpus(GPU0)
    h.watch()
    h.fault()
    h.finish_restart()
    kept = h.saved().history
    assert len(kept) == MAX_HISTORY_CONTAINERS
    assert "KonomiTV" in kept and "c000" not in kept and "c001" in kept

    doc = PersistedState(history={**old, "late": (HistoryEntry(T0, "gave_up", "unknown"),)})
    parsed = PersistedState.from_json(doc.to_json()).history
    assert len(parsed) == MAX_HISTORY_CONTAINERS
    assert "late" in parsed and "c000" not in parsed
