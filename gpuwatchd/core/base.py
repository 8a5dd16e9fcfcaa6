"""The decision core's state and plumbing: what it tracks per GPU and container,
how it emits records and actions, and how it asks for probes and persistence.

:class:`CoreBase` is the bottom of the core's layers (base, :mod:`~gpuwatchd.core.ledger`,
:mod:`~gpuwatchd.core.remediation`, :mod:`~gpuwatchd.core.machine`); only
:class:`~gpuwatchd.core.machine.Core` is used from outside. Pure, like all of them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gpuwatchd.compat import StrEnum
from gpuwatchd.config import Config, ContainerSettings
from gpuwatchd.model.events import (
    Action,
    ContainerRef,
    ContainerState,
    DeadlineKind,
    DeadlineReached,
    Emit,
    Gpu,
    NvmlFailure,
    ProbePurpose,
    RunProbe,
    SaveState,
    ScheduleWakeup,
    SetPersistence,
)
from gpuwatchd.model.records import FieldValue, make_record
from gpuwatchd.model.state import (
    ALL_CONTAINERS,
    MAX_HISTORY,
    MAX_HISTORY_CONTAINERS,
    HistoryEntry,
    PersistedState,
)
from gpuwatchd.model.vocabulary import Cause, Confidence, ProbeResult

#: After a confirmation that led to no restart, the next one waits until this
#: many seconds after its start (a restart or a heal lifts the wait).
CONFIRM_MIN_INTERVAL = 10.0
#: Seconds between verification probes after a restart.
VERIFY_RETRY = 1.0
#: The longest wait between two verification probes (the retries back off).
VERIFY_RETRY_MAX = 10.0
#: Seconds after a restart before the first verification probe. A probe that
#: comes too early just fails and is retried; waiting for start_grace instead
#: would add its full length to every heal.
VERIFY_FIRST = 0.5
#: A probe unanswered for probe.timeout plus this long is presumed lost (an
#: executor bug must not silence a container forever).
PROBE_LOST_AFTER = 60.0
#: A restart or persistence set unanswered for its own bound plus this long is
#: presumed lost and ends failed: no remediation phase waits for ever.
ACTION_LOST_AFTER = 60.0


class Phase(StrEnum):
    """Where a container's remediation stands."""

    PERSISTENCE = "persistence"  #: waiting for SetPersistence to finish
    RESTARTING = "restarting"  #: waiting for RestartContainer to finish
    VERIFYING = "verifying"  #: restarted; waiting for a passing probe or silence


@dataclass
class TrackedGpu:
    info: Gpu
    persistence: bool  #: as last seen, or True once gpuwatchd set it
    last_checked: float


@dataclass
class Remediation:
    cause: Cause
    confidence: Confidence | None
    began: float
    phase: Phase = Phase.RESTARTING
    faults: int = 1  #: the fault that began it plus those that joined it
    decided_at: float = 0.0  #: when the restart was decided (its budget entry)
    attempt: int = 0
    restarted_at: float = 0.0
    by_silence: bool = False
    last_result: ProbeResult | None = None
    last_device_access: bool | None = None
    verify_retries: int = 0
    matches: int = 0  #: pattern matches seen since the remediation's last record


@dataclass
class TrackedContainer:
    ref: ContainerRef
    state: ContainerState
    started_at: float
    orchestrated: bool
    probe_purpose: ProbePurpose | None = None
    probe_started: float = 0.0
    #: Start of the last confirmation, until a restart or a heal clears it:
    #: the next confirmation waits until CONFIRM_MIN_INTERVAL after it.
    last_confirm: float | None = None
    unreported: int = 0  #: matches not yet in a log_pattern_matched record
    covered: int = 0  #: matches the in-flight confirmation probe answers for
    pattern: str = ""
    line: str = ""
    last_result: ProbeResult | None = None
    last_probe_at: float | None = None
    remediation: Remediation | None = None
    deferred_until: float | None = None
    recheck: ProbePurpose | None = None  #: probe again once the probe in flight ends
    image: str = ""  #: its image reference (picks a profile)


