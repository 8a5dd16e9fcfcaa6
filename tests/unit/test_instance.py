"""What one daemon owns on disk: the single-instance lock in its runtime directory."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gpuwatchd.adapters.instance import LOCK_NAME, StartRefused, take_lock


def test_the_lock_holds_the_pid_and_is_private(tmp_path: Path) -> None:
    """The lock file is 0600, holds the holder's pid, and is not inherited by children."""
    lock = take_lock(tmp_path)
    try:
        path = tmp_path / LOCK_NAME
        assert path.read_text() == f"{os.getpid()}\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert lock.path == path
        assert not os.get_inheritable(lock.fileno())
    finally:
        lock.release()


def test_a_second_taker_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    """While held, another take fails with one line naming the pid; after release it works."""
    first = take_lock(tmp_path)
    try:
        with pytest.raises(StartRefused) as refused:
            take_lock(tmp_path)
        assert str(refused.value) == (
            f"another gpuwatchd (pid {os.getpid()}) is running with runtime_dir {tmp_path}"
        )
        assert len(str(refused.value).splitlines()) == 1
        # The refused attempt neither stole the lock nor rewrote the pid.
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(StartRefused):
            take_lock(tmp_path)
    finally:
        first.release()
    take_lock(tmp_path).release()


_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("held", flush=True)
time.sleep(60)
"""


def test_a_lock_held_by_another_process_names_that_process(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / LOCK_NAME)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(StartRefused, match=rf"^another gpuwatchd \(pid {holder.pid}\) "):
            take_lock(tmp_path)
    finally:
        holder.terminate()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    # The holder is gone: its lock went with it.
    lock = take_lock(tmp_path)
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    lock.release()


def test_a_held_lock_without_a_pid_yet_says_pid_unknown(tmp_path: Path) -> None:
    import fcntl

    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(StartRefused, match=r"^another gpuwatchd \(pid unknown\) is running"):
            take_lock(tmp_path)
    finally:
        os.close(fd)


def test_a_stale_lock_file_is_taken_over(tmp_path: Path) -> None:
    """A lock file left by a daemon that died (nobody holds it) is reused, its pid replaced."""
    (tmp_path / LOCK_NAME).write_text("999999999 and some junk\n")
    lock = take_lock(tmp_path)
    try:
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    finally:
        lock.release()


def test_a_symlink_at_the_lock_name_is_refused_and_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / LOCK_NAME).symlink_to(target)
    with pytest.raises(StartRefused, match="symbolic link"):
        take_lock(tmp_path)
    assert not target.exists()


def test_a_fifo_at_the_lock_name_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / LOCK_NAME)
    with pytest.raises(StartRefused, match="not a regular file"):
        take_lock(tmp_path)
