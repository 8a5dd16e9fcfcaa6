"""diagnose with what gpuwatchd saw and did: a heal is ``healed`` (never the tuner's
fault), a genuine tuner fault is still ``not_gpu``, and a give-up is named."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpuwatchd.adapters.state_file import HistoryEntry
from gpuwatchd.diagnose.data import (
    ContainerFacts,
    Facts,
    HistoryFacts,
    LogFacts,
    Status,
)
from gpuwatchd.diagnose.render import (
    history_source,
    render_text,
    to_json,
)
from gpuwatchd.diagnose.verdict import (
    container_verdict,
    diagnose,
)
from gpuwatchd.exitcodes import ExitCode
from gpuwatchd.model.vocabulary import ProbeResult
from tests.unit.test_diagnose import NAME, NO_PM, STARTED, container, host


def logs_at(*offsets: float) -> LogFacts:
    """ER-05 lines logged at STARTED + each offset."""
    times = tuple(STARTED + o for o in offsets)
    since = sum(1 for t in times if t > STARTED + 2.0)
    return LogFacts(("(ER-05)",), 100, len(times), since, "(ER-05)" if times else None,
                    times[-1] if times else None, None, times)


def healed_by(cause: str, detail: str = "certain", at: float = STARTED + 0.6,
              *, offsets: tuple[float, ...] = (-0.4, 0.3)) -> ContainerFacts:
    """The container as diagnose sees it right after gpuwatchd healed it: the ER-05
    line that led to the restart carries a time just after the new StartedAt."""
    return replace(container(ProbeResult.OK), logs=logs_at(*offsets), history=(
        HistoryEntry(at, "restarted", cause, detail),
        HistoryEntry(at + 0.5, "recovered", cause, "ok")))


@pytest.mark.parametrize("cause, fix_for_good", [
    ("persistence_off", "nvidia-persistence-mode.service"),
    ("device_access_lost", "nvidia-ctk system create-dev-char-symlinks"),
])
def test_right_after_a_heal_the_verdict_is_healed_never_not_gpu(
    cause: str, fix_for_good: str
) -> None:
    v = container_verdict(host(), healed_by(cause))
    assert v.cause == "healed" and v.status is Status.HEALTHY
    assert "gpuwatchd restarted it at" in v.summary and f"for {cause} (certain)" in v.summary
    assert any(fix_for_good in f for f in v.fix_for_good)
    assert any(e.startswith("gpuwatchd: restarted at") for e in v.evidence)


def test_healed_says_whether_persistence_mode_is_on() -> None:
    assert "persistence mode is on" in container_verdict(
        host(), healed_by("persistence_off")).summary
    assert "persistence mode is off again on GPU 0" in container_verdict(
        host(persistence=False), healed_by("persistence_off")).summary


def test_healed_alone_exits_0_and_host_findings_keep_their_rules() -> None:
    d = diagnose(Facts(host(), (healed_by("persistence_off"),)))
    assert (d.verdict.cause, d.exit_code) == ("healed", ExitCode.OK)
    d = diagnose(Facts(host(persistenced=NO_PM), (healed_by("persistence_off"),)))
    assert d.exit_code == ExitCode.PROBLEM
    assert d.containers[0].verdict.cause == "healed"


def test_a_tuner_fault_is_still_not_gpu_with_or_without_history() -> None:
    every_second = tuple(float(s) for s in range(5, 65))
    tuner = replace(container(ProbeResult.OK), logs=logs_at(*every_second))
    assert container_verdict(host(), tuner).cause == "not_gpu"
    v = container_verdict(host(), replace(tuner, history=healed_by("persistence_off").history))
    assert v.cause == "not_gpu" and "60 matching line(s)" in v.summary


def test_a_line_the_restart_explains_is_not_the_tuners() -> None:
    """The line just before the restart, stamped within the margin of StartedAt,
    never counts; without a gpuwatchd restart it is just healthy."""
    c = replace(container(ProbeResult.OK), logs=logs_at(-0.4, 0.3))
    assert container_verdict(host(), c).cause == "healthy"


def test_a_start_gpuwatchd_did_not_make_is_not_healed() -> None:
    """Someone restarted it by hand after gpuwatchd's restart: plain healthy."""
    c = healed_by("persistence_off", at=STARTED - 600, offsets=())
    assert container_verdict(host(), c).cause == "healthy"


