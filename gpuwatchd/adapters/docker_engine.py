"""Everything gpuwatchd asks of the Docker engine, as blocking calls.

The docker SDK is synchronous: the daemon calls these from worker threads
(short calls through a bounded executor, long-lived streams on dedicated
threads), never from the event loop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import docker
import docker.errors
import requests.exceptions

from gpuwatchd.core.docker_inspect import (
    EngineVersion,
    container_info,
    engine_version,
    is_nvidia_mount,
    summary_info,
)
from gpuwatchd.model.container import ContainerInfo as ContainerInfo
from gpuwatchd.text import one_line

#: Major number of the NVIDIA character devices (/dev/nvidia0.., /dev/nvidiactl).
NVIDIA_MAJOR = 195
NVIDIACTL_MINOR = 255
#: Container events that change the watch set (exec_* events are our own probes).
WATCHED_EVENTS = ["create", "start", "die", "destroy", "rename", "pause", "unpause"]
#: Engine-specific action names and Docker's names for them (Podman says
#: ``remove`` where Docker says ``destroy``).
ACTION_ALIASES = {"remove": "destroy"}
#: Probe output kept for classification and records; the rest is drained unread.
MAX_PROBE_OUTPUT = 64 * 1024

DockerError = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


class DockerUnavailable(Exception):
    """The engine did not answer (socket missing, refused, or timed out)."""


@dataclass(frozen=True)
class ExecOutcome:
    """The raw result of one ``docker exec``; classification happens elsewhere."""

    exit_code: int | None
    output: bytes
    timed_out: bool = False
    exec_error: str | None = None  #: the engine refused the exec (message)


def with_kernel_gpu_facts(info: ContainerInfo, proc: Path = Path("/proc")) -> ContainerInfo:
    """``info`` with what the kernel shows of its running process: an NVIDIA
    device node in its /dev (``expects_nvidia_device``), NVIDIA library mounts
    or device nodes (``uses_gpu``).  Unchanged when not running, or when the
    PID is not the container's (another PID namespace)."""
    if info.pid <= 0 or (info.uses_gpu and info.expects_nvidia_device):
        return info
    if not _pid_in_container(info.pid, info.id, proc):
        return info
    node = _has_nvidia_node(info.pid, proc)
    mounts = False
    try:
        for line in (proc / str(info.pid) / "mountinfo").read_text().splitlines():
            fields = line.split()
            if len(fields) > 4 and is_nvidia_mount(fields[4]):
                mounts = True
                break
    except OSError:
        pass
    if not (node or mounts):
        return info
    return replace(info, uses_gpu=True,
                   expects_nvidia_device=info.expects_nvidia_device or node)


def _has_nvidia_node(pid: int, proc: Path) -> bool:
    """True when the process's /dev holds /dev/nvidiactl (read through /proc/<pid>/root)."""
    try:
        return (proc / str(pid) / "root" / "dev" / "nvidiactl").exists()
    except OSError:
        return False


def device_access_ok(info: ContainerInfo, proc: Path = Path("/proc"),
                     cgroup_root: Path = Path("/sys/fs/cgroup")) -> bool | None:
    """Whether the container's device cgroup still lets it open /dev/nvidiactl.

    True or False only on cgroup v1, where ``devices.list`` shows the rules;
    None when it cannot be told (cgroup v2 uses eBPF programs and lists nothing,
    the container is gone, or it was never given an NVIDIA device: neither
    inspect nor its own /dev shows one).  The cgroup is the one
    ``/proc/<pid>/cgroup`` names, whatever the engine.
    """
    if info.pid <= 0 or not (info.expects_nvidia_device or _has_nvidia_node(info.pid, proc)):
        return None
    try:
        lines = (proc / str(info.pid) / "cgroup").read_text().splitlines()
    except OSError:
        return None
    path = None
    for line in lines:
        _, controllers, cg_path = line.split(":", 2)
        if "devices" in controllers.split(","):
            path = cg_path
            break
    if path is None:
        return None  # cgroup v2 (or no devices controller): no list to read
    try:
        rules = (cgroup_root / "devices" / path.lstrip("/") / "devices.list").read_text()
    except OSError:
        return None
    return _rules_allow(rules.split("\n"), NVIDIA_MAJOR, NVIDIACTL_MINOR)


def _rules_allow(rules: list[str], major: int, minor: int) -> bool:
    for rule in rules:
        parts = rule.split()
        if len(parts) != 3:
            continue
        kind, numbers, access = parts
        if kind == "a":
            return True
        maj, _, mnr = numbers.partition(":")
        if (
            kind == "c"
            and maj in ("*", str(major))
            and mnr in ("*", str(minor))
            and "r" in access
            and "w" in access
        ):
            return True
    return False


