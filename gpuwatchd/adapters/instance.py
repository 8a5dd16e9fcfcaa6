"""What one daemon owns on disk: its private directories and the single-instance lock.

The daemon runs as root and trusts what it finds in ``daemon.state_dir``
(restart budgets, give-ups, pauses) and ``daemon.runtime_dir`` (the control
socket, the lock). So each must be a directory itself, not a symbolic link,
owned by the daemon's effective uid and writable by neither group nor others:
the rule the configuration file follows. A missing one is created with mode
0700. Only the last component of the path is checked; the directories above it
are the administrator's (``/run`` and ``/var/lib`` are root's).

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
import shlex
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


def check_private_dir(path: Path, what: str) -> None:
    """Refuse ``path`` unless it is a directory only the daemon's user can change.

    A missing directory is created (mode 0700, parents as needed) and then
    checked like any other. ``what`` names it in the message
    (``"state_dir"``, ``"runtime_dir"``).

    Raises:
        StartRefused: ``path`` is a symbolic link, not a directory, owned by
            another uid than the effective one, writable by group or others,
            or cannot be created or examined; one line that says which and
            how to fix it.
    """
    try:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            try:
                path.mkdir(mode=0o700, parents=True)
            except FileExistsError:
                pass  # made meanwhile: examined like any other
            except OSError as exc:
                raise StartRefused(
                    f"cannot create {what} {path}: {exc.strerror or exc}"
                ) from None
            st = os.lstat(path)
    except OSError as exc:
        raise StartRefused(f"cannot examine {what} {path}: {exc.strerror or exc}") from None
    euid = os.geteuid()
    owner = "root" if euid == 0 else f"uid {euid}"
    rule = f"owned by {owner} and not writable by group/others"
    quoted = shlex.quote(str(path))
    if stat.S_ISLNK(st.st_mode):
        problem, fix = "is a symbolic link", f"; it must be a directory {rule}"
    elif not stat.S_ISDIR(st.st_mode):
        problem, fix = "is not a directory", f"; it must be a directory {rule}"
    elif st.st_uid != euid:
        who = "root" if euid == 0 else str(euid)
        problem = f"is owned by uid {st.st_uid}"
        fix = f"; it must be {rule} (run chown {who} {quoted})"
    elif st.st_mode & 0o022:
        problem = f"is writable by group/others (mode {stat.S_IMODE(st.st_mode):04o})"
        fix = f"; it must be {rule} (run chmod go-w {quoted})"
    else:
        return
    raise StartRefused(f"{what} {path} {problem}{fix}")

def claim(daemon: DaemonConfig) -> InstanceLock:
    """What the daemon does first: check ``state_dir`` and ``runtime_dir`` (creating
    a missing one, 0700), then take the lock in ``runtime_dir``.

    Raises:
        StartRefused: as :func:`check_private_dir` and :func:`take_lock` do.
    """
    check_private_dir(daemon.state_dir, "state_dir")
    check_private_dir(daemon.runtime_dir, "runtime_dir")
    return take_lock(daemon.runtime_dir)
