"""Remediation: the steps in order, verification, budgets, give-up, the operator, dry run."""

from __future__ import annotations

import pytest

from gpuwatchd.config import Config, RemediationConfig
from gpuwatchd.core.machine import Phase
from gpuwatchd.model.events import (
    ConfigChanged,
    ContainerRef,
    ContainerState,
    ContainerStateChanged,
    ContainerUnwatched,
    ContainerWatched,
    NvmlFailure,
    NvmlUnavailable,
    PauseRequested,
    ProbePurpose,
    ProbeTick,
    ResetRequested,
    RestartContainer,
    RestartOutcome,
    ResumeRequested,
    RunProbe,
    SaveState,
    SetPersistence,
    SystemdReloaded,
)
from gpuwatchd.model.state import PersistedState
from gpuwatchd.model.vocabulary import ProbeResult

from .core_harness import (
    GPU0,
    GPU0_OFF,
    KONOMI,
    OTHER,
    T0,
    Harness,
    make_config,
    names,
    of,
    records,
)


def heal(h: Harness, ref: ContainerRef = KONOMI) -> None:
    """Finish the restart under way and let the verification probe pass."""
    h.finish_restart()
    h.later(h.config.probe.start_grace)
    h.answer(ProbeResult.OK, ref)


def fail_verification(h: Harness) -> None:
    """Finish the restart under way; every verification probe keeps failing."""
    h.finish_restart()
    end = h.now + h.config.remediation.verify_timeout
    while h.now < end:
        out = h.advance(min(end, h.now + 1))
        for _ in [a for a in out if isinstance(a, RunProbe)]:
            h.answer(ProbeResult.NVML_UNKNOWN_ERROR)


