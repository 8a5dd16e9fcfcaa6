"""What one daemon owns on disk: the single-instance lock in its runtime directory.

Two daemons on one runtime directory would both act on the same containers and
fight over the control socket, so the daemon takes an exclusive, non-blocking
``flock`` on ``<runtime_dir>/gpuwatchd.lock`` before it touches the socket,
the state file or anything else, and holds it for its whole life. The file
holds the holder's pid, for the message a second daemon prints. The kernel
drops the lock when the holder's process ends, however it ends, so a lock file
left behind by a crashed daemon is simply taken over; the file is never
removed (removing it would let two daemons lock two different files).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

from gpuwatchd.config import ConfigError, DaemonConfig

LOCK_NAME = "gpuwatchd.lock"
#: A pid is a few digits; more than this in the lock file is not a pid.
_PID_BYTES = 32


class StartRefused(ConfigError):
    """The daemon must not start (exit 2, like a configuration error).

    ``str()`` is one line for the operator, without a file prefix.
    """

    def __init__(self, problem: str) -> None:
        super().__init__(problem)


class InstanceLock:
    """A held lock; :meth:`release` (or the end of the process) lets it go."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    def fileno(self) -> int:
        """The lock file's descriptor (close-on-exec: no child inherits the lock)."""
        if self._fd is None:
            raise ValueError("the lock has been released")
        return self._fd

    def release(self) -> None:
        """Let the lock go; a second call does nothing."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _holder_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, _PID_BYTES, 0).decode("ascii").strip()
        pid = int(text)
        if pid > 0:
            return pid
    return None


def take_lock(runtime_dir: Path) -> InstanceLock:
    """Lock ``runtime_dir/gpuwatchd.lock`` for this process and write its pid there.

    The file is created (mode 0600) when missing and is opened without
    following a symbolic link and without blocking on a FIFO.

    Raises:
        StartRefused: another process holds the lock (the message names its
            pid and ``runtime_dir``), or the lock file is a symbolic link, not
            a regular file, or cannot be opened or locked.
    """
    path = runtime_dir / LOCK_NAME
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StartRefused(f"lock file {path} is a symbolic link; remove it") from None
        raise StartRefused(f"cannot open lock file {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StartRefused(f"lock file {path} is not a regular file; remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder_pid(fd)
            raise StartRefused(
                f"another gpuwatchd (pid {pid or 'unknown'}) is running "
                f"with runtime_dir {runtime_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except StartRefused:
        os.close(fd)
        raise
    except OSError as exc:
        os.close(fd)
        raise StartRefused(f"cannot lock {path}: {exc.strerror or exc}") from None
    return InstanceLock(fd, path)


def claim(daemon: DaemonConfig) -> InstanceLock:
    """What the daemon does first: make its runtime directory (0700) if missing, lock it.

    Raises:
        StartRefused: as :func:`take_lock` does, or the directory cannot be made.
    """
    try:
        daemon.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartRefused(
            f"cannot create runtime_dir {daemon.runtime_dir}: {exc.strerror or exc}"
        ) from None
    return take_lock(daemon.runtime_dir)
