"""A fake clock and a scripted executor around the pure core (no Docker, no NVML)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gpuwatchd.config import (
    Config,
    ContainerOverride,
    GpuConfig,
    ProbeConfig,
    RemediationConfig,
)
from gpuwatchd.core.machine import Core
from gpuwatchd.model.events import (
    Action,
    ContainerRef,
    ContainerState,
    ContainerWatched,
    Emit,
    Event,
    Gpu,
    GpuSnapshot,
    PersistenceSetFinished,
    PersistenceSetResult,
    ProbeFinished,
    RestartContainer,
    RestartFinished,
    RestartOutcome,
    RunProbe,
    SaveState,
    ScheduleWakeup,
    SetPersistence,
)
from gpuwatchd.model.records import Record
from gpuwatchd.model.state import PersistedState
from gpuwatchd.model.vocabulary import ProbeResult

T0 = 1_767_139_200.0  #: 2025-12-31, the field report's day
KONOMI = ContainerRef("a" * 64, "KonomiTV")
OTHER = ContainerRef("b" * 64, "Mirakurun")
GPU0 = Gpu(0, "GPU-00000000-0000-0000-0000-000000000000", "NVIDIA GeForce GTX 1080 Ti", True)
GPU0_OFF = Gpu(GPU0.index, GPU0.uuid, GPU0.name, False)


def make_config(
    *,
    max_restarts: int = 3,
    window: float = 3600.0,
    cooldown: float = 120.0,
    verify_timeout: float = 60.0,
    start_grace: float = 5.0,
    enforce_persistence: bool = True,
    overrides: Mapping[str, ContainerOverride] | None = None,
) -> Config:
    return Config(
        gpu=GpuConfig(enforce_persistence=enforce_persistence),
        probe=ProbeConfig(start_grace=start_grace),
        remediation=RemediationConfig(
            max_restarts=max_restarts,
            window=window,
            cooldown=cooldown,
            verify_timeout=verify_timeout,
        ),
        containers=dict(overrides or {}),
    )


def records(actions: Iterable[Action]) -> list[Record]:
    return [a.record for a in actions if isinstance(a, Emit)]


def count_of(record: Record) -> int:
    """The occurrences a record stands for (``count``, default 1)."""
    value = record.fields.get("count", 1)
    assert isinstance(value, int)
    return value


def names(actions: Iterable[Action]) -> list[str]:
    return [r.event for r in records(actions)]


def of(actions: Iterable[Action], kind: type) -> list[Action]:
    return [a for a in actions if isinstance(a, kind)]


@dataclass
class Harness:
    """Drives a Core with explicit times; delivers its wakeups when time advances."""

    config: Config = field(default_factory=make_config)
    state: PersistedState | None = None
    dry_run: bool = False
    now: float = T0
    log: list[Action] = field(default_factory=list)
    pending: list[ScheduleWakeup] = field(default_factory=list)
    timeline: list[tuple[float, Action]] = field(default_factory=list)  #: (when, action)

    def __post_init__(self) -> None:
        self.core = Core(self.config, self.state, dry_run=self.dry_run)
        self._take(self.core.start(self.now))

    def _take(self, actions: list[Action]) -> list[Action]:
        self.log.extend(actions)
        self.timeline.extend((self.now, a) for a in actions)
        self.pending.extend(a for a in actions if isinstance(a, ScheduleWakeup))
        return actions

    def send(self, event: Event, at: float | None = None) -> list[Action]:
        """Deliver ``event`` (at ``at``, after any wakeups due by then); returns all actions."""
        out = self.advance(at) if at is not None else []
        return out + self._take(self.core.handle(event, self.now))

    def advance(self, to: float) -> list[Action]:
        """Move the clock to ``to``, delivering every due wakeup in time order."""
        out: list[Action] = []
        while True:
            due = sorted((w for w in self.pending if w.at <= to), key=lambda w: w.at)
            if not due:
                break
            w = due[0]
            self.pending.remove(w)
            self.now = max(self.now, w.at)
            out += self._take(self.core.handle(w.event, self.now))
        self.now = max(self.now, to)
        return out

    def later(self, seconds: float) -> list[Action]:
        return self.advance(self.now + seconds)

    # -- world helpers --------------------------------------------------------------

    def watch(
        self,
        ref: ContainerRef = KONOMI,
        *,
        started_at: float | None = None,
        state: ContainerState = ContainerState.RUNNING,
        labels: Mapping[str, str] | None = None,
    ) -> list[Action]:
        return self.send(
            ContainerWatched(
                ref, state, self.now - 3600 if started_at is None else started_at, labels or {}
            )
        )

    def gpus(self, *gpus: Gpu) -> list[Action]:
        return self.send(GpuSnapshot(gpus or (GPU0,)))

    def last_probe(self, ref: ContainerRef = KONOMI) -> RunProbe:
        probes = [a for a in self.log if isinstance(a, RunProbe) and a.ref == ref]
        assert probes, "no probe was asked for"
        return probes[-1]

    def answer(
        self,
        result: ProbeResult,
        ref: ContainerRef = KONOMI,
        *,
        device_access_ok: bool | None = None,
        exit_code: int | None = None,
    ) -> list[Action]:
        """Answer the last probe asked for ``ref``."""
        p = self.last_probe(ref)
        return self.send(ProbeFinished(p.ref, p.purpose, result, exit_code, "", device_access_ok))

    def fault(self, ref: ContainerRef = KONOMI, **kw: object) -> list[Action]:
        """A timer probe is due and shows NVML broken inside."""
        from gpuwatchd.model.events import ProbeTick

        out = self.send(ProbeTick(ref))
        assert of(out, RunProbe), f"no probe started: {out}"
        return out + self.answer(ProbeResult.NVML_UNKNOWN_ERROR, ref, **kw)  # type: ignore[arg-type]

    def finish_set(self, ok: bool = True) -> list[Action]:
        sets = [a for a in self.log if isinstance(a, SetPersistence)]
        assert sets
        return self.send(
            PersistenceSetFinished(
                tuple(
                    PersistenceSetResult(i, ok, error="" if ok else "NO_PERMISSION")
                    for i in sets[-1].gpu_indices
                )
            )
        )

    def finish_restart(
        self,
        outcome: RestartOutcome = RestartOutcome.RESTARTED,
        *,
        state: ContainerState | None = None,
    ) -> list[Action]:
        restarts = [a for a in self.log if isinstance(a, RestartContainer)]
        assert restarts
        ref = restarts[-1].ref
        return self.send(
            RestartFinished(
                ref,
                outcome,
                "boom" if outcome is RestartOutcome.FAILED else "",
                ref,
                self.now if outcome is RestartOutcome.RESTARTED else None,
                state,
            )
        )

    def saved(self) -> PersistedState:
        saves = [a for a in self.log if isinstance(a, SaveState)]
        assert saves
        return saves[-1].state

    def all_records(self) -> list[Record]:
        return records(self.log)

    def count(self, event: str) -> int:
        return sum(1 for r in self.all_records() if r.event == event)

    def restarts(self) -> int:
        return len(of(self.log, RestartContainer))
