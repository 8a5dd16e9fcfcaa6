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

:class:`Core` is the one entry point; its parts live beside it:
:mod:`~gpuwatchd.core.base` (what it tracks, how it emits),
:mod:`~gpuwatchd.core.ledger` (budgets, give-ups, pauses),
:mod:`~gpuwatchd.core.remediation` (a fault to its verified end),
:mod:`~gpuwatchd.core.cause` (the cause rule) and :mod:`~gpuwatchd.core.views`
(what ``status`` shows). This module holds the event dispatch, GPUs, the
watch set, log matches and probe results, and the timers.

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

from gpuwatchd.core.base import (
    ACTION_LOST_AFTER,
    CONFIRM_MIN_INTERVAL,
    PROBE_LOST_AFTER,
    VERIFY_FIRST,
    VERIFY_RETRY,
    VERIFY_RETRY_MAX,
    Phase,
    TrackedContainer,
    TrackedGpu,
    target_name,
)
from gpuwatchd.core.remediation import Remediating
from gpuwatchd.core.views import ContainerView, CoreView, GpuView
from gpuwatchd.model.events import (
    Action,
    ConfigChanged,
    ContainerState,
    ContainerStateChanged,
    ContainerUnwatched,
    ContainerWatched,
    DeadlineKind,
    DeadlineReached,
    DockerAvailable,
    DockerUnavailable,
    Event,
    GpuSnapshot,
    LogMatched,
    NvmlUnavailable,
    PauseRequested,
    PersistenceSetFinished,
    ProbeFinished,
    ProbePurpose,
    ProbeTick,
    ResetRequested,
    RestartFinished,
    RestartOutcome,
    ResumeRequested,
    SystemdReloaded,
)
from gpuwatchd.model.state import (
    ALL_CONTAINERS,
)
from gpuwatchd.model.vocabulary import ORCHESTRATOR_LABEL_PREFIXES, ProbeResult

__all__ = [
    "ACTION_LOST_AFTER",
    "CONFIRM_MIN_INTERVAL",
    "PROBE_LOST_AFTER",
    "VERIFY_FIRST",
    "VERIFY_RETRY",
    "VERIFY_RETRY_MAX",
    "Core",
    "Phase",
]


class Core(Remediating):
    """The pure decision core. See the module docstring for the rules.

    ``state``: what :func:`gpuwatchd.adapters.state_file.load_state` read (None: empty).
    ``dry_run``: decide and record everything, change nothing.
    """

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
                    self._emit("operator_resumed", target=target_name(key), reason="expired")
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
                if not event.before_start:
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
                self._emit("operator_paused", target=target_name(key), until=event.until)
                if event.until is not None:
                    self._wake(key, DeadlineKind.PAUSE_END, event.until)
                self._save()
            case ResumeRequested():
                keys = [event.container] if event.container else list(self._paused)
                for key in keys:
                    self._paused.pop(key, None)
                    self._tokens.pop((key, DeadlineKind.PAUSE_END), None)
                target = target_name(event.container)
                self._emit("operator_resumed", target=target, reason="operator")
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

    def _on_gpus(self, event: GpuSnapshot, now: float) -> None:
        if self._nvml_failure is not None:
            self._nvml_failure = None
            self._emit("nvml_available")
        newly_off = turned_on = False
        start = len(self._out)
        gpus: dict[int, TrackedGpu] = {}
        for info in event.gpus:
            prev = self._gpus.get(info.index)
            gpus[info.index] = TrackedGpu(info, info.persistence, now)
            if info.persistence:
                # Saved so the state file holds the last moment it was seen off.
                turned_on |= prev is not None and not prev.persistence
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
        self._led_to(start, lambda: self._after_snapshot(newly_off, turned_on, now))

    def _after_snapshot(self, newly_off: bool, turned_on: bool, now: float) -> None:
        if newly_off or turned_on:
            self._save()
        if newly_off:
            self._probe_all(ProbePurpose.DRIFT, now)
        off = [g for g in self._gpus.values() if not g.persistence]
        if off and self._config.gpu.enforce_persistence and not self._paused_now(None, now):
            retry = self._config.remediation.cooldown
            due = [g for g in off if self._set_attempts.get(g.info.index, -retry) + retry <= now]
            if due and not self._set_in_flight:
                self._set_persistence(due, now)

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
        c = TrackedContainer(
            event.ref, event.state, event.started_at, orchestrated, image=event.image
        )
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

    def _request_confirm(self, c: TrackedContainer, now: float) -> None:
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
                self._emit("operator_resumed", target=target_name(pkey), reason="expired")
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