class CoreBase:
    """The core's state and plumbing (see the module docstring).

    ``state``: what :func:`gpuwatchd.adapters.state_file.load_state` read (None: empty).
    ``dry_run``: decide and record everything, change nothing.
    """

    def __init__(
        self, config: Config, state: PersistedState | None = None, *, dry_run: bool = False
    ) -> None:
        st = state if state is not None else PersistedState()
        self._config = config
        self._dry_run = dry_run
        self._restarts: dict[str, list[float]] = {k: sorted(v) for k, v in st.restarts.items()}
        self._given_up: dict[str, float] = dict(st.given_up)
        self._paused: dict[str, float | None] = dict(st.paused)
        self._gpu_last_disabled: dict[str, float] = dict(st.gpu_last_disabled)
        self._history: dict[str, list[HistoryEntry]] = {k: list(v) for k, v in st.history.items()}
        self._gpus: dict[int, TrackedGpu] = {}
        self._containers: dict[str, TrackedContainer] = {}
        self._nvml_failure: NvmlFailure | None = None
        self._docker_error: str | None = None
        self._last_reload: float | None = None
        self._set_in_flight = False
        self._set_pending: tuple[int, ...] = ()
        self._set_attempts: dict[int, float] = {}
        self._host_skips: dict[str, float] = {}
        self._notify_skips: dict[tuple[str, Cause], float] = {}
        self._warned_orchestrated: set[str] = set()
        self._probe_unavailable: set[str] = set()
        self._tokens: dict[tuple[str | None, DeadlineKind], int] = {}
        self._next_token = 0
        self._out: list[Action] = []

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self._config

    @property
    def dry_run(self) -> bool:
        """True when decisions are recorded but nothing is changed."""
        return self._dry_run

    def persisted(self) -> PersistedState:
        """The state to persist now (also what every :class:`SaveState` carries)."""
        return PersistedState(
            restarts={k: tuple(v) for k, v in self._restarts.items() if v},
            given_up=dict(self._given_up),
            paused=dict(self._paused),
            gpu_last_disabled=dict(self._gpu_last_disabled),
            history={k: tuple(v) for k, v in self._history.items() if v},
        )

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _emit(
        self,
        event: str,
        c: TrackedContainer | None = None,
        *,
        fold: bool = True,
        **fields: FieldValue,
    ) -> None:
        if c is not None:
            fields.setdefault("container", c.ref.name)
            fields.setdefault("container_id", c.ref.short_id)
        if self._dry_run:
            fields["dry_run"] = True
        self._out.append(Emit(make_record(event, **fields), fold))

    def _led_to(self, start: int, decide: Callable[[], None]) -> None:
        """Run ``decide``; when it did anything besides saving state or setting a
        timer, the records emitted since ``start`` led to it: they are never folded."""
        end = len(self._out)
        decide()
        if any(not isinstance(a, SaveState | ScheduleWakeup) for a in self._out[end:]):
            for i in range(start, end):
                a = self._out[i]
                if isinstance(a, Emit):
                    self._out[i] = Emit(a.record, fold=False)

    def _remember(self, name: str, entry: HistoryEntry) -> None:
        """Keep what gpuwatchd did, for ``diagnose`` (dry run changes nothing)."""
        if self._dry_run:
            return
        # The container touched last goes last: the oldest-touched are dropped first.
        entries = self._history.pop(name, [])
        entries.append(entry)
        del entries[:-MAX_HISTORY]
        self._history[name] = entries
        while len(self._history) > MAX_HISTORY_CONTAINERS:
            del self._history[next(iter(self._history))]

    def _save(self) -> None:
        # Dry run changes nothing, the state file included.
        if not self._dry_run:
            self._out.append(SaveState(self.persisted()))

    def _wake(self, key: str | None, kind: DeadlineKind, at: float) -> None:
        self._next_token += 1
        self._tokens[(key, kind)] = self._next_token
        self._out.append(ScheduleWakeup(at, DeadlineReached(key, kind, self._next_token)))

    def _live(self, ref: ContainerRef) -> TrackedContainer | None:
        """The watched container ``ref`` names, if it is still that instance."""
        c = self._containers.get(ref.name)
        return c if c is not None and c.ref.id == ref.id else None

    def _settings(self, c: TrackedContainer) -> ContainerSettings:
        return self._config.for_container(c.ref.name, c.image)

    def _drop(self, c: TrackedContainer) -> None:
        del self._containers[c.ref.name]
        for key in [k for k in self._tokens if k[0] == c.ref.name]:
            if key[1] not in (DeadlineKind.GIVE_UP_END, DeadlineKind.PAUSE_END):
                del self._tokens[key]

    def _grace_end(self, c: TrackedContainer) -> float:
        return c.started_at + self._settings(c).start_grace

    def _busy(self, c: TrackedContainer, now: float) -> bool:
        return (
            c.probe_purpose is not None
            and now - c.probe_started < self._config.probe.timeout + PROBE_LOST_AFTER
        )

    def _can_probe(self, c: TrackedContainer, now: float) -> bool:
        return (
            c.state is ContainerState.RUNNING
            and now >= self._grace_end(c)
            and not self._busy(c, now)
        )

    def _probe(self, c: TrackedContainer, purpose: ProbePurpose, now: float) -> None:
        c.probe_purpose = purpose
        c.probe_started = now
        self._out.append(
            RunProbe(c.ref, purpose, self._settings(c).probe_command, self._config.probe.timeout)
        )

    def _probe_all(self, purpose: ProbePurpose, now: float) -> None:
        for c in self._containers.values():
            if c.remediation is None and self._can_probe(c, now):
                self._probe(c, purpose, now)
            elif c.remediation is None and c.probe_purpose is not None:
                # A probe already under way may have passed on access a systemd
                # reload revoked a moment later: check again when it ends.
                c.recheck = purpose

    def _recheck(self, ref: ContainerRef, now: float) -> None:
        c = self._live(ref)
        if c is None or c.recheck is None:
            return
        purpose, c.recheck = c.recheck, None
        if c.remediation is None and self._can_probe(c, now):
            self._probe(c, purpose, now)

    def _report_matches(self, c: TrackedContainer, *, fold: bool = True) -> None:
        self._emit(
            "log_pattern_matched",
            c,
            fold=fold,
            pattern=c.pattern,
            line=c.line,
            count=c.unreported,
        )
        c.unreported = 0

    def _set_persistence(self, gpus: list[TrackedGpu], now: float) -> None:
        """Ask for persistence mode on ``gpus`` (in dry run: record that it would be)."""
        for g in gpus:
            self._set_attempts[g.info.index] = now
        if self._dry_run:
            for g in gpus:
                self._emit(
                    "gpu_persistence_enabled",
                    gpu_index=g.info.index,
                    gpu_uuid=g.info.uuid,
                    gpu_name=g.info.name,
                )
            return
        self._set_in_flight = True
        self._set_pending = tuple(g.info.index for g in gpus)
        self._out.append(SetPersistence(self._set_pending))
        self._wake(None, DeadlineKind.ACTION_LOST, now + self._persistence_bound())

    def _persistence_bound(self) -> float:
        return ACTION_LOST_AFTER + 10.0 * len(self._set_pending)


def take_matches(r: Remediation) -> int | None:
    """The matches seen since the remediation's last record (None: none); each is
    reported once."""
    n, r.matches = r.matches, 0
    return n or None


def target_name(key: str | None) -> str:
    return "all containers" if key in (None, ALL_CONTAINERS) else str(key)
