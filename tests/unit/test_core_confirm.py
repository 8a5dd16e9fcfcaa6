"""A log match alone is not proof: confirmation probes, their limits, and probe results."""

from __future__ import annotations

import itertools

import pytest

from gpuwatchd.config import ContainerOverride
from gpuwatchd.core.machine import CONFIRM_MIN_INTERVAL
from gpuwatchd.model.events import (
    ContainerRef,
    ContainerState,
    ContainerStateChanged,
    LogMatched,
    ProbePurpose,
    ProbeTick,
    RestartContainer,
    RunProbe,
)
from gpuwatchd.model.records import RecordFolder
from gpuwatchd.model.vocabulary import ProbeResult

from .core_harness import KONOMI, OTHER, T0, Harness, count_of, make_config, names, of, records

ER05 = "(ER-05)"


def er05(ref: ContainerRef = KONOMI) -> LogMatched:
    return LogMatched(ref, ER05, "チューナーとの接続が切断されました。(ER-05)")


def confirm_probes(h: Harness) -> list[RunProbe]:
    return [
        a
        for a in of(h.log, RunProbe)
        if isinstance(a, RunProbe) and a.purpose is ProbePurpose.CONFIRM
    ]


class TestConfirmation:
    def test_match_asks_for_a_confirmation_probe(self) -> None:
        h = Harness()
        h.watch()
        out = h.send(er05())
        (probe,) = of(out, RunProbe)
        assert isinstance(probe, RunProbe)
        assert probe.purpose is ProbePurpose.CONFIRM
        assert probe.command == ("nvidia-smi", "-L")
        assert probe.timeout == 10.0
        (rec,) = records(out)
        assert rec.event == "log_pattern_matched"
        assert rec.fields["count"] == 1 and rec.fields["pattern"] == ER05
        assert not of(out, RestartContainer)

    def test_healthy_probe_means_not_a_gpu_fault(self) -> None:
        h = Harness()
        h.watch()
        h.send(er05())
        out = h.answer(ProbeResult.OK)
        assert names(out) == ["log_match_not_gpu"]
        assert records(out)[0].fields["count"] == 1
        assert h.restarts() == 0

    def test_failing_probe_makes_a_fault(self) -> None:
        h = Harness()
        h.watch()
        h.send(er05())
        out = h.answer(ProbeResult.NVML_UNKNOWN_ERROR)
        assert names(out)[0] == "probe_failed"
        assert of(out, RestartContainer)

    def test_matches_while_in_flight_are_counted_not_probed(self) -> None:
        """One probe in flight: further matches are counted, reported with the next probe."""
        h = Harness()
        h.watch()
        h.send(er05())
        for _ in range(4):
            assert not of(h.send(er05(), at=h.now + 1), RunProbe)
        out = h.answer(ProbeResult.OK)  # at T0+4: the 4 newer ones wait for the 10 s limit
        assert [(r.event, r.fields["count"]) for r in records(out)] == [("log_match_not_gpu", 1)]
        out = h.later(10)
        assert len(of(out, RunProbe)) == 1
        assert [(r.event, r.fields["count"]) for r in records(out)] == [("log_pattern_matched", 4)]
        out = h.answer(ProbeResult.OK)
        assert [(r.event, r.fields["count"]) for r in records(out)] == [("log_match_not_gpu", 4)]

    @pytest.mark.parametrize(
        ("gap", "probes"),
        [
            (CONFIRM_MIN_INTERVAL - 0.001, 1),  # just inside the limit: deferred
            (CONFIRM_MIN_INTERVAL, 2),  # exactly the limit: allowed
            (CONFIRM_MIN_INTERVAL + 5, 2),
        ],
    )
    def test_at_most_one_confirmation_per_interval(self, gap: float, probes: int) -> None:
        h = Harness()
        h.watch()
        h.send(er05())
        h.answer(ProbeResult.OK)
        h.send(er05(), at=h.now + gap)
        assert len(confirm_probes(h)) == probes

    def test_deferred_confirmation_runs_when_the_interval_ends(self) -> None:
        h = Harness()
        h.watch()
        h.send(er05())
        h.answer(ProbeResult.OK)
        h.send(er05(), at=h.now + 2)
        h.send(er05(), at=h.now + 2)
        assert len(confirm_probes(h)) == 1
        h.advance(h.now + CONFIRM_MIN_INTERVAL)
        probes = confirm_probes(h)
        assert len(probes) == 2
        assert h.count("log_pattern_matched") == 2

    def test_a_storm_gives_few_probes(self) -> None:
        """ER-05 every 100 ms for a minute with NVML fine: probes stay ≥ 10 s apart."""
        h = Harness()
        h.watch()
        for i in range(600):
            out = h.send(er05(), at=T0 + i / 10)
            for _ in of(out, RunProbe):
                h.answer(ProbeResult.OK)
        times = [t for t, a in h.timeline if isinstance(a, RunProbe)]
        assert all(b - a >= CONFIRM_MIN_INTERVAL for a, b in itertools.pairwise(times))
        assert 5 <= len(confirm_probes(h)) <= 8
        assert h.restarts() == 0

    def test_tuner_fault_records_are_folded(self) -> None:
        """ER-05 with a healthy NVML (a real tuner fault): no restart, log_match_not_gpu folded."""
        h = Harness()
        h.watch()
        folder = RecordFolder(60.0)
        written = []
        for _ in range(300):  # one ER-05 a second for five minutes
            out = h.send(er05(), at=h.now + 1)
            for _p in of(out, RunProbe):
                out += h.answer(ProbeResult.OK)
            for r in records(out):
                written += folder.offer(r, h.now)
        out = h.later(CONFIRM_MIN_INTERVAL)  # the last matches get their probe
        out += h.answer(ProbeResult.OK)
        written += [w for r in records(out) for w in folder.offer(r, h.now)]
        written += folder.flush()
        assert h.restarts() == 0
        not_gpu = [r for r in written if r.event == "log_match_not_gpu"]
        # ~30 probe answers, but one record a minute (plus the first) reaches the journal.
        assert h.count("log_match_not_gpu") >= 25
        assert len(not_gpu) <= 7
        matched = [r for r in written if r.event == "log_pattern_matched"]
        assert sum(count_of(r) for r in matched) == 300

    def test_start_grace_delays_the_confirmation(self) -> None:
        """No probe within probe.start_grace of a (re)start; the match is probed after it."""
        h = Harness()
        h.watch(started_at=h.now - 1)
        out = h.send(er05())
        assert not of(out, RunProbe)
        out = h.advance(h.now + 3.999)
        assert not of(out, RunProbe)
        out = h.advance(h.now + 0.001)
        assert len(of(out, RunProbe)) == 1

    def test_no_confirmation_for_a_container_that_is_not_running(self) -> None:
        h = Harness()
        h.watch()
        h.send(ContainerStateChanged(KONOMI, ContainerState.PAUSED))
        assert not of(h.send(er05()), RunProbe)

    def test_unwatched_container_is_ignored(self) -> None:
        h = Harness()
        h.watch()
        assert h.send(er05(OTHER)) == []

    def test_stale_instance_is_ignored(self) -> None:
        """A line from an old instance of a recreated container is not acted on."""
        h = Harness()
        h.watch()
        assert h.send(er05(ContainerRef("c" * 64, KONOMI.name))) == []

    def test_match_does_not_probe_while_a_timer_probe_runs(self) -> None:
        h = Harness()
        h.watch()
        h.send(ProbeTick(KONOMI))
        assert not of(h.send(er05()), RunProbe)
        out = h.answer(ProbeResult.OK)  # the timer probe started before the match
        assert len(of(out, RunProbe)) == 1  # so the match gets its own confirmation