class TestSteps:
    def test_field_report_end_to_end(self) -> None:
        """Persistence off, NVML lost inside: set persistence, restart, verify, recovered."""
        h = Harness()
        h.gpus(GPU0)
        h.watch(started_at=T0 - 7200)
        out = h.gpus(GPU0_OFF)  # drift: recorded, set again, every container probed
        assert names(out) == ["gpu_persistence_off"]
        assert of(out, SetPersistence) == [SetPersistence((0,))]
        (probe,) = of(out, RunProbe)
        assert isinstance(probe, RunProbe) and probe.purpose is ProbePurpose.DRIFT
        out = h.answer(ProbeResult.NVML_UNKNOWN_ERROR)
        assert names(out) == ["probe_failed"]
        assert not of(out, RestartContainer)  # step 1 first: persistence is being set
        out = h.finish_set()
        assert names(out) == ["gpu_persistence_enabled"]
        kinds = [type(a).__name__ for a in out if not isinstance(a, type(out[0]))]
        # The budget is durable before the restart; the restart has a deadline.
        assert kinds == ["SaveState", "RestartContainer", "ScheduleWakeup"]
        (restart,) = of(out, RestartContainer)
        assert isinstance(restart, RestartContainer) and restart.timeout == 30.0
        out = h.finish_restart()
        (rec,) = records(out)
        assert rec.event == "container_restarted"
        assert rec.fields["cause"] == "persistence_off" and rec.fields["attempt"] == 1
        assert rec.fields["dry_run"] is False
        out = h.later(0.4)
        assert not of(out, RunProbe)
        out = h.later(0.1)  # VERIFY_FIRST after the restart, not start_grace
        (verify,) = of(out, RunProbe)
        assert isinstance(verify, RunProbe) and verify.purpose is ProbePurpose.VERIFY
        out = h.answer(ProbeResult.OK)
        (rec,) = records(out)
        assert rec.event == "container_recovered" and rec.fields["result"] == "ok"
        assert h.core.snapshot(h.now).containers[0].restarts_in_window == 1

    def test_persistence_is_not_touched_without_enforce(self) -> None:
        h = Harness(config=make_config(enforce_persistence=False))
        h.watch()
        out = h.gpus(GPU0_OFF)
        assert not of(out, SetPersistence)
        out = h.answer(ProbeResult.NVML_UNKNOWN_ERROR)
        assert of(out, RestartContainer) and not of(out, SetPersistence)

    def test_persistence_on_restarts_directly(self) -> None:
        h = Harness()
        h.gpus(GPU0)
        h.watch()
        out = h.fault()
        assert of(out, RestartContainer) and not of(out, SetPersistence)

    def test_set_failure_still_restarts_and_is_recorded(self) -> None:
        h = Harness()
        h.gpus(GPU0_OFF)
        h.watch(started_at=T0)
        h.later(10)
        h.fault()
        out = h.finish_set(ok=False)
        assert "gpu_persistence_set_failed" in names(out)
        assert of(out, RestartContainer)

    def test_drift_retries_setting_persistence_once_per_cooldown(self) -> None:
        h = Harness()
        h.gpus(GPU0_OFF)
        h.finish_set(ok=False)
        assert not of(h.send(ProbeTick(KONOMI)), SetPersistence)
        assert not of(h.gpus(GPU0_OFF), SetPersistence)
        h.later(120)
        assert of(h.gpus(GPU0_OFF), SetPersistence)
        assert h.count("gpu_persistence_off") == 1  # once per transition

    def test_faults_during_a_remediation_join_it(self) -> None:
        h = Harness()
        h.gpus()
        h.watch()
        h.fault()
        for _ in range(3):
            h.send(ProbeTick(KONOMI), at=h.now + 1)
        h.send(ProbeTick(OTHER))
        from gpuwatchd.model.events import LogMatched

        for _ in range(5):
            h.send(LogMatched(KONOMI, "(ER-05)"))
        heal(h)
        assert h.restarts() == 1
        (rec,) = [r for r in h.all_records() if r.event == "container_recovered"]
        assert rec.fields["count"] == 6

    def test_verification_timeout_fails_and_the_fault_goes_on(self) -> None:
        h = Harness()
        h.gpus()
        h.watch()
        h.fault()
        fail_verification(h)
        (rec,) = [r for r in h.all_records() if r.event == "remediation_failed"]
        assert rec.fields["result"] == "nvml_unknown_error"
        assert h.count("remediation_deferred") == 1  # cooldown: 120 s after the restart
        verify = [a for a in h.log if isinstance(a, RunProbe) and a.purpose is ProbePurpose.VERIFY]
        assert 8 <= len(verify) <= 13  # retried every few seconds until the deadline
        out = h.advance(T0 + 120)
        (recheck,) = of(out, RunProbe)
        assert isinstance(recheck, RunProbe) and recheck.purpose is ProbePurpose.RECHECK
        out = h.answer(ProbeResult.NVML_UNKNOWN_ERROR)
        assert of(out, RestartContainer)

    def test_recheck_finding_it_healed_does_nothing(self) -> None:
        h = Harness()
        h.gpus()
        h.watch()
        h.fault()
        fail_verification(h)
        h.advance(T0 + 120)
        assert h.answer(ProbeResult.OK) == []
        assert h.restarts() == 1

    def test_container_dying_during_verification_is_left_alone(self) -> None:
        h = Harness()
        h.gpus()
        h.watch()
        h.fault()
        h.finish_restart()
        h.send(ContainerStateChanged(KONOMI, ContainerState.EXITED))
        out = h.later(60)
        (rec,) = records(out)
        assert rec.event == "remediation_failed" and rec.fields["result"] == "not_running"
        h.later(3600)
        assert h.restarts() == 1

    def test_restart_error_is_recorded(self) -> None:
        h = Harness()
        h.gpus()
        h.watch()
        h.fault()
        out = h.finish_restart(RestartOutcome.FAILED)
        (rec,) = records(out)
        assert rec.event == "remediation_failed" and rec.fields["result"] == "restart_error"


def burn(h: Harness, n: int, gap: float) -> None:
    """n faults, ``gap`` seconds apart, each restarted (if allowed) and failing verification."""
    for _ in range(n):
        out = h.fault()
        if of(out, RestartContainer):
            fail_verification(h)
        h.advance(h.now + gap)


class TestBudget:
    @pytest.mark.parametrize("max_restarts", [0, 1, 2, 3, 5])
    def test_exactly_max_restarts_then_give_up(self, max_restarts: int) -> None:
        h = Harness(config=make_config(max_restarts=max_restarts))
        h.gpus()
        h.watch()
        burn(h, max_restarts + 4, gap=200)
        assert h.restarts() == max_restarts
        assert h.count("remediation_gave_up") == 1
        (rec,) = [r for r in h.all_records() if r.event == "remediation_gave_up"]
        assert rec.fields["count"] == max_restarts

    def test_cooldown_edges(self) -> None:
        """A fault just inside the cooldown waits; the recheck exactly at its end acts."""
        h = Harness()
        h.gpus()
        h.watch()
        h.fault()
        heal(h)
        h.advance(T0 + 119.999)
        out = h.fault()
        assert not of(out, RestartContainer) and "remediation_deferred" in names(out)
        out = h.advance(T0 + 120)
        assert of(out, RunProbe)
        assert of(h.answer(ProbeResult.NVML_UNKNOWN_ERROR), RestartContainer)

    def test_window_slides(self) -> None:
        """The oldest restart leaving the window frees one slot, at exactly ``window``."""
        h = Harness(config=make_config(max_restarts=2, window=1000, cooldown=10))
        h.gpus()
        h.watch()
        h.fault()  # restart at T0
        heal(h)
        h.advance(T0 + 100)
        h.fault()  # restart at T0+100
        heal(h)
        h.advance(T0 + 999.9)
        out = h.fault()
        assert not of(out, RestartContainer) and "remediation_gave_up" in names(out)

    def test_window_slides_before_give_up(self) -> None:
        h = Harness(config=make_config(max_restarts=2, window=1000, cooldown=10))
        h.gpus()
        h.watch()
        h.fault()
        heal(h)
        h.advance(T0 + 100)
        h.fault()
        heal(h)
        h.advance(T0 + 1000)  # T0's restart has left the window
        assert of(h.fault(), RestartContainer)

    def test_give_up_ends_when_the_window_passes(self) -> None:
        h = Harness(config=make_config(max_restarts=1, window=1000, cooldown=10))
        h.gpus()
        h.watch()
        burn(h, 2, gap=100)
        assert h.count("remediation_gave_up") == 1
        burn(h, 3, gap=100)  # still given up: silent, no restarts
        assert h.restarts() == 1 and h.count("remediation_gave_up") == 1
        gave_up_at = h.core.snapshot(h.now).containers[0].given_up_at
        assert gave_up_at is not None
        out = h.advance(gave_up_at + 1000)
        assert names(out) == ["remediation_rearmed"]
        assert of(h.fault(), RestartContainer)

    def test_reset_rearms(self) -> None:
        h = Harness(config=make_config(max_restarts=1))
        h.gpus()
        h.watch()
        burn(h, 2, gap=200)
        assert h.count("remediation_gave_up") == 1
        out = h.send(ResetRequested("KonomiTV"))
        assert names(out) == ["operator_reset"] and of(out, SaveState)
        assert h.saved().given_up == {} and "KonomiTV" not in h.saved().restarts
        assert of(h.fault(), RestartContainer)

    def test_reset_all(self) -> None:
        h = Harness(config=make_config(max_restarts=0))
        h.gpus()
        h.watch()
        h.watch(OTHER)
        h.fault()
        h.fault(OTHER)
        assert h.count("remediation_gave_up") == 2
        h.send(ResetRequested(None))
        assert not h.saved().given_up and not h.saved().restarts

    def test_config_reload_does_not_reset_budgets(self) -> None:
        h = Harness(config=make_config(max_restarts=1))
        h.gpus()
        h.watch()
        burn(h, 2, gap=200)
        out = h.send(ConfigChanged(make_config(max_restarts=1)))
        assert names(out) == ["config_reloaded"]
        burn(h, 2, gap=200)
        assert h.restarts() == 1 and h.count("remediation_gave_up") == 1

    def test_give_up_survives_a_state_round_trip(self, tmp_path: object) -> None:
        """A daemon restart keeps the budget: the saved state gives up the same container."""
        from pathlib import Path

        from gpuwatchd.adapters.state_file import load_state, save_state

        assert isinstance(tmp_path, Path)
        h = Harness(config=make_config(max_restarts=1))
        h.gpus()
        h.watch()
        burn(h, 2, gap=200)
        save_state(tmp_path / "state.json", h.saved())
        state, warning = load_state(tmp_path / "state.json")
        assert warning is None
        h2 = Harness(config=make_config(max_restarts=1), state=state, now=h.now)
        h2.gpus()
        h2.watch()
        h2.fault()
        assert h2.restarts() == 0 and h2.count("remediation_gave_up") == 0
        assert h2.core.snapshot(h2.now).containers[0].given_up_at is not None

    def test_restart_history_survives_a_state_round_trip(self) -> None:
        h = Harness(config=make_config(max_restarts=2))
        h.gpus()
        h.watch()
        h.fault()
        heal(h)
        h2 = Harness(config=make_config(max_restarts=2), state=h.saved(), now=h.now + 200)
        h2.gpus()
        h2.watch()
        assert of(h2.fault(), RestartContainer)
        fail_verification(h2)  # the fault outlives restart 2 of 2: given up at once
        assert h2.count("remediation_gave_up") == 1
        h2.advance(h2.now + 200)
        assert not of(h2.fault(), RestartContainer)

    def test_budget_is_keyed_by_name_across_recreation(self) -> None:
        h = Harness(config=make_config(max_restarts=1))
        h.gpus()
        h.watch()
        h.fault()
        heal(h)
        new = ContainerRef("d" * 64, "KonomiTV")
        out = h.send(ContainerUnwatched(KONOMI, "destroy"))
        assert names(out) == ["watch_set_changed"]
        h.watch(new, started_at=h.now)
        h.advance(h.now + 200)
        assert "remediation_gave_up" in names(h.fault(new))

    def test_stale_loaded_give_up_is_rearmed_at_start(self) -> None:
        state = PersistedState(given_up={"KonomiTV": T0 - 4000})
        h = Harness(state=state)
        assert h.count("remediation_rearmed") == 1


