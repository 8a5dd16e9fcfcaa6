"""The GPU controller: the tests' hand on the simulated NVIDIA driver.

It owns one simulated world: a state directory read by the stand-in
``libnvidia-ml.so.1`` on every call, a call log, and a character device node
with NVIDIA's major number for containers.  See ``fake_nvml.c`` for the state
keys and the failure models.
"""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docker.models.containers import Container

#: NVIDIA's character device major number, and the minor of /dev/nvidiactl.
NVIDIA_MAJOR = 195
NVIDIACTL_MINOR = 255
DEVICE_RULE = f"c {NVIDIA_MAJOR}:{NVIDIACTL_MINOR} rwm"
#: Where these machines mount the cgroup2 hierarchy (beside the v1 controllers).
CGROUP2_MOUNT = Path("/sys/fs/cgroup/unified")

#: Where things appear inside a container (as the NVIDIA container toolkit puts them).
CONTAINER_LIB = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"
CONTAINER_SMI = "/usr/bin/nvidia-smi"
CONTAINER_STATE_DIR = "/var/lib/fake-nvml"
CONTAINER_LOG_DIR = "/var/log/fake-nvml"
CONTAINER_SESSION_DIR = "/run/fake-nvml"
CONTAINER_DEVICE = "/dev/nvidiactl"

DEFAULT_GPU_NAME = "NVIDIA GeForce GTX 1080 Ti"
#: The default world: as in the field report, persistence mode is off.
DEFAULT_STATE: dict[str, str] = {
    "gpu_count": "1",
    "driver_loaded": "1",
    "version_mismatch": "0",
    "gpu_lost": "0",
    "set_permitted": "1",
    "forced_error": "0",
    "session": "1",
    "probe_hang": "0",
    "init_delay_ms": "0",
    "persistence.0": "0",
    "name.0": DEFAULT_GPU_NAME,
}


@dataclass(frozen=True)
class CallRecord:
    """One NVML call as the stand-in library logged it.

    ``host`` is the caller's host name: this machine's for host processes, a
    container's (its short id, unless set) for calls made inside one.
    """

    time: float
    pid: int
    host: str
    function: str
    args: dict[str, str]
    rc: int

    @classmethod
    def parse(cls, line: str) -> CallRecord:
        """Parses one call-log line.

        Raises:
            ValueError: when the line is not a call-log line.
        """
        time_, pid, host, function, args, rc = line.rstrip("\n").split("\t")
        pairs = (item.split("=", 1) for item in args.split())
        return cls(float(time_), int(pid), host, function, dict(pairs), int(rc))