class DockerGateway:
    """Blocking access to one Docker engine.

    Two SDK clients: one for short calls, with a pool the size of the worker
    executor, and one for long-lived streams (log followers, events), each of
    which holds a connection for as long as it runs.
    """

    def __init__(self, host: str = "", timeout: float = 30.0, pool_size: int = 8) -> None:
        base_url = host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        self.base_url = base_url
        self.timeout = timeout
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._clients: dict[str, docker.DockerClient] = {}

    def _get(self, kind: str, pool_size: int) -> docker.DockerClient:
        # Created on first use, not in __init__: the SDK asks the engine for its
        # API version when a client is built, and a daemon must start (degraded)
        # while the engine is down.
        client = self._clients.get(kind)
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(kind)
            if client is None:
                try:
                    client = docker.DockerClient(
                        base_url=self.base_url, timeout=int(max(1, self.timeout)),
                        max_pool_size=pool_size,
                    )
                except DockerError as exc:
                    raise DockerUnavailable(one_line(exc)) from exc
                self._clients[kind] = client
        return client

    @property
    def _client(self) -> docker.DockerClient:
        return self._get("calls", self._pool_size)

    @property
    def _stream_client(self) -> docker.DockerClient:
        return self._get("streams", 1024)

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def ping(self) -> EngineVersion:
        """Which engine answers, and its version; raises DockerUnavailable when none does."""
        try:
            return engine_version(self._client.version())
        except DockerError as exc:
            raise DockerUnavailable(one_line(exc)) from exc

    def info(self) -> dict[str, Any]:
        try:
            return dict(self._client.info())
        except DockerError as exc:
            raise DockerUnavailable(one_line(exc)) from exc

    def list_containers(
        self, select: Callable[[ContainerInfo], bool] | None = None
    ) -> list[ContainerInfo]:
        """Every container that exists, running or not, from full inspect data.

        ``select`` sees a summary (ID, name, status, labels; no GPU details)
        and decides which containers are worth a full inspect: on a host with
        hundreds of containers, inspecting only candidates keeps a resync cheap.
        """
        try:
            summaries = self._client.api.containers(all=True)
        except DockerError as exc:
            raise DockerUnavailable(one_line(exc)) from exc
        result = []
        for summary in summaries:
            if select is not None and not select(summary_info(summary)):
                continue
            info = self.inspect(summary["Id"])
            if info is not None:
                result.append(info)
        return result

    def inspect(self, ref: str) -> ContainerInfo | None:
        """Inspect one container by ID or name; None when it no longer exists."""
        attrs = self.inspect_attrs(ref)
        return None if attrs is None else with_kernel_gpu_facts(container_info(attrs))

    def inspect_attrs(self, ref: str) -> dict[str, Any] | None:
        """The raw ``docker inspect`` data of one container; None when it does not exist.

        Raises:
            DockerUnavailable: the engine did not answer.
        """
        try:
            return dict(self._client.api.inspect_container(ref))
        except docker.errors.NotFound:
            return None
        except DockerError as exc:
            raise DockerUnavailable(one_line(exc)) from exc

    def recent_logs(self, ref: str, since: float, tail: int) -> bytes:
        """At most the last ``tail`` lines of stdout and stderr since ``since`` (epoch
        seconds), each prefixed with Docker's RFC 3339 timestamp and a space.

        Raises:
            DockerUnavailable: the engine did not answer.
            docker.errors.APIError: the engine refused (e.g. a log driver that
                cannot be read back, or the container is gone).
        """
        try:
            data = self._client.api.logs(
                ref, stdout=True, stderr=True, stream=False, timestamps=True,
                since=int(since), tail=tail,
            )
        except docker.errors.APIError:
            raise
        except DockerError as exc:
            raise DockerUnavailable(one_line(exc)) from exc
        return bytes(data)

    def restart(self, ref: str, stop_timeout: float) -> None:
        """``docker restart`` with ``stop_timeout`` as the stop grace period."""
        try:
            self._client.api.restart(ref, timeout=round(stop_timeout))
        except docker.errors.APIError:
            raise  # the engine answered (NotFound included): the caller decides
        except DockerError as exc:
            raise DockerUnavailable(one_line(exc)) from exc

    def exec_probe(self, ref: str, argv: tuple[str, ...], timeout: float,
                   max_output: int = MAX_PROBE_OUTPUT) -> ExecOutcome:
        """Run ``argv`` in the container, bounded in time and captured size.

        The Docker API cannot kill an exec, so on timeout the probe's process is
        killed from the host by the PID the engine reports for the exec.
        """
        api = self._client.api
        try:
            exec_id = api.exec_create(ref, list(argv), stdout=True, stderr=True)["Id"]
            stream = api.exec_start(exec_id, stream=True)
        except docker.errors.APIError as exc:
            return ExecOutcome(None, b"", exec_error=one_line(exc))
        except DockerError as exc:
            raise DockerUnavailable(one_line(exc)) from exc

        timed_out = threading.Event()

        def kill_probe() -> None:
            timed_out.set()
            try:
                data = api.exec_inspect(exec_id)
                pid = int(data.get("Pid") or 0)
                if pid > 0 and _pid_in_container(pid, str(data.get("ContainerID", ""))):
                    os.kill(pid, signal.SIGKILL)
            except (*DockerError, ProcessLookupError):
                pass
            # Belt and braces: if the kill could not land, stop reading anyway.
            threading.Timer(2.0, stream.close).start()

        timer = threading.Timer(timeout, kill_probe)
        timer.daemon = True
        timer.start()
        chunks: list[bytes] = []
        kept = 0
        try:
            for chunk in stream:
                if kept < max_output:
                    chunks.append(chunk[: max_output - kept])
                    kept += len(chunks[-1])
        except DockerError:
            pass  # the stream was closed under us after a timeout
        finally:
            timer.cancel()
            stream.close()  # its socket is not pooled: close it, do not leave it to GC
        output = b"".join(chunks)
        if timed_out.is_set():
            return ExecOutcome(None, output, timed_out=True)
        try:
            exit_code = api.exec_inspect(exec_id).get("ExitCode")
        except DockerError as exc:
            raise DockerUnavailable(one_line(exc)) from exc
        return ExecOutcome(None if exit_code is None else int(exit_code), output)

    def log_stream(self, ref: str, since: float) -> LogStream:
        """Follow stdout and stderr of a container from ``since`` (epoch seconds)."""
        try:
            raw = self._stream_client.api.logs(
                ref, stdout=True, stderr=True, stream=True, follow=True, since=since
            )
        except docker.errors.APIError:
            raise  # the engine answered (NotFound included): the caller decides
        except DockerError as exc:
            raise DockerUnavailable(one_line(exc)) from exc
        return LogStream(raw)

    def event_stream(self, since: float | None = None) -> EventStream:
        """Container events in :data:`WATCHED_EVENTS` (start, die, destroy, ...) as dicts.

        The engine is asked for container events only and the actions are
        picked here: Podman before 4.4 refuses ``die`` as a filter and then
        silently drops those events.
        """
        try:
            raw = self._stream_client.api.events(
                since=since, decode=True, filters={"type": "container"}
            )
        except DockerError as exc:
            raise DockerUnavailable(one_line(exc)) from exc
        return EventStream(raw, actions=frozenset(WATCHED_EVENTS))