class TestHostCauses:
    @pytest.mark.parametrize(
        "failure",
        [NvmlFailure.VERSION_MISMATCH, NvmlFailure.GPU_LOST, NvmlFailure.DRIVER_NOT_LOADED],
    )
    def test_skipped_with_advice_once_per_window(self, failure: NvmlFailure) -> None:
        h = Harness()
        h.gpus()
        h.watch()
        h.send(NvmlUnavailable(failure, "nvmlInit"))
        for _ in range(10):
            h.fault()
            h.later(300)
        assert h.restarts() == 0
        (rec,) = [r for r in h.all_records() if r.event == "remediation_skipped"]
        assert rec.fields["reason"] == "host_cause" and rec.fields["cause"] == failure.value
        assert "reboot" in str(rec.fields["advice"]) or "modprobe" in str(rec.fields["advice"])
        h.later(3600)
        h.fault()
        assert h.count("remediation_skipped") == 2

    def test_nvml_unavailable_recorded_once_per_transition(self) -> None:
        h = Harness()
        for _ in range(3):
            h.send(NvmlUnavailable(NvmlFailure.DRIVER_NOT_LOADED))
        h.gpus()
        h.send(NvmlUnavailable(NvmlFailure.DRIVER_NOT_LOADED))
        assert names(h.log) == ["nvml_unavailable", "nvml_available", "nvml_unavailable"]


