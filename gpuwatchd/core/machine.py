"""The decision core: ``(state, event, now) -> actions``, with no I/O and no clock.

Usage (the daemon, single-threaded on the event loop)::

    state, warning = load_state(state_path(config.daemon.state_dir))
    core = Core(config, state, dry_run=args.dry_run or config.daemon.dry_run)
    actions = core.start(now)                 # re-arms timers of the loaded state
    ...
    actions = core.handle(event, now)          # for every event from observers/executor
    view = core.snapshot(now)                  # for `gpuwatchd status` and metrics

``now`` is wall-clock epoch seconds (see :mod:`gpuwatchd.model.events`). The core is
deterministic: the same events at the same times give the same actions. The
daemon owns the probe timers (``ProbeTick`` per container, with its random
phase) and the record folding (:class:`gpuwatchd.model.records.RecordFolder`).
Dry run is fixed for the core's life (a reload does not switch modes).

The rules:

- **A log match alone is not proof.** It asks for a confirmation probe; at
  most one probe is in flight per container. A confirmation that led to no
  restart (NVML healthy: ``log_match_not_gpu``, as a real tuner fault gives
  every second; a timeout; no probe command; a fault gpuwatchd may not act
  on) holds the next one back until :data:`CONFIRM_MIN_INTERVAL` seconds after
  its start; matches in between are counted and reported in the next
  ``log_pattern_matched`` record. A restart and a heal lift that limit: the
  next matching line is confirmed at once. Matches seen while a remediation
  runs join it and are reported (``matches``) in its next record. With
  ``confirm_with_probe = false`` the pattern alone is a fault, and
  verification after a restart is by staying running and silent for
  ``verify_timeout`` (``result = unverified``).
- **Records in the order things happened.** A record that leads to an action
  is emitted with ``fold = False``: the ``log_pattern_matched`` sent with a
  confirmation probe, and a ``probe_failed`` or ``gpu_persistence_off`` that
  is followed by a probe, a persistence change, a restart or a remediation
  record. The daemon writes it at once, before that action's record, and
  never folds it; a true repeat with no consequence stays foldable.
- **Probe results.** NVML failures are faults; ``timeout`` is recorded but is
  no proof; ``probe_unavailable`` is never a fault and warns once until a
  probe runs in that container again; ``not_running`` is ignored. A heal is
  verified by silence only where ``confirm_with_probe`` is off; otherwise a
  probe must pass (``unverified`` at the deadline when none could run).
- **Host drift.** A GPU seen with persistence Disabled is recorded once per
  transition, set again with ``enforce_persistence`` (retried at most once per
  ``cooldown``), and every watched container is probed at once. The time each
  GPU was last seen Disabled is remembered (and persisted).
- **Remediation** of a container fault: (1) with ``enforce_persistence``, set
  persistence on every GPU seen off; (2) restart; (3) verify: running again
  and a probe passing within ``verify_timeout`` (first probe
  :data:`VERIFY_FIRST` seconds after the restart, not after ``start_grace``:
  healing is timed from the first ER-05 line; retried after
  :data:`VERIFY_RETRY` seconds, backing off to :data:`VERIFY_RETRY_MAX`); (4) record
  ``container_recovered`` or ``remediation_failed``. Faults during a
  remediation join it.
- **Cause**: :func:`gpuwatchd.core.cause.cause_of`, the one rule ``diagnose``
  uses too, from the evidence the core holds (:meth:`Core.evidence`).
- **Never restart for a host cause**: one ``remediation_skipped`` with advice,
  at most once per ``window`` per container.
- **Notify only** (``action = "notify"``): a fault a restart would cure gives
  one ``remediation_skipped`` (reason ``notify_only``, with advice) at most once
  per ``window`` per container and cause, and never a restart; persistence mode
  is still set with ``enforce_persistence`` (it disturbs no running job).
- **Never loop**: at most ``max_restarts`` restarts per container name per
  ``window``, ``cooldown`` apart (a fault inside the cooldown is deferred and
  re-checked when it ends); a fault with the budget spent gives the container
  up: one critical ``remediation_gave_up``, no restarts until ``window``
  after the give-up or an operator reset. Budgets survive reloads and (through
  :class:`~gpuwatchd.model.state.PersistedState`) daemon restarts.
- **Respect the operator**: act only on running containers (the executor
  re-checks right before restarting), never on orchestrated ones (Swarm or
  Kubernetes labels: one warning), never on unwatched ones, never while
  paused; dry run records every decision with ``dry_run = true`` and emits no
  ``SetPersistence``/``RestartContainer``/``SaveState``. In dry run a
  remediation ends at its (recorded) restart decision; the unhealed fault is
  found again by later probes and walks through cooldown and budget, so the
  records show every restart that would have happened and the give-up, and
  never loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from gpuwatchd.compat import StrEnum
from gpuwatchd.config import Config, ContainerSettings
from gpuwatchd.core.cause import DeviceAccess, Evidence, cause_of
from gpuwatchd.model.advice import ADVICE, NOTIFY_ADVICE
from gpuwatchd.model.events import (
    Action,
    ConfigChanged,
    ContainerRef,
    ContainerState,
    ContainerStateChanged,
    ContainerUnwatched,
    ContainerWatched,
    DeadlineKind,
    DeadlineReached,
    DockerAvailable,
    DockerUnavailable,
    Emit,
    Event,
    GpuInfo,
    GpuSnapshot,
    LogMatched,
    NvmlFailure,
    NvmlUnavailable,
    PauseRequested,
    PersistenceSetFinished,
    PersistenceSetResult,
    ProbeFinished,
    ProbePurpose,
    ProbeTick,
    ResetRequested,
    RestartContainer,
    RestartFinished,
    RestartOutcome,
    ResumeRequested,
    RunProbe,
    SaveState,
    ScheduleWakeup,
    SetPersistence,
    SystemdReloaded,
)
from gpuwatchd.model.records import FieldValue, make_record
from gpuwatchd.model.state import (
    ALL_CONTAINERS,
    MAX_HISTORY,
    MAX_HISTORY_CONTAINERS,
    HistoryEntry,
    PersistedState,
)
from gpuwatchd.model.vocabulary import ORCHESTRATOR_LABEL_PREFIXES, Cause, Confidence, ProbeResult

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


# -- read-only views for `gpuwatchd status` and metrics --------------------------------


@dataclass(frozen=True)
class GpuView:
    index: int
    uuid: str
    name: str
    persistence: bool
    last_checked: float  #: when the last snapshot was read
    last_seen_disabled: float | None


@dataclass(frozen=True)
class ContainerView:
    name: str
    id: str
    state: ContainerState
    orchestrated: bool
    last_probe_result: ProbeResult | None
    last_probe_at: float | None
    restarts_in_window: int
    given_up_at: float | None
    given_up_until: float | None
    paused: bool
    paused_until: float | None  #: None with ``paused``: until resumed
    remediation: Phase | None
    cause: Cause | None  #: of the remediation under way
    profile: str | None = None
    action: str = "restart"
    patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class CoreView:
    dry_run: bool
    gpus: tuple[GpuView, ...]
    containers: tuple[ContainerView, ...]
    nvml_unavailable: str | None  #: an NvmlFailure value while host NVML is down
    docker_unavailable: str | None  #: the error while Docker is down
    paused_all: bool
    paused_all_until: float | None

    def to_json(self) -> dict[str, Any]:
        """This view as plain JSON-ready data (enums as their values)."""
        return {k: _plain(v) for k, v in asdict(self).items()}


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, StrEnum):
        return value.value
    return value


# -- internal state -----------------------------------------------------------------------


@dataclass
class _Gpu:
    info: GpuInfo
    persistence: bool  #: as last seen, or True once gpuwatchd set it
    last_checked: float


@dataclass
class _Remediation:
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
class _Container:
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
    remediation: _Remediation | None = None
    deferred_until: float | None = None
    recheck: ProbePurpose | None = None  #: probe again once the probe in flight ends
    image: str = ""  #: its image reference (picks a profile)


class Core:
    """The pure decision core. See the module docstring for the rules.

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
        self._gpus: dict[int, _Gpu] = {}
        self._containers: dict[str, _Container] = {}
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

    # -- public API -------------------------------------------------------------------

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

    def start(self, now: float) -> list[Action]:
        """Call once before the first event: re-arms or expires the loaded state's timers."""
        self._out = []
        window = self._config.remediation.window
        for name in list(self._restarts):
            self._prune(name, now)
        for name, at in list(self._given_up.items()):
            if at + window <= now:
                self._rearm(name)
            else:
                self._wake(name, DeadlineKind.GIVE_UP_END, at + window)
        for key, until in list(self._paused.items()):
            if until is not None:
                if until <= now:
                    del self._paused[key]
                    self._emit("operator_resumed", target=_target(key), reason="expired")
                    self._save()
                else:
                    self._wake(key, DeadlineKind.PAUSE_END, until)
        return self._take()

    def handle(self, event: Event, now: float) -> list[Action]:
        """Decide what ``event`` at ``now`` calls for; returns the actions in order."""
        self._out = []
        match event:
            case GpuSnapshot():
                self._on_gpus(event, now)
            case NvmlUnavailable():
                if self._nvml_failure is not event.reason:
                    self._nvml_failure = event.reason
                    self._emit("nvml_unavailable", reason=event.reason.value, error=event.message)
            case DockerUnavailable():
                if self._docker_error is None:
                    self._emit("docker_unavailable", error=event.message)
                self._docker_error = event.message or "unavailable"
            case DockerAvailable():
                if self._docker_error is not None:
                    self._docker_error = None
                    self._emit("docker_available")
            case ContainerWatched():
                self._on_watched(event, now)
            case ContainerStateChanged():
                c = self._live(event.ref)
                if c is not None:
                    c.state = event.state
                    if event.started_at is not None:
                        c.started_at = event.started_at
            case ContainerUnwatched():
                c = self._live(event.ref)
                if c is not None:
                    self._drop(c)
                    self._emit("watch_set_changed", c, change="unwatched", reason=event.reason)
            case LogMatched():
                self._on_log(event, now)
            case ProbeTick():
                c = self._live(event.ref)
                if c is not None and c.remediation is None and self._can_probe(c, now):
                    self._probe(c, ProbePurpose.TIMER, now)
            case ProbeFinished():
                self._on_probe(event, now)
                self._recheck(event.ref, now)
            case SystemdReloaded():
                self._last_reload = max(self._last_reload or event.at, event.at)
                self._emit("systemd_reload_detected", at=event.at)
                self._probe_all(ProbePurpose.RELOAD, now)
            case PersistenceSetFinished():
                self._on_persistence_set(event, now)
            case RestartFinished():
                self._on_restarted(event, now)
            case DeadlineReached():
                self._on_deadline(event, now)
            case ResetRequested():
                self._on_reset(event.container)
            case PauseRequested():
                key = event.container or ALL_CONTAINERS
                self._paused[key] = event.until
                self._emit("operator_paused", target=_target(key), until=event.until)
                if event.until is not None:
                    self._wake(key, DeadlineKind.PAUSE_END, event.until)
                self._save()
            case ResumeRequested():
                keys = [event.container] if event.container else list(self._paused)
                for key in keys:
                    self._paused.pop(key, None)
                    self._tokens.pop((key, DeadlineKind.PAUSE_END), None)
                self._emit("operator_resumed", target=_target(event.container), reason="operator")
                self._save()
            case ConfigChanged():
                self._config = event.config
                source = event.config.source
                self._emit("config_reloaded", config=str(source) if source else None)
        return self._take()

    def snapshot(self, now: float) -> CoreView:
        """A read-only view of everything ``gpuwatchd status`` shows."""
        window = self._config.remediation.window
        gpus = tuple(
            GpuView(
                g.info.index,
                g.info.uuid,
                g.info.name,
                g.persistence,
                g.last_checked,
                self._gpu_last_disabled.get(g.info.uuid),
            )
            for _, g in sorted(self._gpus.items())
        )
        containers = []
        for name, c in sorted(self._containers.items()):
            given = self._given_up.get(name)
            paused, until = self._pause_of(name, now)
            settings = self._settings(c)
            containers.append(
                ContainerView(
                    name=name,
                    id=c.ref.id,
                    state=c.state,
                    orchestrated=c.orchestrated,
                    last_probe_result=c.last_result,
                    last_probe_at=c.last_probe_at,
                    restarts_in_window=len(self._in_window(name, now)),
                    given_up_at=given,
                    given_up_until=None if given is None else given + window,
                    paused=paused,
                    paused_until=until,
                    remediation=c.remediation.phase if c.remediation else None,
                    cause=c.remediation.cause if c.remediation else None,
                    profile=settings.profile,
                    action=settings.action,
                    patterns=tuple(p.source for p in settings.patterns),
                )
            )
        all_paused, all_until = self._pause_key(ALL_CONTAINERS, now)
        return CoreView(
            dry_run=self._dry_run,
            gpus=gpus,
            containers=tuple(containers),
            nvml_unavailable=self._nvml_failure.value if self._nvml_failure else None,
            docker_unavailable=self._docker_error,
            paused_all=all_paused,
            paused_all_until=all_until,
        )

    # -- plumbing -----------------------------------------------------------------------

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _emit(
        self, event: str, c: _Container | None = None, *, fold: bool = True, **fields: FieldValue
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

    def _live(self, ref: ContainerRef) -> _Container | None:
        """The watched container ``ref`` names, if it is still that instance."""
        c = self._containers.get(ref.name)
        return c if c is not None and c.ref.id == ref.id else None

    def _settings(self, c: _Container) -> ContainerSettings:
        return self._config.for_container(c.ref.name, c.image)

    def _drop(self, c: _Container) -> None:
        del self._containers[c.ref.name]
        for key in [k for k in self._tokens if k[0] == c.ref.name]:
            if key[1] not in (DeadlineKind.GIVE_UP_END, DeadlineKind.PAUSE_END):
                del self._tokens[key]

    # -- GPUs -------------------------------------------------------------------------------

    def _on_gpus(self, event: GpuSnapshot, now: float) -> None:
        if self._nvml_failure is not None:
            self._nvml_failure = None
            self._emit("nvml_available")
        newly_off = False
        start = len(self._out)
        gpus: dict[int, _Gpu] = {}
        for info in event.gpus:
            prev = self._gpus.get(info.index)
            gpus[info.index] = _Gpu(info, info.persistence, now)
            if info.persistence:
                continue
            self._gpu_last_disabled[info.uuid] = now
            if prev is None or prev.persistence or prev.info.uuid != info.uuid:
                newly_off = True
                self._emit(
                    "gpu_persistence_off",
                    gpu_index=info.index,
                    gpu_uuid=info.uuid,
                    gpu_name=info.name,
                )
        self._gpus = gpus
        self._led_to(start, lambda: self._after_snapshot(newly_off, now))

    def _after_snapshot(self, newly_off: bool, now: float) -> None:
        if newly_off:
            self._save()
            self._probe_all(ProbePurpose.DRIFT, now)
        off = [g for g in self._gpus.values() if not g.persistence]
        if off and self._config.gpu.enforce_persistence and not self._paused_now(None, now):
            retry = self._config.remediation.cooldown
            due = [g for g in off if self._set_attempts.get(g.info.index, -retry) + retry <= now]
            if due and not self._set_in_flight:
                self._set_persistence(due, now)

    def _set_persistence(self, gpus: list[_Gpu], now: float) -> None:
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

    def _persistence_lost(self, now: float) -> None:
        """The SetPersistence in flight got no answer: it ends failed on every GPU."""
        if not self._set_in_flight:
            return
        error = f"no answer within {self._persistence_bound():g} s"
        self._on_persistence_set(
            PersistenceSetFinished(tuple(
                PersistenceSetResult(index, False, error=error) for index in self._set_pending
            )),
            now,
        )

    def _on_persistence_set(self, event: PersistenceSetFinished, now: float) -> None:
        self._set_in_flight = False
        self._tokens.pop((None, DeadlineKind.ACTION_LOST), None)
        for r in event.results:
            g = self._gpus.get(r.index)
            uuid = r.uuid or (g.info.uuid if g else "")
            if r.ok:
                if g is not None:
                    g.persistence = True  # until the next snapshot says otherwise
                self._emit(
                    "gpu_persistence_enabled",
                    gpu_index=r.index,
                    gpu_uuid=uuid or None,
                    gpu_name=g.info.name if g else None,
                    dry_run=False,
                )
            else:
                self._emit(
                    "gpu_persistence_set_failed",
                    gpu_index=r.index,
                    gpu_uuid=uuid or None,
                    error=r.error,
                )
        # Step (2) follows step (1) whatever its outcome: a restart still helps
        # when persistence could not be set, and the records say why it recurs.
        for c in list(self._containers.values()):
            if c.remediation is not None and c.remediation.phase is Phase.PERSISTENCE:
                self._restart(c, now)

    # -- containers ----------------------------------------------------------------------

    def _on_watched(self, event: ContainerWatched, now: float) -> None:
        name = event.ref.name
        c = self._containers.get(name)
        if c is not None and c.ref.id == event.ref.id:
            c.state = event.state
            c.started_at = event.started_at
            c.image = event.image or c.image
            return
        orchestrated = any(k.startswith(ORCHESTRATOR_LABEL_PREFIXES) for k in event.labels)
        change = "watched"
        if c is not None:
            # Recreated under the same name: a new instance, same budget.
            self._drop(c)
            change = "recreated"
        c = _Container(event.ref, event.state, event.started_at, orchestrated, image=event.image)
        self._containers[name] = c
        self._emit("watch_set_changed", c, change=change, reason=event.state.value)
        if orchestrated and name not in self._warned_orchestrated:
            self._warned_orchestrated.add(name)
            self._emit(
                "remediation_skipped",
                c,
                reason="orchestrated",
                advice="Managed by Swarm or Kubernetes: gpuwatchd probes and records it "
                "but never restarts it; let the orchestrator's health checks act.",
            )

    def _grace_end(self, c: _Container) -> float:
        return c.started_at + self._settings(c).start_grace

    def _busy(self, c: _Container, now: float) -> bool:
        return (
            c.probe_purpose is not None
            and now - c.probe_started < self._config.probe.timeout + PROBE_LOST_AFTER
        )

    def _can_probe(self, c: _Container, now: float) -> bool:
        return (
            c.state is ContainerState.RUNNING
            and now >= self._grace_end(c)
            and not self._busy(c, now)
        )

    def _probe(self, c: _Container, purpose: ProbePurpose, now: float) -> None:
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

    # -- logs and probes -------------------------------------------------------------------

    def _on_log(self, event: LogMatched, now: float) -> None:
        c = self._live(event.ref)
        if c is None:
            return
        r = c.remediation
        if r is not None:
            r.faults += 1  # joins the remediation under way
            if r.phase is Phase.VERIFYING and r.by_silence:
                self._emit(
                    "log_pattern_matched",
                    c,
                    fold=False,
                    pattern=event.pattern,
                    line=event.line,
                    count=1,
                )
                self._remediation_failed(c, now, "pattern_seen")
                self._fault(c, now, None)
            else:
                r.matches += 1  # reported in the remediation's next record
            return
        c.unreported += 1
        c.pattern, c.line = event.pattern, event.line
        if not self._settings(c).confirm_with_probe:
            start = len(self._out)
            self._report_matches(c)
            self._led_to(start, lambda: self._fault(c, now, None))
            return
        self._request_confirm(c, now)

    def _report_matches(self, c: _Container, *, fold: bool = True) -> None:
        self._emit(
            "log_pattern_matched",
            c,
            fold=fold,
            pattern=c.pattern,
            line=c.line,
            count=c.unreported,
        )
        c.unreported = 0

    def _request_confirm(self, c: _Container, now: float) -> None:
        if c.unreported == 0 or c.state is not ContainerState.RUNNING or self._busy(c, now):
            return  # a busy container's probe result calls this again
        earliest = self._grace_end(c)
        if c.last_confirm is not None:
            earliest = max(earliest, c.last_confirm + CONFIRM_MIN_INTERVAL)
        if now < earliest:
            if (c.ref.name, DeadlineKind.CONFIRM) not in self._tokens:
                self._wake(c.ref.name, DeadlineKind.CONFIRM, earliest)
            return
        c.covered = c.unreported
        self._report_matches(c, fold=False)  # it leads to the probe
        c.last_confirm = now
        self._probe(c, ProbePurpose.CONFIRM, now)

    def _on_probe(self, event: ProbeFinished, now: float) -> None:
        c = self._live(event.ref)
        if c is None:
            return
        c.probe_purpose = None
        covered, c.covered = c.covered, 0
        result = event.result
        r = c.remediation
        verifying = r is not None and r.phase is Phase.VERIFYING and not r.by_silence
        if result is not ProbeResult.NOT_RUNNING:
            c.last_result, c.last_probe_at = result, now
        if result not in (ProbeResult.PROBE_UNAVAILABLE, ProbeResult.NOT_RUNNING):
            # The probe ran: it is available again (the failure was transient).
            self._probe_unavailable.discard(c.ref.name)
        if result is ProbeResult.PROBE_UNAVAILABLE:
            if c.ref.name not in self._probe_unavailable:
                self._probe_unavailable.add(c.ref.name)
                self._emit(
                    "probe_unavailable",
                    c,
                    result=result.value,
                    command=self._settings(c).probe_command,
                    exit_code=event.exit_code,
                    output=event.output or None,
                )
            if verifying:
                # Nothing proves the heal: try again; at the deadline it is unverified.
                self._retry_verify(c, now)
        elif result is ProbeResult.OK:
            if verifying:
                self._recovered(c, now, "ok")
            elif covered:
                self._emit(
                    "log_match_not_gpu", c, result=result.value, pattern=c.pattern, count=covered
                )
        elif result is ProbeResult.NOT_RUNNING:
            if verifying:
                self._retry_verify(c, now)
        else:
            fault = result.is_gpu_fault and not verifying
            start = len(self._out)
            if fault and c.unreported:
                # Matches held back (or seen while this probe ran): this explains them.
                self._report_matches(c)
            self._emit(
                "probe_failed",
                c,
                result=result.value,
                purpose=event.purpose.value,
                exit_code=event.exit_code,
                output=event.output or None,
                device_access=(
                    None
                    if event.device_access_ok is None
                    else ("present" if event.device_access_ok else "missing")
                ),
            )
            if verifying and r is not None:
                r.last_result = result
                r.last_device_access = event.device_access_ok
                self._retry_verify(c, now)
            elif fault:
                self._led_to(start, lambda: self._fault(c, now, event.device_access_ok))
            # A timeout proves nothing: a hung nvidia-smi is recorded, not healed.
        if c.remediation is None and c.unreported:
            self._request_confirm(c, now)

    # -- faults and remediation ------------------------------------------------------------

    def evidence(self, c_name: str, device_access_ok: bool | None) -> Evidence:
        """What the core knows about a fault in container ``c_name`` now, for
        :func:`~gpuwatchd.core.cause.cause_of`.

        Raises:
            KeyError: when ``c_name`` is not watched.
        """
        c = self._containers[c_name]
        nf = self._nvml_failure
        return Evidence(
            host_nvml=nf.value if nf is not None else None,
            probe=c.last_result,
            device_access=DeviceAccess.of(device_access_ok),
            off_since_start=any(t >= c.started_at for t in self._gpu_last_disabled.values()),
            off_now=any(not g.persistence for g in self._gpus.values()) if self._gpus else None,
            reload_since_start=self._last_reload is not None and self._last_reload >= c.started_at,
        )

    def cause_of(
        self, c_name: str, device_access_ok: bool | None
    ) -> tuple[Cause, Confidence | None]:
        """The cause the evidence points to for a fault in container ``c_name`` now.

        Raises:
            KeyError: when ``c_name`` is not watched.
        """
        return cause_of(self.evidence(c_name, device_access_ok))

    def _fault(self, c: _Container, now: float, device_access_ok: bool | None) -> None:
        """A container fault: proven by a probe, or a pattern where probes are off."""
        name = c.ref.name
        if c.state is not ContainerState.RUNNING or c.orchestrated:
            return
        if c.remediation is not None:
            c.remediation.faults += 1
            return
        cause, confidence = self.cause_of(name, device_access_ok)
        window = self._config.remediation.window
        if not cause.restart_cures:
            last = self._host_skips.get(name)
            if last is None or now - last >= window:
                self._host_skips[name] = now
                self._emit(
                    "remediation_skipped",
                    c,
                    reason="host_cause",
                    cause=cause.value,
                    confidence=confidence.value if confidence else None,
                    advice=ADVICE[cause.value],
                    dry_run=self._dry_run,
                )
            return
        if self._settings(c).action == "notify":
            self._notify_only(c, now, cause, confidence)
            return
        if self._paused_now(name, now):
            self._emit(
                "remediation_skipped",
                c,
                reason="paused",
                cause=cause.value,
                advice="Remediation is paused by the operator; `gpuwatchd resume` re-enables it.",
                dry_run=self._dry_run,
            )
            return
        if self._given_up_now(name, now):
            return  # said once, critically; probe_failed records go on
        history = self._in_window(name, now)
        rem = self._config.remediation
        if len(history) >= rem.max_restarts:
            self._give_up(c, now, cause, len(history))
            return
        if history and now - history[-1] < rem.cooldown:
            until = history[-1] + rem.cooldown
            if c.deferred_until is None:
                c.deferred_until = until
                self._emit(
                    "remediation_deferred",
                    c,
                    cause=cause.value,
                    until=until,
                    dry_run=self._dry_run,
                )
                self._wake(name, DeadlineKind.COOLDOWN_END, until)
            return
        c.deferred_until = None
        if c.unreported:
            self._report_matches(c, fold=False)  # they belong to this fault
        r = _Remediation(cause, confidence, began=now)
        c.remediation = r
        # Step 1: persistence mode on every GPU seen off.
        off = [g for g in self._gpus.values() if not g.persistence]
        if off and self._config.gpu.enforce_persistence:
            if self._dry_run:
                self._set_persistence(off, now)
            else:
                r.phase = Phase.PERSISTENCE
                if not self._set_in_flight:
                    self._set_persistence(off, now)
                return  # step 2 follows PersistenceSetFinished
        self._restart(c, now)

    def _notify_only(
        self, c: _Container, now: float, cause: Cause, confidence: Confidence | None
    ) -> None:
        """A proven fault in a container that must not be restarted: tell, advise, leave it."""
        off = [g for g in self._gpus.values() if not g.persistence]
        if off and self._config.gpu.enforce_persistence and not self._set_in_flight:
            self._set_persistence(off, now)  # a host setting: no running job notices
        key = (c.ref.name, cause)
        last = self._notify_skips.get(key)
        if last is not None and now - last < self._config.remediation.window:
            return
        self._notify_skips[key] = now
        self._emit(
            "remediation_skipped",
            c,
            reason="notify_only",
            cause=cause.value,
            confidence=confidence.value if confidence else None,
            advice=NOTIFY_ADVICE.get(cause.value, NOTIFY_ADVICE["unknown"]).format(
                container=c.ref.name
            ),
            dry_run=self._dry_run,
        )

    def _restart(self, c: _Container, now: float) -> None:
        """Step 2: take a budget entry, then restart (dry run: record and stop here)."""
        r = c.remediation
        assert r is not None
        name = c.ref.name
        if c.state is not ContainerState.RUNNING:
            # It stopped (or paused) while persistence was being set: leave it be.
            c.remediation = None
            self._emit(
                "remediation_skipped",
                c,
                reason="not_running",
                state=c.state.value,
                matches=_take_matches(r),
                cause=r.cause.value,
                advice="It stopped before the restart; gpuwatchd never starts a stopped container.",
                dry_run=self._dry_run,
            )
            return
        self._prune(name, now)
        self._restarts.setdefault(name, []).append(now)
        r.phase, r.decided_at = Phase.RESTARTING, now
        r.attempt = len(self._in_window(name, now))
        if self._dry_run:
            self._emit_restarted(c, r)
            c.remediation = None
            return
        self._save()  # the budget is durable before the restart happens
        self._out.append(RestartContainer(c.ref, self._settings(c).restart_timeout))
        self._wake(name, DeadlineKind.ACTION_LOST, now + self._restart_bound(c))

    def _restart_bound(self, c: _Container) -> float:
        # An inspect, the restart (its stop grace plus the call) and an inspect again.
        return (self._settings(c).restart_timeout + 3 * self._config.docker.timeout
                + ACTION_LOST_AFTER)

    def _emit_restarted(self, c: _Container, r: _Remediation) -> None:
        self._emit(
            "container_restarted",
            c,
            cause=r.cause.value,
            confidence=r.confidence.value if r.confidence else None,
            attempt=r.attempt,
            max_restarts=self._config.remediation.max_restarts,
            count=r.faults,
            matches=_take_matches(r),
            dry_run=self._dry_run,
        )

    def _on_restarted(self, event: RestartFinished, now: float) -> None:
        c = self._live(event.ref)
        if c is None:
            return
        if event.outcome is RestartOutcome.NOT_RUNNING and event.state is not None:
            # What the executor saw holds even for a restart no longer awaited
            # (one presumed lost): a later phase must not restart a stopped container.
            c.state = event.state
        if c.remediation is None or c.remediation.phase is not Phase.RESTARTING:
            return
        r = c.remediation
        name = c.ref.name
        if event.outcome is RestartOutcome.RESTARTED:
            if event.new_ref is not None and event.new_ref != c.ref:
                # Same name, new ID (unusual for a restart): follow it.
                del self._containers[name]
                c.ref = event.new_ref
                self._containers[c.ref.name] = c
            c.state = ContainerState.RUNNING
            c.started_at = event.started_at if event.started_at is not None else now
            c.probe_purpose = None  # a probe of the old process is meaningless
            c.last_confirm = None  # a new process: its first matching line is confirmed at once
            self._emit_restarted(c, r)
            self._remember(c.ref.name, HistoryEntry(
                now, "restarted", r.cause.value, r.confidence.value if r.confidence else None))
            self._save()
            r.phase, r.restarted_at = Phase.VERIFYING, now
            # Silence verifies only where probes are off by configuration.
            r.by_silence = not self._settings(c).confirm_with_probe
            self._wake(
                c.ref.name,
                DeadlineKind.VERIFY_DEADLINE,
                now + self._config.remediation.verify_timeout,
            )
            if not r.by_silence:
                self._wake(c.ref.name, DeadlineKind.VERIFY_PROBE, now + VERIFY_FIRST)
            return
        c.remediation = None
        if event.outcome is RestartOutcome.NOT_RUNNING:
            # The operator (or Docker) stopped it in between: leave it, refund the budget.
            if event.state is not None:
                c.state = event.state
            history = self._restarts.get(name, [])
            if r.decided_at in history:
                history.remove(r.decided_at)
            self._save()
            self._emit(
                "remediation_skipped",
                c,
                reason="not_running",
                state=event.state.value if event.state else None,
                matches=_take_matches(r),
                cause=r.cause.value,
                advice="It was not running right before the restart; gpuwatchd never "
                "starts a stopped container.",
                dry_run=self._dry_run,
            )
        else:
            self._emit(
                "remediation_failed",
                c,
                result="restart_error",
                error=event.error,
                cause=r.cause.value,
                count=r.faults,
                matches=_take_matches(r),
                dry_run=self._dry_run,
            )

    def _retry_verify(self, c: _Container, now: float) -> None:
        r = c.remediation
        assert r is not None
        deadline = r.restarted_at + self._config.remediation.verify_timeout
        # Quick at first (most heals verify within a second or two), then
        # backing off so a failed heal costs a handful of probes, not dozens.
        at = now + min(VERIFY_RETRY * 2**r.verify_retries, VERIFY_RETRY_MAX)
        r.verify_retries += 1
        if at < deadline:
            self._wake(c.ref.name, DeadlineKind.VERIFY_PROBE, at)

    def _recovered(self, c: _Container, now: float, result: str) -> None:
        r = c.remediation
        assert r is not None
        self._emit(
            "container_recovered",
            c,
            result=result,
            cause=r.cause.value,
            elapsed=round(now - r.restarted_at, 3),
            count=r.faults,
            matches=_take_matches(r),
            dry_run=self._dry_run,
        )
        c.remediation = None
        c.last_confirm = None  # healed: the next matching line is confirmed at once
        self._remember(c.ref.name, HistoryEntry(now, "recovered", r.cause.value, result))
        self._save()

    def _remediation_failed(self, c: _Container, now: float, result: str) -> None:
        r = c.remediation
        assert r is not None
        self._emit(
            "remediation_failed",
            c,
            result=result,
            cause=r.cause.value,
            state=c.state.value if c.state is not ContainerState.RUNNING else None,
            count=r.faults,
            matches=_take_matches(r),
            dry_run=self._dry_run,
        )
        c.remediation = None

    def _on_verify_deadline(self, c: _Container, now: float) -> None:
        r = c.remediation
        if r is None or r.phase is not Phase.VERIFYING:
            return
        self._tokens.pop((c.ref.name, DeadlineKind.VERIFY_PROBE), None)
        if c.state is not ContainerState.RUNNING:
            self._remediation_failed(c, now, ProbeResult.NOT_RUNNING.value)
            return  # a container that stopped is the operator's (or its own) business
        if r.by_silence:
            self._recovered(c, now, "unverified")
            return
        last = r.last_result
        self._remediation_failed(c, now, last.value if last else "unverified")
        if last is not None and last.is_gpu_fault:
            # The fault outlived the restart: it goes through cooldown and budget again.
            self._fault(c, now, r.last_device_access)

    def _give_up(self, c: _Container, now: float, cause: Cause, restarts: int) -> None:
        name = c.ref.name
        window = self._config.remediation.window
        self._given_up[name] = now
        self._remember(name, HistoryEntry(now, "gave_up", cause.value))
        self._emit(
            "remediation_gave_up",
            c,
            cause=cause.value,
            count=restarts,
            window=window,
            until=now + window,
            dry_run=self._dry_run,
        )
        self._wake(name, DeadlineKind.GIVE_UP_END, now + window)
        self._save()

    def _rearm(self, name: str) -> None:
        del self._given_up[name]
        c = self._containers.get(name)
        self._emit("remediation_rearmed", c, container=name)
        self._save()

    def _given_up_now(self, name: str, now: float) -> bool:
        at = self._given_up.get(name)
        if at is None:
            return False
        if at + self._config.remediation.window <= now:
            self._rearm(name)
            return False
        return True

    def _prune(self, name: str, now: float) -> None:
        window = self._config.remediation.window
        kept = [t for t in self._restarts.get(name, []) if t > now - window]
        if kept:
            self._restarts[name] = kept
        else:
            self._restarts.pop(name, None)

    def _in_window(self, name: str, now: float) -> list[float]:
        # Entries "in the future" (the wall clock stepped back) still count: the
        # safe side is fewer restarts, never more.
        window = self._config.remediation.window
        return [t for t in self._restarts.get(name, []) if t > now - window]

    # -- timers and the operator -----------------------------------------------------------

    def _on_deadline(self, event: DeadlineReached, now: float) -> None:
        key = (event.container, event.kind)
        if self._tokens.get(key) != event.token:
            return  # superseded or cancelled
        del self._tokens[key]
        name = event.container
        if event.kind is DeadlineKind.PAUSE_END:
            pkey = name or ALL_CONTAINERS
            until = self._paused.get(pkey)
            if until is not None and until <= now:
                del self._paused[pkey]
                self._emit("operator_resumed", target=_target(pkey), reason="expired")
                self._save()
            return
        if name is None:
            if event.kind is DeadlineKind.ACTION_LOST:
                self._persistence_lost(now)
            return
        if event.kind is DeadlineKind.GIVE_UP_END:
            self._given_up_now(name, now)
            return
        c = self._containers.get(name)
        if c is None:
            return
        if event.kind is DeadlineKind.CONFIRM:
            if c.remediation is None:
                self._request_confirm(c, now)
        elif event.kind is DeadlineKind.VERIFY_PROBE:
            r = c.remediation
            if r is not None and r.phase is Phase.VERIFYING and not r.by_silence:
                # Verification ignores start_grace (see VERIFY_FIRST).
                if c.state is ContainerState.RUNNING and not self._busy(c, now):
                    self._probe(c, ProbePurpose.VERIFY, now)
                elif not self._busy(c, now):
                    self._retry_verify(c, now)
        elif event.kind is DeadlineKind.VERIFY_DEADLINE:
            self._on_verify_deadline(c, now)
        elif event.kind is DeadlineKind.ACTION_LOST:
            r = c.remediation
            if r is not None and r.phase is Phase.RESTARTING:
                error = f"no answer within {self._restart_bound(c):g} s"
                self._on_restarted(RestartFinished(c.ref, RestartOutcome.FAILED, error), now)
        elif event.kind is DeadlineKind.COOLDOWN_END:
            c.deferred_until = None
            if c.remediation is not None or c.state is not ContainerState.RUNNING:
                return
            if self._settings(c).confirm_with_probe and name not in self._probe_unavailable:
                # The fault may have gone by itself: look again before restarting.
                if self._can_probe(c, now):
                    self._probe(c, ProbePurpose.RECHECK, now)
            else:
                self._fault(c, now, None)

    def _on_reset(self, name: str | None) -> None:
        names = [name] if name else sorted(set(self._restarts) | set(self._given_up))
        for n in names:
            self._restarts.pop(n, None)
            self._given_up.pop(n, None)
            self._host_skips.pop(n, None)
            self._tokens.pop((n, DeadlineKind.GIVE_UP_END), None)
        for key in [k for k in self._notify_skips if name is None or k[0] == name]:
            del self._notify_skips[key]
        if name is None:
            self._host_skips.clear()
        self._emit("operator_reset", target=_target(name))
        self._save()

    def _pause_key(self, key: str, now: float) -> tuple[bool, float | None]:
        if key not in self._paused:
            return False, None
        until = self._paused[key]
        if until is not None and until <= now:
            return False, None
        return True, until

    def _pause_of(self, name: str, now: float) -> tuple[bool, float | None]:
        paused, until = self._pause_key(name, now)
        if paused:
            return paused, until
        return self._pause_key(ALL_CONTAINERS, now)

    def _paused_now(self, name: str | None, now: float) -> bool:
        """Whether remediation of ``name`` (None: host-wide actions) is paused."""
        if name is None:
            return self._pause_key(ALL_CONTAINERS, now)[0]
        return self._pause_of(name, now)[0]


def _take_matches(r: _Remediation) -> int | None:
    """The matches seen since the remediation's last record (None: none); each is
    reported once."""
    n, r.matches = r.matches, 0
    return n or None


def _target(key: str | None) -> str:
    return "all containers" if key in (None, ALL_CONTAINERS) else str(key)
