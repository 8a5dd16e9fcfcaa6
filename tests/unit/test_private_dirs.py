"""The daemon's state_dir and runtime_dir: its own, or it does not start."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gpuwatchd.adapters.instance import LOCK_NAME, StartRefused, check_private_dir, claim
from gpuwatchd.config import DaemonConfig

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
RULE = "it must be owned by root and not writable by group/others"


def test_a_missing_directory_is_created_0700(tmp_path: Path) -> None:
    path = tmp_path / "a" / "state"
    check_private_dir(path, "state_dir")
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert path.stat().st_uid == os.geteuid()


@pytest.mark.parametrize("mode", [0o700, 0o755, 0o750, 0o500])
def test_a_directory_only_its_owner_can_write_is_accepted(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "run"
    path.mkdir()
    path.chmod(mode)
    check_private_dir(path, "runtime_dir")


@pytest.mark.skipif(os.geteuid() != 0, reason="the message names root")
@pytest.mark.parametrize("mode", [0o777, 0o770, 0o720, 0o702, 0o1777, 0o2775])
def test_a_directory_group_or_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "run"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(StartRefused) as refused:
        check_private_dir(path, "runtime_dir")
    assert str(refused.value) == (
        f"runtime_dir {path} is writable by group/others (mode {mode:04o}); "
        f"{RULE} (run chmod go-w {path})"
    )


@as_root
def test_a_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    os.chown(path, 1000, 1000)
    with pytest.raises(StartRefused) as refused:
        check_private_dir(path, "state_dir")
    assert str(refused.value) == (
        f"state_dir {path} is owned by uid 1000; {RULE} (run chown root {path})"
    )


def test_a_symlink_is_refused_even_to_a_good_directory(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "state"
    link.symlink_to(real)
    with pytest.raises(StartRefused, match=r"^state_dir \S+ is a symbolic link; it must be a "):
        check_private_dir(link, "state_dir")


def test_a_dangling_symlink_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    target = tmp_path / "nowhere"
    link = tmp_path / "run"
    link.symlink_to(target)
    with pytest.raises(StartRefused, match="is a symbolic link"):
        check_private_dir(link, "runtime_dir")
    assert not target.exists()


def test_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_text("")
    with pytest.raises(StartRefused, match=r"^state_dir \S+ is not a directory"):
        check_private_dir(path, "state_dir")


def test_refusals_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "a\nb"
    path.mkdir()
    path.chmod(0o777)
    with pytest.raises(StartRefused) as refused:
        check_private_dir(path, "runtime_dir")
    assert len(str(refused.value).splitlines()) == 1


def test_claim_checks_both_directories_before_it_locks(tmp_path: Path) -> None:
    """A bad state_dir refuses the start before the lock file is made; a bad runtime_dir
    gets no lock file either; good ones are created and the lock is taken."""
    state, run = tmp_path / "state", tmp_path / "run"
    state.mkdir()
    state.chmod(0o777)
    with pytest.raises(StartRefused, match=r"^state_dir "):
        claim(DaemonConfig(state_dir=state, runtime_dir=run))
    assert not (run / LOCK_NAME).exists()

    state.chmod(0o700)
    run.mkdir()
    run.chmod(0o777)
    with pytest.raises(StartRefused, match=r"^runtime_dir "):
        claim(DaemonConfig(state_dir=state, runtime_dir=run))
    assert not (run / LOCK_NAME).exists()

    fresh = DaemonConfig(state_dir=tmp_path / "new" / "state", runtime_dir=tmp_path / "new" / "run")
    lock = claim(fresh)
    try:
        for path in (fresh.state_dir, fresh.runtime_dir):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700
        assert (fresh.runtime_dir / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    finally:
        lock.release()
