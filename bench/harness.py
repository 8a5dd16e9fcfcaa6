"""The benchmark lab: the real engine, the stand-in driver, the real daemon as a subprocess.

Everything a measurement needs, and nothing it must remember to undo:

- :class:`Lab` builds the bench (stand-in ``libnvidia-ml.so.1``, images),
  creates a fresh simulated GPU world in a temporary directory, starts
  containers that carry :data:`LAB_LABEL` (so :meth:`Lab.cleanup` removes
  every one of them by label, even after a failure) and starts daemons.
- :class:`Daemon` is ``python -m gpuwatchd run --log-format json`` with its
  records parsed from stderr (see :class:`tests.live.daemon_process.DaemonProcess`)
  and, optionally, its own ``NOTIFY_SOCKET`` to time ``READY=1``.
- :class:`Injector` writes lines into a container's stdout from the host
  (``/proc/<pid>/fd/1``, the pipe the engine reads), noting ``time.time()``
  right before the write: an exact start for every latency, with no
  ``docker exec`` in between.
- :func:`proc_sample` reads a process's CPU time, RSS, threads and open
  descriptors from ``/proc`` (read only; also used for dockerd).
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from tests.bench import ER05_LINE, Bench, GpuController, build_bench
from tests.live.conftest import render_toml
from tests.live.daemon_process import DaemonProcess, Record

#: Every container a benchmark starts carries this label (value: the run's id).
LAB_LABEL = "gpuwatchd-bench.bench"
#: A KonomiTV-like line of ordinary size, for floods.
FLOOD_LINE = "[INFO] [Live: gr041-1080p] [Status: ONAir] ストリーミング中 bitrate=8123kbps frame=%d"
#: Workload settings for a quiet container: no nvidia-smi of its own, one
#: status line an hour, so only the daemon's probes touch NVML in it.
QUIET = {"WORKLOAD_PROBE": "0", "WORKLOAD_INTERVAL": "3600"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def record_time(record: Record) -> float:
    """A record's ``timestamp`` (ISO 8601, milliseconds, UTC) as epoch seconds."""
    return datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00")).timestamp()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """n, median, p95, p99, max of durations given in seconds, in milliseconds."""
    ms = [s * 1000.0 for s in seconds]
    if not ms:
        return {"n": 0, "median_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 1),
        "p95_ms": round(percentile(ms, 95), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(max(ms), 1),
    }


# ---- /proc -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    """One look at a process: CPU seconds so far, RSS, threads, open descriptors."""

    at: float  #: time.monotonic() of the sample
    cpu_s: float  #: utime + stime
    rss_mb: float
    threads: int
    fds: int


def proc_sample(pid: int) -> ProcSample:
    """Reads ``/proc/<pid>`` (nothing is written). Raises OSError when the process is gone."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name (which may hold spaces) start at ") ".
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    rss_kb = int(status["VmRSS"].split()[0])
    threads = int(status["Threads"])
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except PermissionError:
        fds = -1
    return ProcSample(time.monotonic(), cpu, rss_kb / 1024.0, threads, fds)


def cpu_percent(a: ProcSample, b: ProcSample) -> float:
    """CPU between two samples as % of one core."""
    wall = b.at - a.at
    return round(100.0 * (b.cpu_s - a.cpu_s) / wall, 2) if wall > 0 else float("nan")


def dockerd_pid() -> int | None:
    """The shared engine's PID (from /var/run/docker.pid, else ``pidof dockerd``)."""
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/var/run/docker.pid").read_text().strip())
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError, IndexError):
        out = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True, check=False)
        return int(out.stdout.split()[0])
    return None


def usage_between(pid: int | None, a: ProcSample | None, b: ProcSample | None) -> dict[str, Any]:
    """CPU % of one core, RSS, threads and fds at the end, for a JSON figure."""
    if pid is None or a is None or b is None:
        return {"cpu_pct": None, "rss_mb": None, "threads": None, "fds": None}
    return {
        "cpu_pct": cpu_percent(a, b),
        "rss_mb": round(b.rss_mb, 1),
        "threads": b.threads,
        "fds": b.fds,
    }


