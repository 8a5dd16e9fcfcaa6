"""Small in-memory stand-ins for the adapters' Protocols, for fast tests.

They live beside :mod:`gpuwatchd.adapters.protocols`, in the package, so that
mypy checks each fake against its Protocol whenever either changes, and any
test (unit, fault, benchmark) can import them. The daemon never uses them.
Each fake keeps the calls it was given (``calls``) and raises what a test put
in ``fail`` under the method's name, so a test states the world and reads
what was asked of it. No fake talks to a real engine, driver or kernel.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from gpuwatchd.adapters.docker_engine import ContainerInfo, ExecOutcome
from gpuwatchd.adapters.protocols import DockerPort, HostPort, NvmlPort
from gpuwatchd.core.device_access import Access, AccessCheck
from gpuwatchd.core.docker_inspect import EngineVersion
from gpuwatchd.model.events import Gpu


class _Calls:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        #: method name -> exception it raises (once when ``once`` holds the name).
        self.fail: dict[str, BaseException] = {}
        self.once: set[str] = set()

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        exc = self.fail.get(name)
        if exc is not None:
            if name in self.once:
                del self.fail[name]
            raise exc

    def called(self, name: str) -> list[tuple[Any, ...]]:
        """The arguments of every call of ``name``, in order."""
        return [call[1:] for call in self.calls if call[0] == name]


class FakeStream:
    """A stream that yields what is :meth:`push`-ed until closed (thread-safe)."""

    def __init__(self, items: tuple[Any, ...] = ()) -> None:
        self._items: queue.Queue[Any] = queue.Queue()
        self._closed = threading.Event()
        for item in items:
            self.push(item)

    def push(self, item: Any) -> None:
        self._items.put(item)

    def close(self) -> None:
        self._closed.set()
        self._items.put(None)

    def __iter__(self) -> Iterator[Any]:
        while not self._closed.is_set():
            item = self._items.get()
            if item is None:
                return
            yield item


class FakeDocker(_Calls):
    """An engine holding ``containers`` (by ID); restart gives a new start time.

    ``probe`` is every exec's outcome. Event and log streams are
    :class:`FakeStream` objects a test can push to (``events``, ``logs[id]``).
    """

    def __init__(self, *containers: ContainerInfo, cgroup_driver: str = "cgroupfs") -> None:
        super().__init__()
        self.containers = {c.id: c for c in containers}
        self.cgroup_driver = cgroup_driver
        self.probe = ExecOutcome(0, b"")
        self.events = FakeStream()
        self.logs: dict[str, FakeStream] = {}

    def ping(self) -> EngineVersion:
        self._call("ping")
        return EngineVersion("Docker", "fake")

    def info(self) -> dict[str, Any]:
        self._call("info")
        return {"CgroupDriver": self.cgroup_driver}

    def list_containers(
        self, select: Callable[[ContainerInfo], bool] | None = None
    ) -> list[ContainerInfo]:
        self._call("list_containers")
        return [c for c in self.containers.values() if select is None or select(c)]

    def inspect(self, ref: str) -> ContainerInfo | None:
        self._call("inspect", ref)
        return self.containers.get(ref)

    def restart(self, ref: str, stop_timeout: float) -> None:
        self._call("restart", ref, stop_timeout)
        info = self.containers[ref]
        self.containers[ref] = replace(info, status="running", started_at=info.started_at + 10)

    def exec_probe(self, ref: str, argv: tuple[str, ...], timeout: float) -> ExecOutcome:
        self._call("exec_probe", ref, argv, timeout)
        return self.probe

    def log_stream(self, ref: str, since: float) -> FakeStream:
        self._call("log_stream", ref, since)
        return self.logs.setdefault(ref, FakeStream())

    def event_stream(self, since: float | None = None) -> FakeStream:
        self._call("event_stream")
        return self.events

    def close(self) -> None:
        self.events.close()


class FakeNvml(_Calls):
    """A driver with ``gpus``; ``set_persistence`` changes the GPU it names."""

    def __init__(self, *gpus: Gpu) -> None:
        super().__init__()
        self.gpus = tuple(gpus)

    def read_gpus(self) -> tuple[Gpu, ...]:
        self._call("read_gpus")
        return self.gpus

    def set_persistence(self, index: int, enabled: bool = True) -> None:
        self._call("set_persistence", index, enabled)
        self.gpus = tuple(replace(g, persistence=enabled) if g.index == index else g
                          for g in self.gpus)


class FakeHost(_Calls):
    """A host whose kernel answers ``access`` and whose scopes show ``device_allow``.

    With ``hold`` set, ``scope_device_allow`` blocks until it is set (a slow
    ``systemctl``).
    """

    def __init__(self, access: Access = Access.ALLOWED, device_allow: str | None = None) -> None:
        super().__init__()
        self.access = access
        self.device_allow = device_allow
        self.hold: threading.Event | None = None

    def device_access(self, info: ContainerInfo) -> AccessCheck:
        self._call("device_access", info.id)
        return AccessCheck(self.access, "fake")

    def scope_device_allow(self, info: ContainerInfo) -> str | None:
        self._call("scope_device_allow", info.id)
        if self.hold is not None:
            self.hold.wait(10.0)
        return self.device_allow


def _conforms(docker: FakeDocker, nvml: FakeNvml, host: FakeHost,
              ) -> tuple[DockerPort, NvmlPort, HostPort]:
    return docker, nvml, host  # mypy proves each fake satisfies its Protocol
