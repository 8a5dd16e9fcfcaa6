"""Remediation of a container fault: cause, persistence, restart, verification.

The steps, each a phase of :class:`~gpuwatchd.core.base.Phase`: (1) with
``enforce_persistence``, set persistence mode on every GPU seen off; (2)
restart, after taking a budget entry; (3) verify: running again and a probe
passing within ``verify_timeout``; (4) record ``container_recovered`` or
``remediation_failed``. Host causes are never restarted; notify-only
containers are told about, not restarted.
"""
from __future__ import annotations

from gpuwatchd.core.base import (
    ACTION_LOST_AFTER,
    VERIFY_FIRST,
    VERIFY_RETRY,
    VERIFY_RETRY_MAX,
    Phase,
    Remediation,
    TrackedContainer,
    take_matches,
)
from gpuwatchd.core.cause import DeviceAccess, Evidence, cause_of
from gpuwatchd.core.ledger import Ledger
from gpuwatchd.model.advice import ADVICE, NOTIFY_ADVICE
from gpuwatchd.model.events import (
    ContainerState,
    DeadlineKind,
    PersistenceSetFinished,
    PersistenceSetResult,
    RestartContainer,
    RestartFinished,
    RestartOutcome,
)
from gpuwatchd.model.state import (
    HistoryEntry,
)
from gpuwatchd.model.vocabulary import Cause, Confidence, ProbeResult


class Remediating(Ledger):
    """Faults and their remediation over the ledger."""

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
            # The last reading says nothing of now while host NVML fails.
            off_now=(any(not g.persistence for g in self._gpus.values())
                     if self._gpus and nf is None else None),
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

    def _fault(self, c: TrackedContainer, now: float, device_access_ok: bool | None) -> None:
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
        r = Remediation(cause, confidence, began=now)
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
        self, c: TrackedContainer, now: float, cause: Cause, confidence: Confidence | None
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

    def _restart(self, c: TrackedContainer, now: float) -> None:
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
                matches=take_matches(r),
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

    def _restart_bound(self, c: TrackedContainer) -> float:
        # An inspect, the restart (its stop grace plus the call) and an inspect again.
        return (self._settings(c).restart_timeout + 3 * self._config.docker.timeout
                + ACTION_LOST_AFTER)

    def _emit_restarted(self, c: TrackedContainer, r: Remediation) -> None:
        self._emit(
            "container_restarted",
            c,
            cause=r.cause.value,
            confidence=r.confidence.value if r.confidence else None,
            attempt=r.attempt,
            max_restarts=self._config.remediation.max_restarts,
            count=r.faults,
            matches=take_matches(r),
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
                matches=take_matches(r),
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
                matches=take_matches(r),
                dry_run=self._dry_run,
            )

    def _retry_verify(self, c: TrackedContainer, now: float) -> None:
        r = c.remediation
        assert r is not None
        deadline = r.restarted_at + self._config.remediation.verify_timeout
        # Quick at first (most heals verify within a second or two), then
        # backing off so a failed heal costs a handful of probes, not dozens.
        at = now + min(VERIFY_RETRY * 2**r.verify_retries, VERIFY_RETRY_MAX)
        r.verify_retries += 1
        if at < deadline:
            self._wake(c.ref.name, DeadlineKind.VERIFY_PROBE, at)

    def _recovered(self, c: TrackedContainer, now: float, result: str) -> None:
        r = c.remediation
        assert r is not None
        self._emit(
            "container_recovered",
            c,
            result=result,
            cause=r.cause.value,
            elapsed=round(now - r.restarted_at, 3),
            count=r.faults,
            matches=take_matches(r),
            dry_run=self._dry_run,
        )
        c.remediation = None
        c.last_confirm = None  # healed: the next matching line is confirmed at once
        self._remember(c.ref.name, HistoryEntry(now, "recovered", r.cause.value, result))
        self._save()

    def _remediation_failed(self, c: TrackedContainer, now: float, result: str) -> None:
        r = c.remediation
        assert r is not None
        self._emit(
            "remediation_failed",
            c,
            result=result,
            cause=r.cause.value,
            state=c.state.value if c.state is not ContainerState.RUNNING else None,
            count=r.faults,
            matches=take_matches(r),
            dry_run=self._dry_run,
        )
        c.remediation = None

    def _on_verify_deadline(self, c: TrackedContainer, now: float) -> None:
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