def safe_sample(pid: int | None) -> ProcSample | None:
    """:func:`proc_sample`, or None when there is no such process."""
    if pid is None:
        return None
    try:
        return proc_sample(pid)
    except OSError:
        return None


# ---- the machine -----------------------------------------------------------------


def machine_info(client: docker.DockerClient) -> dict[str, Any]:
    """CPU count, memory, kernel, Python, Docker engine version and drivers."""
    info = client.info()
    version = client.version()
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker_version": version.get("Version"),
        "docker_api": version.get("ApiVersion"),
        "cgroup": f"v{info.get('CgroupVersion', '?')} ({info.get('CgroupDriver', '?')})",
        "storage_driver": info.get("Driver"),
        "log_driver": info.get("LoggingDriver"),
        "others_running_containers": None,  # filled in by the runner
    }


# ---- the daemon ------------------------------------------------------------------


class NotifyListener:
    """An ``AF_UNIX`` datagram socket standing in for systemd's notify socket."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"notify-{secrets.token_hex(3)}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.ready_at: float | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if self.ready_at is None and b"READY=1" in data.split(b"\n"):
                self.ready_at = time.time()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


class Daemon(DaemonProcess):
    """The real daemon, started by :meth:`Lab.start_daemon`; ``started`` is just before exec."""

    started: float
    notify: NotifyListener | None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def times(self, event: str, **fields: Any) -> list[float]:
        """Record times (epoch seconds) of every ``event`` record matching ``fields``."""
        return [record_time(r) for r in self.find(event, **fields)]


# ---- containers and lines -------------------------------------------------------


class Injector:
    """Writes lines into containers' stdout from the host, through ``/proc/<pid>/fd/1``.

    The descriptors are non-blocking: a full pipe (the engine not reading fast
    enough) is counted in :attr:`backpressure`, never waited on.
    """

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self.backpressure = 0  #: writes refused because the pipe was full
        self.lines = 0  #: lines written

    def open(self, container: Container) -> None:
        container.reload()
        pid = int(container.attrs["State"]["Pid"])
        self._fds[container.name] = os.open(f"/proc/{pid}/fd/1", os.O_WRONLY | os.O_NONBLOCK)

    def write(self, name: str, text: str) -> float | None:
        """Writes ``text`` (one or more lines, newline-terminated); returns the time just
        before the write, or None when the pipe was full."""
        data = text.encode()
        at = time.time()
        try:
            os.write(self._fds[name], data)
        except BlockingIOError:
            self.backpressure += 1
            return None
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                return None
            raise
        self.lines += text.count("\n")
        return at

    def er05(self, name: str) -> float | None:
        """Writes the ER-05 line; returns the time just before the write."""
        return self.write(name, ER05_LINE + "\n")

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


def engine_time(container: Container, text: str, since: float) -> float | None:
    """When the engine received the first line containing ``text`` logged from ``since``
    (``docker logs --timestamps``), as epoch seconds; None when there is none."""
    raw: bytes = container.logs(timestamps=True, since=int(since) - 1, stdout=True, stderr=True)
    for line in raw.decode(errors="replace").splitlines():
        stamp, _, rest = line.partition(" ")
        if text in rest:
            # Nanoseconds: keep microseconds, which fromisoformat understands.
            head, _, frac = stamp.rstrip("Z").partition(".")
            at = datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()
            if at >= since - 1.0:
                return at
    return None


class Lab:
    """One benchmark run's world.  Use as a context manager: cleanup always runs."""

    def __init__(self, quiet: bool = False) -> None:
        self.client = docker.from_env(timeout=300)
        self.client.ping()
        self.bench: Bench = build_bench(self.client)
        self.run_id = f"{int(time.time())}-{secrets.token_hex(2)}"
        self.root = Path(tempfile.mkdtemp(prefix="gpuwatchd-bench-"))
        gpu_root = self.root / "gpu"
        gpu_root.mkdir()
        self.gpu = GpuController(gpu_root, self.bench.lib_dir, self.bench.nvidia_smi)
        self.daemons: list[Daemon] = []
        self.notifiers: list[NotifyListener] = []
        self._count = 0
        self.quiet = quiet

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"  .. {text}", file=sys.stderr, flush=True)

    # -- containers --

    def start_containers(
        self,
        n: int,
        *,
        environment: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        prefix: str = "c",
        parallel: int = 4,
    ) -> list[Container]:
        """Starts ``n`` konomi containers with the simulated GPU, ``parallel`` at a time."""

        def one(i: int) -> Container:
            kwargs = self.gpu.run_kwargs()
            env = {**kwargs.pop("environment"), **(environment or {})}
            name = f"gwb-{self.run_id}-{prefix}{i}"
            container: Container = self.client.containers.run(
                self.bench.konomi_image,
                detach=True,
                name=name,
                network_mode="none",
                labels={LAB_LABEL: self.run_id, **(labels or {})},
                environment=env,
                **kwargs,
            )
            return container

        start = self._count
        self._count += n
        with ThreadPoolExecutor(parallel) as pool:
            return list(pool.map(one, range(start, start + n)))

    def remove(self, containers: Iterable[Container], parallel: int = 4) -> None:
        """Force-removes containers (missing ones are fine)."""

        def rm(c: Container) -> None:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                c.remove(force=True, v=True)

        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(rm, containers))

    # -- daemons --

    def start_daemon(
        self,
        sections: dict[str, dict[str, Any]] | None = None,
        *,
        notify: bool = False,
    ) -> Daemon:
        """Starts ``gpuwatchd run --log-format json`` with state under the lab's directory."""
        index = len(self.daemons)
        merged: dict[str, dict[str, Any]] = {
            "daemon": {
                "state_dir": str(self.root / f"state{index}"),
                "runtime_dir": str(self.root / f"run{index}"),
            },
        }
        for section, keys in (sections or {}).items():
            merged.setdefault(section, {}).update(keys)
        path = self.root / f"config{index}.toml"
        path.write_text(render_toml(merged))
        path.chmod(0o600)
        env = dict(self.gpu.env())
        listener = None
        if notify:
            listener = NotifyListener(self.root)
            self.notifiers.append(listener)
            env["NOTIFY_SOCKET"] = str(listener.path)
        else:
            env["NOTIFY_SOCKET"] = ""
        started = time.time()
        daemon = Daemon(path, env)
        daemon.started = started
        daemon.notify = listener
        self.daemons.append(daemon)
        return daemon

    def stop_daemon(self, daemon: Daemon) -> None:
        daemon.stop()

    def watch_names(self, containers: Sequence[Container]) -> dict[str, Any]:
        """A ``[watch]`` section that selects exactly these containers by name."""
        return {"containers": [c.name for c in containers], "labels": []}

    def wait_watched(self, daemon: Daemon, containers: Sequence[Container], timeout: float) -> None:
        names = {c.name for c in containers}

        def all_in(records: list[Record]) -> bool:
            seen = {r.get("container") for r in records if r.get("event") == "watch_set_changed"}
            return names <= seen

        daemon.wait_until(all_in, timeout, f"{len(names)} containers watched")

    # -- the end --

    def cleanup(self) -> None:
        """Stops every daemon, removes every container with this run's label, deletes files."""
        for daemon in self.daemons:
            with contextlib.suppress(Exception):
                daemon.stop()
        for listener in self.notifiers:
            listener.close()
        with contextlib.suppress(docker.errors.DockerException):
            leftovers = self.client.containers.list(
                all=True, filters={"label": f"{LAB_LABEL}={self.run_id}"}
            )
            self.remove(leftovers)
        shutil.rmtree(self.root, ignore_errors=True)
        self.client.close()


def remove_stale_lab_containers(client: docker.DockerClient, older_than: float = 3600.0) -> int:
    """Removes benchmark containers (label :data:`LAB_LABEL`) created over ``older_than``
    seconds ago: what a killed run left behind. A run in progress is left alone."""
    removed = 0
    now = time.time()
    for c in client.containers.list(all=True, filters={"label": LAB_LABEL}):
        created = datetime.fromisoformat(
            str(c.attrs["Created"]).rstrip("Z").split(".")[0] + "+00:00"
        ).timestamp()
        if now - created < older_than:
            continue
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            c.remove(force=True, v=True)
            removed += 1
    return removed
