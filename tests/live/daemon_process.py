"""Running the real ``gpuwatchd run --log-format json`` as a subprocess in tests.

Records are read from the daemon's stderr (one JSON object per line) on a
thread, so a test can wait for a record and then assert on everything seen.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def _soft_nofile(limit: int) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


class DaemonProcess:
    """A gpuwatchd subprocess plus the records it has written so far."""

    def __init__(self, config_path: Path, env: Mapping[str, str], *extra_args: str,
                 nofile: int | None = None) -> None:
        """``nofile``: the daemon's soft RLIMIT_NOFILE (systemd's default is 1024)."""
        self.config_path = config_path
        #: The daemon's environment (the bench GPU's, for commands run beside it).
        self.env = {**os.environ, **env}
        self.records: list[Record] = []
        self.other_lines: list[str] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        cmd = [sys.executable, "-m", "gpuwatchd", "run", "--config", str(config_path),
               "--log-format", "json", *extra_args]
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=None if nofile is None else lambda: _soft_nofile(nofile),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            with self._changed:
                if isinstance(record, dict):
                    self.records.append(record)
                else:
                    self.other_lines.append(line)
                self._changed.notify_all()

    def find(self, event: str, **fields: Any) -> list[Record]:
        """Every record so far of ``event`` whose fields equal ``fields``."""
        with self._lock:
            return [r for r in self.records if r.get("event") == event
                    and all(r.get(k) == v for k, v in fields.items())]

    def wait_for(self, event: str, timeout: float = 30.0, count: int = 1,
                 **fields: Any) -> Record:
        """Wait until ``count`` matching records exist; return the last. Fails loudly."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [r for r in self.records if r.get("event") == event
                         and all(r.get(k) == v for k, v in fields.items())]
                if len(found) >= count:
                    return found[count - 1]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not found):
                    break
                self._changed.wait(min(remaining, 0.5))
        raise AssertionError(
            f"no {count}x {event} {fields} within {timeout}s; daemon rc={self.proc.poll()}; "
            f"records: {self.summary()}; other output: {self.other_lines[-20:]}"
        )

    def wait_until(self, predicate: Callable[[list[Record]], bool], timeout: float,
                   what: str) -> None:
        """Wait until ``predicate(records)`` holds; fail at the timeout, or at once
        when the daemon has exited (a dead daemon writes no more records)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.records):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting for {what}; {self.summary()}")
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(
                        f"the daemon exited (rc={self.proc.returncode}) before {what}; "
                        f"other output: {self.other_lines[-20:]}"
                    )
                self._changed.wait(min(remaining, 0.5))

    def summary(self) -> str:
        with self._lock:
            return "; ".join(
                f"{r.get('event')}({r.get('container', '')} {r.get('result', '')} "
                f"{r.get('cause', '')})" for r in self.records[-60:]
            )

    def events(self) -> list[str]:
        with self._lock:
            return [str(r.get("event")) for r in self.records]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode
