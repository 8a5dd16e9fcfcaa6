"""The core with action = "notify", and with settings that come from a profile."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from gpuwatchd.config import ContainerOverride, RemediationConfig
from gpuwatchd.core.views import DaemonView
from gpuwatchd.model.events import (
    Action,
    ContainerState,
    ContainerWatched,
    LogMatched,
    NvmlFailure,
    NvmlUnavailable,
    ProbePurpose,
    ResetRequested,
    RestartContainer,
    RunProbe,
    SetPersistence,
    SystemdReloaded,
)
from gpuwatchd.model.vocabulary import ProbeResult

from .core_harness import GPU0, GPU0_OFF, KONOMI, OTHER, T0, Harness, make_config, of, records

NOTIFY = {KONOMI.name: ContainerOverride(action="notify")}


def skips(actions: Sequence[Action]) -> list[dict[str, object]]:
    return [dict(r.fields) for r in records(actions) if r.event == "remediation_skipped"]


@pytest.mark.parametrize(
    ("setup", "device_access_ok", "cause"),
    [
        ("persistence_off", None, "persistence_off"),
        ("reload", False, "device_access_lost"),
        ("none", None, "unknown"),
    ],
)
def test_notify_records_advises_and_never_restarts(
    setup: str, device_access_ok: bool | None, cause: str
) -> None:
    h = Harness(config=make_config(overrides=NOTIFY))
    h.gpus(GPU0_OFF if setup == "persistence_off" else GPU0)
    h.watch(started_at=T0 - 7200)
    if setup == "reload":
        h.send(SystemdReloaded(h.now))
        h.answer(ProbeResult.OK)
    h.later(60)
    out = h.fault(device_access_ok=device_access_ok)
    (skip,) = skips(out)
    assert skip["reason"] == "notify_only"
    assert skip["cause"] == cause
    assert "docker restart KonomiTV" in str(skip["advice"])
    assert not of(h.log, RestartContainer)
    assert h.core.snapshot(h.now).containers[0].remediation is None


def test_notify_says_it_once_per_window_per_cause() -> None:
    h = Harness(config=make_config(overrides=NOTIFY, window=3600))
    h.gpus(GPU0)
    h.watch(started_at=T0 - 7200)
    first = skips(h.fault())
    assert len(first) == 1
    for _ in range(20):  # the same fault, again and again within the window
        h.later(60)
        assert skips(h.fault()) == []
    # Another cause is news: told at once.
    h.send(SystemdReloaded(h.now))
    h.answer(ProbeResult.OK)
    h.later(60)
    (other,) = skips(h.fault(device_access_ok=False))
    assert other["cause"] == "device_access_lost"
    # A window later the first cause is told again.
    h.later(3600)
    assert [s["cause"] for s in skips(h.fault(device_access_ok=True))] == ["unknown"]
    assert not of(h.log, RestartContainer)


def test_operator_reset_rearms_the_notification() -> None:
    h = Harness(config=make_config(overrides=NOTIFY))
    h.gpus(GPU0)
    h.watch(started_at=T0 - 7200)
    assert len(skips(h.fault())) == 1
    h.later(60)
    assert skips(h.fault()) == []
    h.send(ResetRequested(KONOMI.name))
    h.later(60)
    assert len(skips(h.fault())) == 1


def test_notify_still_sets_persistence_with_enforce_persistence() -> None:
    h = Harness(config=make_config(overrides=NOTIFY))
    h.gpus(GPU0_OFF)  # drift: persistence is set at once...
    h.finish_set(ok=False)  # ...and fails, so the GPU is still seen off
    h.watch(started_at=T0 - 7200)
    before = len(of(h.log, SetPersistence))
    out = h.fault()
    assert of(out, SetPersistence) == [SetPersistence((0,))]
    assert len(of(h.log, SetPersistence)) == before + 1
    assert skips(out)[0]["cause"] == "persistence_off"
    assert not of(h.log, RestartContainer)


def test_notify_without_enforce_persistence_changes_nothing() -> None:
    h = Harness(config=make_config(overrides=NOTIFY, enforce_persistence=False))
    h.gpus(GPU0_OFF)
    h.watch(started_at=T0 - 7200)
    h.fault()
    assert not of(h.log, SetPersistence)
    assert not of(h.log, RestartContainer)


def test_global_notify_and_a_container_that_restarts() -> None:
    config = make_config(overrides={OTHER.name: ContainerOverride(action="restart")})
    config = dataclasses.replace(
        config, remediation=RemediationConfig(action="notify")
    )
    h = Harness(config=config)
    h.gpus(GPU0)
    h.watch(KONOMI, started_at=T0 - 7200)
    h.watch(OTHER, started_at=T0 - 7200)
    assert skips(h.fault(KONOMI))[0]["reason"] == "notify_only"
    out = h.fault(OTHER)
    assert of(out, RestartContainer)
    view = {c.name: c for c in h.core.snapshot(h.now).containers}
    assert view[KONOMI.name].action == "notify"
    assert view[OTHER.name].action == "restart"


def test_a_host_cause_is_advised_as_before_in_notify_mode() -> None:
    h = Harness(config=make_config(overrides=NOTIFY))
    h.gpus(GPU0)
    h.watch(started_at=T0 - 7200)
    h.send(NvmlUnavailable(NvmlFailure.VERSION_MISMATCH))
    (skip,) = skips(h.fault())
    assert skip["reason"] == "host_cause"


def test_notify_in_dry_run_is_recorded_as_dry_run() -> None:
    h = Harness(config=make_config(overrides=NOTIFY), dry_run=True)
    h.gpus(GPU0)
    h.watch(started_at=T0 - 7200)
    (skip,) = skips(h.fault())
    assert skip["dry_run"] is True


# -- settings from a profile -----------------------------------------------------------------


def watch_image(h: Harness, image: str, started_at: float) -> None:
    h.send(ContainerWatched(KONOMI, ContainerState.RUNNING, started_at, {}, image))


def test_the_image_picks_the_probe_and_start_grace() -> None:
    h = Harness(config=make_config(start_grace=1.0))
    h.gpus(GPU0)
    watch_image(h, "ghcr.io/blakeblackshear/frigate:0.14.1", started_at=h.now)
    # frigate's start grace (10 s), not the global 1 s: a line at 3 s waits.
    h.later(3)
    out = h.send(LogMatched(KONOMI, "cuInit(0) failed", "cu->cuInit(0) failed"))
    assert not of(out, RunProbe)
    out = h.later(8)
    (probe,) = of(out, RunProbe)
    assert isinstance(probe, RunProbe)
    assert probe.purpose is ProbePurpose.CONFIRM
    assert probe.command == ("nvidia-smi", "-L")
    view = h.core.snapshot(h.now).containers[0]
    assert view.profile == "frigate"
    assert "cuInit(0) failed" in view.patterns


def test_no_known_image_keeps_the_global_settings() -> None:
    h = Harness(config=make_config(start_grace=1.0))
    h.gpus(GPU0)
    watch_image(h, "gpuwatchd-bench/konomi:1234", started_at=h.now)
    h.later(2)
    out = h.send(LogMatched(KONOMI, "(ER-05)", "… (ER-05)"))
    assert of(out, RunProbe)
    view = h.core.snapshot(h.now).containers[0]
    assert view.profile is None and view.patterns == ("(ER-05)",)


# -- status and metrics show the mode and the profile ----------------------------------------


def _view() -> DaemonView:
    from gpuwatchd.core.views import ContainerView, CoreView

    view = CoreView(
        dry_run=False,
        gpus=(),
        containers=(
            ContainerView("jobs", "0" * 64, ContainerState.RUNNING, False, ProbeResult.OK,
                          T0, 0, None, None, False, None, None, None,
                          profile="pytorch", action="notify",
                          patterns=("CUDA unknown error", "No CUDA GPUs are available")),
            ContainerView("tv", "1" * 64, ContainerState.RUNNING, False, ProbeResult.OK,
                          T0, 0, None, None, False, None, None, None,
                          profile=None, action="restart", patterns=("(ER-05)",)),
        ),
        nvml_unavailable=None, docker_unavailable=None, paused_all=False, paused_all_until=None,
    )
    return DaemonView(uptime=1.0, dry_run=False, docker_available=True, nvml_available=True,
                      core=view)


def _doc() -> dict[str, object]:
    from gpuwatchd import __version__

    v = _view()
    return {"version": __version__, "pid": 1, "uptime": v.uptime, "dry_run": v.dry_run,
            "docker_available": v.docker_available, "nvml_available": v.nvml_available,
            "core": v.core.to_json()}


def test_status_shows_profile_patterns_and_notify_mode() -> None:
    from gpuwatchd.status_view import render_status

    text = render_status(_doc(), T0)
    assert "notify only: never restarted" in text
    assert ('  jobs: profile pytorch, action notify; patterns: "CUDA unknown error", '
            '"No CUDA GPUs are available"') in text
    assert '  tv: profile -, action restart; patterns: "(ER-05)"' in text


def test_metrics_show_the_action_and_profile() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from gpuwatchd.sinks.metrics import Metrics

    m = Metrics(_view)
    m.refresh()
    found = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(generate_latest(m.registry).decode())
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float | None:
        return found.get((name, frozenset(labels.items())))

    assert value("gpuwatchd_container_action", container="jobs", action="notify") == 1
    assert value("gpuwatchd_container_action", container="jobs", action="restart") == 0
    assert value("gpuwatchd_container_action", container="tv", action="restart") == 1
    assert value("gpuwatchd_container_profile_info", container="jobs", profile="pytorch") == 1
    assert value("gpuwatchd_container_profile_info", container="tv", profile="none") == 1