class GpuController:
    """Changes the simulated driver's world; every change is seen by the next NVML call.

    State writes are atomic (temp file + rename under an flock shared with the
    library), so the library never reads half a file and a concurrent
    set-persistence from the daemon under test is never lost.
    """

    def __init__(self, root: Path, lib_dir: Path, nvidia_smi: Path) -> None:
        """Creates a fresh world under ``root`` (which must exist) with the default state."""
        self.root = root
        self.lib_dir = lib_dir
        self.nvidia_smi = nvidia_smi
        self.state_dir = root / "state"
        self.state_file = self.state_dir / "state"
        self.log_dir = root / "log"
        self.call_log = self.log_dir / "calls.log"
        self.device_node = root / "dev" / "nvidiactl"
        for d in (self.state_dir, self.log_dir, self.device_node.parent):
            d.mkdir(parents=True, exist_ok=True)
        # Containers write the call log as root; keep it writable whatever the umask.
        self.log_dir.chmod(0o777)
        self.call_log.touch()
        self.call_log.chmod(0o666)
        if not self.device_node.exists():
            os.mknod(
                self.device_node,
                0o666 | stat.S_IFCHR,
                os.makedev(NVIDIA_MAJOR, NVIDIACTL_MINOR),
            )
        with self._locked():
            self._write(dict(DEFAULT_STATE))

    # ---- the state file -------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def state(self) -> dict[str, str]:
        """The raw state as the library sees it now (key -> value)."""
        try:
            text = self.state_file.read_text()
        except FileNotFoundError:
            return {}
        pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
        return {k: v for k, v in pairs}

    def _write(self, state: Mapping[str, str]) -> None:
        tmp = self.state_dir / f".state.{os.getpid()}.tmp"
        tmp.write_text("".join(f"{k}={v}\n" for k, v in state.items()))
        tmp.chmod(0o644)
        tmp.rename(self.state_file)

    def _update(self, **changes: str) -> None:
        with self._locked():
            state = self.state()
            state.update(changes)
            self._write(state)

    def _int(self, key: str, default: int = 0) -> int:
        return int(self.state().get(key, default))

    # ---- for host processes and containers ------------------------------

    def env(self) -> dict[str, str]:
        """Environment variables that give a host process (the daemon) this simulated GPU.

        Merge them over ``os.environ``; ``PATH`` gains the stand-in nvidia-smi.
        """
        ld = os.environ.get("LD_LIBRARY_PATH")
        return {
            "LD_LIBRARY_PATH": f"{self.lib_dir}:{ld}" if ld else str(self.lib_dir),
            "FAKE_NVML_STATE": str(self.state_file),
            "FAKE_NVML_CALL_LOG": str(self.call_log),
            "PATH": f"{self.nvidia_smi.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        }

    def run_kwargs(self, smi: bool = True) -> dict[str, Any]:
        """Docker SDK ``containers.run`` kwargs that give a container this simulated GPU.

        The library and (when ``smi``) nvidia-smi are bind-mounted read-only,
        as the NVIDIA container toolkit does.  The state *directory* is
        mounted read-only (a file mount would keep the old inode after the
        atomic rename), the call log directory read-write, a tmpfs receives
        the driver session, and the device node is passed with ``--device``,
        which adds it to the container's device cgroup.
        """
        volumes = {
            str(self.lib_dir / "libnvidia-ml.so.1"): {"bind": CONTAINER_LIB, "mode": "ro"},
            str(self.state_dir): {"bind": CONTAINER_STATE_DIR, "mode": "ro"},
            str(self.log_dir): {"bind": CONTAINER_LOG_DIR, "mode": "rw"},
        }
        if smi:
            volumes[str(self.nvidia_smi)] = {"bind": CONTAINER_SMI, "mode": "ro"}
        return {
            "volumes": volumes,
            "devices": [f"{self.device_node}:{CONTAINER_DEVICE}:rwm"],
            "tmpfs": {CONTAINER_SESSION_DIR: "size=64k"},
            "environment": {
                "FAKE_NVML_STATE": f"{CONTAINER_STATE_DIR}/state",
                "FAKE_NVML_CALL_LOG": f"{CONTAINER_LOG_DIR}/calls.log",
                "FAKE_NVML_SESSION_FILE": f"{CONTAINER_SESSION_DIR}/session",
                "FAKE_NVML_DEVICE": CONTAINER_DEVICE,
            },
        }

    # ---- changing the world ---------------------------------------------

    def set_gpu_count(self, n: int) -> None:
        """Sets the number of GPUs (new ones start with persistence off)."""
        if not 0 <= n <= 16:
            raise ValueError(f"gpu count must be 0..16, not {n}")
        self._update(gpu_count=str(n))

    def gpu_count(self) -> int:
        """The number of simulated GPUs."""
        return self._int("gpu_count", 1)

    def set_persistence(self, on: bool, index: int | None = None) -> None:
        """Sets persistence mode on GPU ``index``, or on all GPUs when None."""
        indexes = range(self.gpu_count()) if index is None else [index]
        self._update(**{f"persistence.{i}": "1" if on else "0" for i in indexes})

    def persistence(self) -> list[bool]:
        """Persistence mode of each GPU, by index."""
        state = self.state()
        return [state.get(f"persistence.{i}", "0") == "1" for i in range(self.gpu_count())]

    def idle_driver(self) -> bool:
        """The driver goes idle.  Returns True when that ended the driver session.

        With persistence mode off on any GPU, the session ends: every
        container started before now gets NVML_ERROR_UNKNOWN until restarted;
        host processes are unaffected.  With persistence on everywhere,
        nothing changes.
        """
        with self._locked():
            state = self.state()
            count = int(state.get("gpu_count", "1"))
            if all(state.get(f"persistence.{i}", "0") == "1" for i in range(count)):
                return False
            state["session"] = str(int(state.get("session", "1")) + 1)
            self._write(state)
            return True

    def session(self) -> int:
        """The current driver session number."""
        return self._int("session", 1)

    def set_driver_loaded(self, loaded: bool) -> None:
        """Loads or unloads the kernel driver: unloaded, every call answers 9, host too."""
        self._update(driver_loaded="1" if loaded else "0")

    def set_version_mismatch(self, mismatch: bool) -> None:
        """Simulates a driver upgraded without reboot: every call answers 18, host too."""
        self._update(version_mismatch="1" if mismatch else "0")

    def set_gpu_lost(self, lost: bool) -> None:
        """The GPU falls off the bus: device handles and queries answer 15."""
        self._update(gpu_lost="1" if lost else "0")

    def set_set_permitted(self, permitted: bool) -> None:
        """Whether nvmlDeviceSetPersistenceMode may succeed (else NO_PERMISSION, 4)."""
        self._update(set_permitted="1" if permitted else "0")

    def set_forced_error(self, code: int | None) -> None:
        """Makes nvmlInit answer ``code`` (None or 0: normal)."""
        self._update(forced_error=str(code or 0))

    def set_probe_hang(self, hang: bool) -> None:
        """NVML init (so ``nvidia-smi``) never returns inside containers.

        Only processes run with ``docker exec`` hang: the bench workload's own
        ``nvidia-smi`` is exempt, so its log keeps going.
        """
        self._update(probe_hang="1" if hang else "0")

    def set_init_delay(self, ms: int) -> None:
        """Makes every NVML init take ``ms`` milliseconds longer."""
        self._update(init_delay_ms=str(ms))

    def revoke_device_access(self, container: Container) -> None:
        """Denies the running container its NVIDIA device node, as a systemd daemon-reload does.

        Writes ``c 195:255 rwm`` to the container's cgroup v1 ``devices.deny``
        (found through its init process).  ``docker restart`` restores access.

        Raises:
            RuntimeError: when the container is not running or has no devices cgroup.
        """
        self._write_device_rule(container, "devices.deny")

    def restore_device_access(self, container: Container) -> None:
        """Allows the device node again without a restart (``devices.allow``)."""
        self._write_device_rule(container, "devices.allow")

    def revoke_device_access_v2(self, container: Container) -> None:
        """Denies the running container its NVIDIA device nodes the cgroup v2 way.

        Attaches a ``BPF_PROG_TYPE_CGROUP_DEVICE`` program denying char major
        195 to the container's cgroup2 directory with ``BPF_F_ALLOW_MULTI``,
        beside runc's own, as systemd's ``sd_devices`` program does on a
        daemon-reload: every attached program must allow an open, so opening
        ``/dev/nvidiactl`` inside fails with EPERM while ``/dev/null`` works.
        The host and the v1 ``devices.list`` are untouched; ``docker restart``
        gives the container a new cgroup and so restores access.

        Raises:
            RuntimeError: when the container is not running, has no cgroup2
                directory, or the kernel refuses the program.
        """
        self._cgdevdeny("attach", self.cgroup2_dir(container))

    def restore_device_access_v2(self, container: Container) -> int:
        """Detaches the programs :meth:`revoke_device_access_v2` attached (only those).

        Returns how many were detached (0 when none, e.g. after a restart).
        """
        return int(self._cgdevdeny("detach", self.cgroup2_dir(container)))

    def v2_denials(self, container: Container) -> int:
        """How many of the bench's deny programs the container's cgroup2 directory has."""
        return int(self._cgdevdeny("count", self.cgroup2_dir(container)))

    @staticmethod
    def cgroup2_dir(container: Container) -> Path:
        """The container's cgroup2 directory: its ``0::`` line under the cgroup2 mount."""
        container.reload()
        pid = int(container.attrs["State"]["Pid"])
        if pid <= 0:
            raise RuntimeError(f"container {container.name} is not running")
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return CGROUP2_MOUNT / line[3:].lstrip("/")
        raise RuntimeError(f"container {container.name} has no cgroup2 directory")

    def _cgdevdeny(self, command: str, directory: Path) -> str:
        tool = self.nvidia_smi.parent / "cgdevdeny"
        proc = subprocess.run(
            [str(tool), command, str(directory)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"cgdevdeny {command} {directory}: {proc.stderr.strip()}")
        return proc.stdout.strip() or "0"

    @staticmethod
    def _write_device_rule(container: Container, control: str) -> None:
        container.reload()
        pid = int(container.attrs["State"]["Pid"])
        if pid <= 0:
            raise RuntimeError(f"container {container.name} is not running")
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "devices" in controllers.split(","):
                Path(f"/sys/fs/cgroup/devices{path}/{control}").write_text(DEVICE_RULE)
                return
        raise RuntimeError(f"container {container.name} has no cgroup v1 devices controller")

    # ---- the call log ----------------------------------------------------

    def calls(self, function: str | None = None) -> list[CallRecord]:
        """NVML calls logged so far (host and containers), oldest first; optionally one function."""
        records = [
            CallRecord.parse(line) for line in self.call_log.read_text().splitlines() if line
        ]
        return [r for r in records if function is None or r.function == function]

    def clear_calls(self) -> None:
        """Empties the call log."""
        with self.call_log.open("r+") as f:
            f.truncate(0)
