"""The device-access helper is bounded: past its timeout it is killed and reaped."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gpuwatchd.adapters.device_check import _run
from gpuwatchd.core.device_access import Access


def test_a_helper_that_never_answers_is_killed_and_reaped(tmp_path: Path) -> None:
    """A hung helper (as one joining a frozen cgroup would be) gives "cannot tell", and
    no process is left behind once the check returns."""
    pid_file = tmp_path / "pid"
    hang = (
        "import os, time, pathlib; "
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(600)"
    )
    check = _run([sys.executable, "-c", hang], timeout=1.0)
    assert check.access is Access.CANNOT_TELL
    assert "did not answer within 1s" in check.reason
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass
    else:
        raise AssertionError(f"helper {pid} outlived the check")
