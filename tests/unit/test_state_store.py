"""The persisted state file: round trips, atomic writes, and never crashing on a bad file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuwatchd.adapters.state_file import (
    ALL_CONTAINERS,
    CLOCK_SLACK,
    MAX_STATE_BYTES,
    STATE_FILE_NAME,
    STATE_VERSION,
    PersistedState,
    load_state,
    save_state,
    state_path,
)

#: A fixed "now" for the tests of times in the future (2026-12-01).
NOW = 1796083200.0

SAMPLE = PersistedState(
    restarts={"KonomiTV": (100.0, 250.5), "other": (7.0,)},
    given_up={"KonomiTV": 300.0},
    paused={ALL_CONTAINERS: None, "other": 4000.0},
    gpu_last_disabled={"GPU-0": 90.0},
)


def test_round_trip(tmp_path: Path) -> None:
    path = state_path(tmp_path)
    save_state(path, SAMPLE)
    state, warning = load_state(path)
    assert warning is None
    assert state.to_json() == SAMPLE.to_json()


def test_file_is_versioned_json_mode_0600(tmp_path: Path) -> None:
    path = state_path(tmp_path / "new")
    save_state(path, SAMPLE)
    assert json.loads(path.read_text())["version"] == STATE_VERSION
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.listdir(path.parent) == ["state.json"]  # no temp file left behind


def test_save_replaces_the_old_file(tmp_path: Path) -> None:
    path = state_path(tmp_path)
    save_state(path, SAMPLE)
    save_state(path, PersistedState())
    assert load_state(path)[0] == PersistedState()


def test_failed_save_raises_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = state_path(tmp_path)
    save_state(path, SAMPLE)
    bad = tmp_path / "not-a-dir"
    bad.write_text("")
    with pytest.raises(OSError):
        save_state(bad / "state.json", PersistedState())
    assert load_state(path)[0].to_json() == SAMPLE.to_json()


def test_missing_file_is_empty_state_without_warning(tmp_path: Path) -> None:
    assert load_state(tmp_path / "state.json") == (PersistedState(), None)


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"{not json", "corrupt"),
        (b"", "corrupt"),
        (b"\xff\xfe\x00garbage", "corrupt"),
        (b"[1, 2]", "corrupt"),
        (b'{"restarts": {}}', "corrupt"),  # no version
        (b'{"version": "1"}', "corrupt"),
        (b'{"version": 1, "restarts": {"x": "soon"}}', "corrupt"),
        (b'{"version": 1, "restarts": {"x": [true]}}', "corrupt"),
        (b'{"version": 1, "given_up": {"x": NaN}}', "corrupt"),
        (b'{"version": 1, "paused": []}', "corrupt"),
        (b'{"version": 1, "surprise": {}}', "corrupt"),
        (b'{"version": 0, "restarts": {}}', "unsupported-v0"),  # older
        (b'{"version": 3, "restarts": {}}', "unsupported-v3"),  # newer
    ],
)
def test_bad_file_gives_empty_state_a_warning_and_is_kept(
    tmp_path: Path, content: bytes, kind: str
) -> None:
    """Never a crash: safe defaults, one clear line, and the bad file moved aside intact."""
    path = state_path(tmp_path)
    path.write_bytes(content)
    state, warning = load_state(path, now=1_767_139_200.0)
    assert state == PersistedState()
    assert warning is not None and "\n" not in warning
    moved = tmp_path / f"state.json.{kind}-20251231T000000Z"
    assert moved.read_bytes() == content
    assert str(moved) in warning
    assert not path.exists()


def test_moving_aside_twice_in_one_second_keeps_both(tmp_path: Path) -> None:
    path = state_path(tmp_path)
    for content in (b"one", b"two"):
        path.write_bytes(content)
        load_state(path, now=0.0)
    kept = sorted(p.read_bytes() for p in tmp_path.iterdir())
    assert kept == [b"one", b"two"]


def test_unreadable_file_warns(tmp_path: Path) -> None:
    path = state_path(tmp_path)
    path.mkdir()  # a directory where the file should be: reading fails
    state, warning = load_state(path)
    assert state == PersistedState()
    assert warning is not None and "cannot read" in warning


names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
times = st.floats(0, 4e9, allow_nan=False)


@given(
    st.dictionaries(names, st.lists(times, max_size=4).map(lambda v: tuple(sorted(v)))),
    st.dictionaries(names, times),
    st.dictionaries(names, st.none() | times),
    st.dictionaries(names, times),
)
def test_any_state_round_trips(
    restarts: dict[str, tuple[float, ...]],
    given_up: dict[str, float],
    paused: dict[str, float | None],
    disabled: dict[str, float],
) -> None:
    state = PersistedState(restarts, given_up, paused, disabled)
    doc = json.loads(json.dumps(state.to_json()))
    assert PersistedState.from_json(doc).to_json() == state.to_json()


# -- untrusted files: a planted file never makes root read, block on or write another ------


def test_a_symlink_at_the_state_path_is_not_followed(tmp_path: Path) -> None:
    """A symlink is refused as not a regular file, and moved aside; its target is untouched."""
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(PersistedState().to_json()))
    path = tmp_path / STATE_FILE_NAME
    path.symlink_to(target)
    state, warning = load_state(path, now=NOW)
    assert state == PersistedState()
    assert warning is not None and "symbolic link" in warning
    assert target.read_text() == json.dumps(PersistedState().to_json())


@pytest.mark.timeout(20)  # a hang guard: before, reading a FIFO blocked start-up for ever
def test_a_fifo_at_the_state_path_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE_NAME
    os.mkfifo(path)
    state, warning = load_state(path, now=NOW)
    assert state == PersistedState()
    assert warning is not None and "not a regular file" in warning


def test_an_oversized_state_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE_NAME
    path.write_bytes(b" " * (MAX_STATE_BYTES + 1))
    state, warning = load_state(path, now=NOW)
    assert state == PersistedState()
    assert warning is not None and f"larger than {MAX_STATE_BYTES} bytes" in warning


@pytest.mark.parametrize(
    "doc",
    [
        {"version": 1, "restarts": {"k": [1e300]}},
        {"version": 1, "restarts": {"k": [NOW + CLOCK_SLACK + 1]}},
        {"version": 1, "given_up": {"k": NOW + 86400}},
        {"version": 1, "gpu_last_disabled": {"GPU-1": 1e300}},
        {"version": 1, "paused": {"k": NOW + 400 * 86400}},
    ],
)
def test_times_in_the_future_are_refused(tmp_path: Path, doc: dict[str, object]) -> None:
    """A restart "in the future" would hold a budget spent for ever."""
    path = tmp_path / STATE_FILE_NAME
    path.write_text(json.dumps(doc))
    state, warning = load_state(path, now=NOW)
    assert state == PersistedState()
    assert warning is not None and "lies in the future" in warning


def test_a_pause_up_to_a_year_ahead_is_kept(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE_NAME
    path.write_text(json.dumps({"version": 1, "paused": {"k": NOW + 300 * 86400, "*": None}}))
    state, warning = load_state(path, now=NOW)
    assert warning is None
    assert state.paused == {"k": NOW + 300 * 86400, "*": None}


def test_save_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    """Symlinks planted at every name the old writer used leave their targets alone."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    victim.chmod(0o644)
    path = tmp_path / STATE_FILE_NAME
    for pid in range(os.getpid() - 5, os.getpid() + 5):
        (tmp_path / f".{STATE_FILE_NAME}.tmp-{pid}").symlink_to(victim)
    save_state(path, PersistedState(given_up={"k": NOW}))
    assert victim.read_text() == "precious"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert load_state(path, now=NOW) == (PersistedState(given_up={"k": NOW}), None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