class TestProbeResults:
    def test_probe_unavailable_warns_once_and_is_never_a_fault(self) -> None:
        h = Harness()
        h.watch()
        for _ in range(5):
            h.send(ProbeTick(KONOMI), at=h.now + 60)
            h.answer(ProbeResult.PROBE_UNAVAILABLE, exit_code=127)
            h.send(er05())
            if of(h.log[-3:], RunProbe):
                h.answer(ProbeResult.PROBE_UNAVAILABLE, exit_code=127)
        assert h.count("probe_unavailable") == 1
        assert h.restarts() == 0
        (warning,) = [r for r in h.all_records() if r.event == "probe_unavailable"]
        assert warning.fields["exit_code"] == 127 and warning.fields["container"] == "KonomiTV"

    def test_timeout_is_recorded_not_remediated(self) -> None:
        h = Harness()
        h.watch()
        h.send(ProbeTick(KONOMI))
        out = h.answer(ProbeResult.TIMEOUT)
        assert names(out) == ["probe_failed"]
        assert records(out)[0].fields["result"] == "timeout"
        assert h.restarts() == 0

    def test_not_running_is_ignored(self) -> None:
        h = Harness()
        h.watch()
        h.send(ProbeTick(KONOMI))
        assert h.answer(ProbeResult.NOT_RUNNING) == []

    @pytest.mark.parametrize(
        "result",
        [
            ProbeResult.NVML_UNKNOWN_ERROR,
            ProbeResult.DRIVER_NOT_LOADED,
            ProbeResult.VERSION_MISMATCH,
            ProbeResult.GPU_LOST,
        ],
    )
    def test_nvml_failures_are_faults(self, result: ProbeResult) -> None:
        """With the host fine, any NVML failure inside is a fault a restart may cure."""
        h = Harness()
        h.gpus()
        h.watch()
        h.send(ProbeTick(KONOMI))
        out = h.answer(result)
        assert of(out, RestartContainer)

    def test_timer_probe_respects_start_grace(self) -> None:
        h = Harness()
        h.watch(started_at=h.now - 4.9)
        assert not of(h.send(ProbeTick(KONOMI)), RunProbe)
        assert of(h.send(ProbeTick(KONOMI), at=h.now + 0.1), RunProbe)

    def test_one_probe_in_flight_per_container(self) -> None:
        h = Harness()
        h.watch()
        assert of(h.send(ProbeTick(KONOMI)), RunProbe)
        assert not of(h.send(ProbeTick(KONOMI), at=h.now + 30), RunProbe)

    def test_a_lost_probe_does_not_silence_the_container_forever(self) -> None:
        h = Harness()
        h.watch()
        h.send(ProbeTick(KONOMI))
        assert of(h.send(ProbeTick(KONOMI), at=h.now + 600), RunProbe)

    def test_probe_command_override(self) -> None:
        cfg = make_config(overrides={"KonomiTV": ContainerOverride(probe_command=("true",))})
        h = Harness(config=cfg)
        h.watch()
        (probe,) = of(h.send(ProbeTick(KONOMI)), RunProbe)
        assert isinstance(probe, RunProbe) and probe.command == ("true",)


class TestPatternAlone:
    """confirm_with_probe = false: the pattern is the fault; silence is the verification."""

    def harness(self) -> Harness:
        cfg = make_config(overrides={"KonomiTV": ContainerOverride(confirm_with_probe=False)})
        h = Harness(config=cfg)
        h.gpus()
        h.watch()
        return h

    def test_pattern_alone_restarts(self) -> None:
        h = self.harness()
        out = h.send(er05())
        assert not of(out, RunProbe)
        assert names(out) == ["log_pattern_matched"]
        assert of(out, RestartContainer)

    def test_silence_verifies_as_unverified(self) -> None:
        h = self.harness()
        h.send(er05())
        h.finish_restart()
        out = h.later(59)
        assert not of(out, RunProbe)  # verification needs no probe
        out = h.later(1)
        (rec,) = [r for r in records(out) if r.event == "container_recovered"]
        assert rec.fields["result"] == "unverified"

    def test_pattern_during_verification_fails_it(self) -> None:
        h = self.harness()
        h.send(er05())
        h.finish_restart()
        out = h.send(er05(), at=h.now + 30)
        failed = [r for r in records(out) if r.event == "remediation_failed"]
        assert failed and failed[0].fields["result"] == "pattern_seen"
        # The fault goes through cooldown: deferred, not restarted at once.
        assert "remediation_deferred" in names(out)
        assert h.restarts() == 1

    def test_other_containers_keep_confirming(self) -> None:
        cfg = make_config(overrides={"KonomiTV": ContainerOverride(confirm_with_probe=False)})
        h = Harness(config=cfg)
        h.watch(OTHER)
        assert of(h.send(er05(OTHER)), RunProbe)