class TestOperator:
    @pytest.mark.parametrize(
        "state",
        [
            ContainerState.EXITED,
            ContainerState.PAUSED,
            ContainerState.RESTARTING,
            ContainerState.REMOVING,
            ContainerState.CREATED,
            ContainerState.DEAD,
        ],
    )
    def test_never_acts_on_a_container_that_is_not_running(self, state: ContainerState) -> None:
        h = Harness()
        h.gpus()
        h.watch()
        h.send(ProbeTick(KONOMI))
        h.send(ContainerStateChanged(KONOMI, state))
        out = h.answer(ProbeResult.NVML_UNKNOWN_ERROR)  # a probe result arriving late
        assert not of(out, RestartContainer)
        assert not of(h.send(ProbeTick(KONOMI)), RunProbe)

    def test_stopped_right_before_restart_is_left_stopped_and_refunded(self) -> None:
        h = Harness(config=make_config(max_restarts=1))
        h.gpus()
        h.watch()
        h.fault()
        out = h.finish_restart(RestartOutcome.NOT_RUNNING, state=ContainerState.EXITED)
        (rec,) = records(out)
        assert rec.event == "remediation_skipped" and rec.fields["reason"] == "not_running"
        assert rec.fields["state"] == "exited"
        assert "KonomiTV" not in h.saved().restarts  # the budget entry is given back
        h.send(ContainerStateChanged(KONOMI, ContainerState.RUNNING, h.now), at=h.now + 200)
        assert of(h.fault(), RestartContainer)  # the one restart is still available

    @pytest.mark.parametrize("label", ["com.docker.swarm.service.id", "io.kubernetes.pod.name"])
    def test_orchestrated_is_warned_once_and_never_restarted(self, label: str) -> None:
        h = Harness()
        h.gpus()
        h.watch(labels={label: "x"})
        for _ in range(3):
            h.fault()
            h.later(300)
        assert h.restarts() == 0
        skipped = [r for r in h.all_records() if r.event == "remediation_skipped"]
        assert [r.fields["reason"] for r in skipped] == ["orchestrated"]
        assert h.count("probe_failed") == 3  # still watched and recorded

    def test_unwatched_container_is_never_touched(self) -> None:
        h = Harness()
        h.gpus()
        h.watch()
        h.send(ProbeTick(KONOMI))
        h.send(ContainerUnwatched(KONOMI, "label removed"))
        assert h.answer(ProbeResult.NVML_UNKNOWN_ERROR) == []
        assert h.send(ProbeTick(KONOMI)) == []
        assert h.restarts() == 0

    def test_pause_one_container(self) -> None:
        h = Harness()
        h.gpus()
        h.watch()
        h.watch(OTHER)
        out = h.send(PauseRequested("KonomiTV", T0 + 3600))
        assert names(out) == ["operator_paused"] and of(out, SaveState)
        out = h.fault()
        assert not of(out, RestartContainer)
        assert [r.fields["reason"] for r in records(out) if r.event == "remediation_skipped"] == [
            "paused"
        ]
        assert of(h.fault(OTHER), RestartContainer)
        view = {c.name: c for c in h.core.snapshot(h.now).containers}
        assert view["KonomiTV"].paused and view["KonomiTV"].paused_until == T0 + 3600
        assert not view["Mirakurun"].paused

    def test_pause_all_stops_persistence_too(self) -> None:
        h = Harness()
        h.gpus()
        h.watch()
        h.send(PauseRequested(None, None))
        assert not of(h.gpus(GPU0_OFF), SetPersistence)
        assert not of(h.answer(ProbeResult.NVML_UNKNOWN_ERROR), RestartContainer)
        assert h.core.snapshot(h.now).paused_all

    def test_pause_expires(self) -> None:
        h = Harness()
        h.gpus()
        h.watch()
        h.send(PauseRequested("KonomiTV", T0 + 60))
        out = h.advance(T0 + 60)
        (rec,) = records(out)
        assert rec.event == "operator_resumed" and rec.fields["reason"] == "expired"
        assert of(h.fault(), RestartContainer)

    def test_resume(self) -> None:
        h = Harness()
        h.gpus()
        h.watch()
        h.send(PauseRequested(None, None))
        out = h.send(ResumeRequested(None))
        assert names(out) == ["operator_resumed"]
        assert of(h.fault(), RestartContainer)

    def test_pause_survives_a_state_round_trip(self) -> None:
        h = Harness()
        h.send(PauseRequested("KonomiTV", T0 + 600))
        h2 = Harness(state=h.saved())
        h2.gpus()
        h2.watch()
        assert not of(h2.fault(), RestartContainer)
        assert names(h2.advance(T0 + 600)) == ["operator_resumed"]