def test_a_give_up_is_named_with_reset() -> None:
    c = replace(container(ProbeResult.NVML_UNKNOWN_ERROR, access=False),
                history=(HistoryEntry(STARTED + 100, "gave_up", "device_access_lost"),),
                given_up_at=STARTED + 100)
    v = container_verdict(host(), c)
    assert v.cause == "device_access_lost" and v.status is Status.PROBLEM
    assert "gave up on KonomiTV at" in v.summary and "(device_access_lost)" in v.summary
    assert v.fix_now[-1].startswith(f"gpuwatchd reset {NAME}")


def test_the_history_source_and_its_age_are_shown() -> None:
    now = STARTED + 3600
    assert history_source(HistoryFacts("daemon", "/run/gpuwatchd", now), now).startswith(
        "from the running daemon")
    text = history_source(HistoryFacts("state file", "/var/lib/gpuwatchd/state.json",
                                       now - 300), now)
    assert text == ("from the state file /var/lib/gpuwatchd/state.json, written 5 min ago "
                    "(no daemon answered)")
    assert history_source(HistoryFacts(error="no state file"), now) == "none (no state file)"
    d = diagnose(Facts(host(), (healed_by("persistence_off"),),
                       HistoryFacts("daemon", "/run/gpuwatchd", now)))
    assert "gpuwatchd history: from the running daemon" in render_text(d)
    doc = to_json(d)
    assert doc["history"]["source"] == "daemon"
    assert [e["event"] for e in doc["containers"][0]["history"]] == ["restarted", "recovered"]


def test_gpuwatchds_journal_records_read_as_history() -> None:
    """Only gpuwatchd's own, real (not dry-run) records become history, oldest first."""
    from datetime import datetime, timezone

    from gpuwatchd.diagnose.facts import history_from_journal

    def at(seconds: float) -> datetime:
        return datetime.fromtimestamp(STARTED + seconds, tz=timezone.utc)

    base = {"SYSLOG_IDENTIFIER": "gpuwatchd", "CONTAINER_NAME": NAME,
            "GPUWATCHD_CAUSE": "persistence_off"}
    entries = [
        {**base, "GPUWATCHD_EVENT": "container_recovered", "GPUWATCHD_RESULT": "ok",
         "__REALTIME_TIMESTAMP": at(2)},
        {**base, "GPUWATCHD_EVENT": "container_restarted", "GPUWATCHD_CONFIDENCE": "certain",
         "__REALTIME_TIMESTAMP": at(1)},
        {**base, "GPUWATCHD_EVENT": "container_restarted", "GPUWATCHD_DRY_RUN": "true",
         "__REALTIME_TIMESTAMP": at(3)},
        {**base, "SYSLOG_IDENTIFIER": "impostor", "GPUWATCHD_EVENT": "container_restarted",
         "__REALTIME_TIMESTAMP": at(4)},
        {**base, "GPUWATCHD_EVENT": "probe_failed", "__REALTIME_TIMESTAMP": at(5)},
        {**base, "GPUWATCHD_EVENT": "remediation_gave_up", "CONTAINER_NAME": "Other",
         "__REALTIME_TIMESTAMP": at(6)},
    ]
    assert history_from_journal(entries) == {
        NAME: (HistoryEntry(STARTED + 1, "restarted", "persistence_off", "certain"),
               HistoryEntry(STARTED + 2, "recovered", "persistence_off", "ok")),
        "Other": (HistoryEntry(STARTED + 6, "gave_up", "persistence_off"),),
    }