class _Stream:
    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._closed = False

    def close(self) -> None:
        """Stop the stream from another thread: the reading thread sees it end."""
        self._closed = True
        # Closing a socket the engine already dropped may fail in many ways.
        with contextlib.suppress(Exception):
            self._raw.close()


class _Closable(Protocol):
    def close(self) -> None: ...


class StreamThread:
    """A dedicated thread that reads one Docker stream until stopped.

    :meth:`stop` returns at once: it closes the stream, which ends the
    blocking read on the thread. Subclasses implement :meth:`_run` and keep
    the stream they read in ``self._stream``.
    """

    def __init__(self, name: str) -> None:
        self._stopping = threading.Event()
        self._stream: _Closable | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; returns at once (the thread exits soon after)."""
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            stream.close()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        raise NotImplementedError


class LogStream(_Stream):
    """Raw log chunks (bytes); one chunk is one write of the program, not a line."""

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._raw
        except DockerError:
            if not self._closed:
                raise


class EventStream(_Stream):
    """Decoded events, their actions in Docker's names (:data:`ACTION_ALIASES`);
    with ``actions``, only events whose action is one of them."""

    def __init__(self, raw: Any, actions: frozenset[str] | None = None) -> None:
        super().__init__(raw)
        self._actions = actions

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for event in self._raw:
                action = event_action(event)
                if action in ACTION_ALIASES:
                    action = ACTION_ALIASES[action]
                    event = {**event, "Action": action, "status": action}
                if self._actions is None or action in self._actions:
                    yield event
        except DockerError:
            if not self._closed:
                raise


def event_action(event: Mapping[str, Any]) -> str:
    """An event's action without its detail (``exec_create: sh -c ...`` -> ``exec_create``)."""
    action = str(event.get("Action") or event.get("status") or "")
    return action.split(":", 1)[0].strip()


def _pid_in_container(pid: int, container_id: str, proc: Path = Path("/proc")) -> bool:
    """True when host ``pid`` is a process of the container.

    The engine reports host PIDs; a gpuwatchd in another PID namespace (a
    container, a test box) would see a different process under that number,
    so it kills only a process whose cgroup names the container.
    """
    if not container_id:
        return False
    try:
        return container_id in (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return False