class TestDryRun:
    def test_records_every_decision_and_changes_nothing(self) -> None:
        """Drift, the fault, each would-be restart and the give-up: recorded, nothing done."""
        h = Harness(config=make_config(max_restarts=2, cooldown=120), dry_run=True)
        h.gpus(GPU0)
        h.watch()
        h.gpus(GPU0_OFF)
        h.answer(ProbeResult.NVML_UNKNOWN_ERROR)  # the drift probe: NVML lost inside
        for _ in range(40):  # the fault stays (nothing was healed): timer probes find it
            out = h.send(ProbeTick(KONOMI), at=h.now + 60)
            out += h.advance(h.now)
            if of(out, RunProbe):
                h.answer(ProbeResult.NVML_UNKNOWN_ERROR)
            for a in h.pending[:]:
                if a.at <= h.now:
                    h.advance(h.now)
        assert not of(h.log, SetPersistence)
        assert not of(h.log, RestartContainer)
        assert not of(h.log, SaveState)
        recs = h.all_records()
        assert all(r.fields.get("dry_run") is True for r in recs)
        restarted = [r for r in recs if r.event == "container_restarted"]
        assert [r.fields["attempt"] for r in restarted] == [1, 2]
        assert all(r.fields["cause"] == "persistence_off" for r in restarted)
        assert h.count("gpu_persistence_enabled") >= 1
        assert h.count("remediation_gave_up") == 1

    def test_dry_run_restarts_respect_cooldown(self) -> None:
        h = Harness(dry_run=True)
        h.gpus()
        h.watch()
        h.fault()
        out = h.fault()
        assert "remediation_deferred" in names(out)
        assert h.count("container_restarted") == 1


class TestWatchSet:
    def test_watch_and_recreate_are_recorded(self) -> None:
        h = Harness()
        out = h.watch()
        (rec,) = records(out)
        assert rec.event == "watch_set_changed" and rec.fields["change"] == "watched"
        assert rec.fields["container_id"] == "a" * 12
        out = h.watch(ContainerRef("e" * 64, "KonomiTV"))
        assert records(out)[0].fields["change"] == "recreated"

    def test_same_instance_again_only_updates(self) -> None:
        h = Harness()
        h.watch()
        assert h.send(ContainerWatched(KONOMI, ContainerState.RUNNING, T0)) == []

    def test_reload_probes_every_container(self) -> None:
        h = Harness()
        h.watch()
        h.watch(OTHER)
        out = h.send(SystemdReloaded(T0))
        assert names(out) == ["systemd_reload_detected"]
        assert {a.ref for a in of(out, RunProbe) if isinstance(a, RunProbe)} == {KONOMI, OTHER}


class TestSnapshot:
    def test_status_view(self) -> None:
        h = Harness(config=Config(remediation=RemediationConfig(max_restarts=2)))
        h.watch()
        h.gpus(GPU0_OFF)
        h.answer(ProbeResult.NVML_UNKNOWN_ERROR)
        view = h.core.snapshot(h.now)
        (gpu,) = view.gpus
        assert gpu.persistence is False and gpu.last_seen_disabled == T0
        (c,) = view.containers
        assert c.last_probe_result is ProbeResult.NVML_UNKNOWN_ERROR
        assert c.remediation is Phase.PERSISTENCE
        doc = view.to_json()
        assert doc["containers"][0]["remediation"] == "persistence"
        h.send(NvmlUnavailable(NvmlFailure.GPU_LOST))
        assert h.core.snapshot(h.now).nvml_unavailable == "gpu_lost"
