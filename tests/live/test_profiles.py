"""Profiles and notify-only mode against the real daemon, the real engine and the bench.

Each case is one container speaking one app (``WORKLOAD_APP``) with that app's
profile and a 60 s probe interval, so only the app's own line can bring the
fault to light in time. One daemon watches every case of a fault model at
once. Line-to-restart times are printed (``-s`` shows them), never asserted.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container

from gpuwatchd.patterns import LogPattern
from gpuwatchd.profiles import PROFILES
from tests.bench import Bench, wait_for
from tests.bench.gpu import GpuController
from tests.live.conftest import healthy, started_at
from tests.live.daemon_process import DaemonProcess

pytestmark = [pytest.mark.docker, pytest.mark.slow]

#: (case, WORKLOAD_APP, profile); "image:REF" profiles are chosen from that image reference.
CASES = (
    ("konomitv-er05", "konomitv", "konomitv"),
    ("konomitv-er06", "konomitv-er06", "konomitv"),
    ("konomitv-e09hn", "konomitv-e09hn", "konomitv"),
    ("jellyfin", "jellyfin", "image:lscr.io/linuxserver/jellyfin:10.10.7"),
    ("frigate", "frigate", "image:ghcr.io/blakeblackshear/frigate:0.14.1"),
    ("immich-ml", "immich-ml", "immich-ml"),
    ("ollama", "ollama", "ollama"),
    ("pytorch", "pytorch", "pytorch"),
)
#: The longest start grace of the profiles above: no confirmation probe comes sooner.
GRACE = max(p.start_grace for p in PROFILES.values())


@pytest.fixture
def image_refs(docker_client: docker.DockerClient, bench: Bench) -> Iterator[dict[str, str]]:
    """The bench image tagged as the real apps' images, so Docker reports those references."""
    image = docker_client.images.get(bench.images["konomi"].tag)
    refs: dict[str, str] = {}
    for _case, _app, profile in CASES:
        if profile.startswith("image:"):
            ref = profile.removeprefix("image:")
            repo, _, tag = ref.rpartition(":")
            image.tag(repo, tag)
            refs[ref] = ref
    yield refs
    for ref in refs:
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(ref, noprune=True)


def profile_of(spec: str) -> str:
    if spec.startswith("image:"):
        from gpuwatchd.profiles import profile_for_image

        found = profile_for_image(spec.removeprefix("image:"))
        assert found is not None
        return found
    return spec


def start_cases(
    make_container: Callable[..., Container], watched: dict[str, str], *, mode: str = "normal",
    suffix: str = "",
) -> dict[str, Container]:
    out = {}
    for case, app, profile in CASES:
        image = profile.removeprefix("image:") if profile.startswith("image:") else "konomi"
        out[case] = make_container(
            image, name=case + suffix, mode=mode, labels=watched,
            environment={"WORKLOAD_APP": app, "WORKLOAD_INTERVAL": "0.5"},
        )
    return out


def overrides(containers: dict[str, Container], **extra: object) -> dict[str, dict[str, object]]:
    """A [containers.NAME] table per case: the profile unless the image picks it."""
    sections: dict[str, dict[str, object]] = {}
    specs = {case: profile for case, _app, profile in CASES}
    for case, c in containers.items():
        table: dict[str, object] = {"probe_interval": "60s", **extra}
        if not specs[case.removesuffix("-ok")].startswith("image:"):
            table["profile"] = specs[case.removesuffix("-ok")]
        sections[f"containers.{c.name}"] = table
    return sections


def first_fault_line(c: Container, profile: str, after: float) -> float:
    """When the container first logged one of its profile's lines after ``after`` (epoch s)."""
    patterns = [LogPattern(p) for p in PROFILES[profile].patterns]
    raw: bytes = c.logs(timestamps=True, since=int(after))
    for line in raw.decode("utf-8", errors="replace").splitlines():
        stamp, _, text = line.partition(" ")
        at = parse_stamp(stamp)
        if at >= after and any(p.matches(text) for p in patterns):
            return at
    raise AssertionError(f"no {profile} line in {c.name} after {after}")


def parse_stamp(stamp: str) -> float:
    # Docker: 2025-12-31T09:14:02.123456789Z; Python 3.10 takes at most microseconds.
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()


def wait_past_grace(containers: dict[str, Container]) -> None:
    """No confirmation probe comes within a profile's start grace: begin the fault after it."""
    latest = max(parse_stamp(started_at(c)) for c in containers.values())
    time.sleep(max(0.0, latest + GRACE + 0.5 - time.time()))


def case_profile(case: str) -> str:
    return profile_of(next(p for k, _a, p in CASES if k == case))


def check_healed(daemon: DaemonProcess, c: Container, case: str, cause: str,
                 before: str, fault_at: float) -> float:
    """The case's container was restarted once, after its app's line; returns line -> restart."""
    profile = case_profile(case)
    restarted = daemon.wait_for("container_restarted", container=c.name, timeout=60)
    daemon.wait_for("container_recovered", container=c.name, timeout=60)
    assert restarted["cause"] == cause, case
    mine = [r for r in daemon.records if r.get("container") == c.name]
    matched = [r for r in mine if r.get("event") == "log_pattern_matched"]
    assert matched and matched[0]["pattern"] in PROFILES[profile].patterns, (case, mine)
    failed = [r for r in mine if r.get("event") == "probe_failed"]
    assert failed[0]["purpose"] == "confirm", (case, mine)  # the line asked for it
    assert started_at(c) != before
    return parse_stamp(started_at(c)) - first_fault_line(c, profile, fault_at)


def print_timings(model: str, timings: list[tuple[str, float]]) -> None:
    print(f"\n{model}: app line -> container restarted (60 s probe interval)")
    for case, seconds in timings:
        print(f"  {case:16} profile {case_profile(case):10} {seconds:6.2f} s")


def test_each_profile_heals_once_on_its_apps_line_persistence_off_idle(
    gpu: GpuController,
    make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess],
    watched: dict[str, str],
    image_refs: dict[str, str],
) -> None:
    """Persistence off and the driver idle, one case at a time (idling breaks every
    container started before it); the next case's container starts right after
    each idle, so its start grace runs while the current one heals."""
    prefix = make_container.prefix  # type: ignore[attr-defined]
    names = {case: f"{prefix}-{case}" for case, _app, _profile in CASES}
    specs = {case: profile for case, _app, profile in CASES}
    sections: dict[str, dict[str, object]] = {"gpu": {"poll_interval": "10m"}}
    for case, name in names.items():
        table: dict[str, object] = {"probe_interval": "60s"}
        if not specs[case].startswith("image:"):
            table["profile"] = specs[case]
        sections[f"containers.{name}"] = table
    daemon = start_daemon(sections)
    daemon.wait_for("daemon_started", timeout=30)

    def start(index: int) -> Container:
        case, app, spec = CASES[index]
        image = spec.removeprefix("image:") if spec.startswith("image:") else "konomi"
        return make_container(image, name=case, labels=watched,
                              environment={"WORKLOAD_APP": app, "WORKLOAD_INTERVAL": "0.5"})

    timings = []
    c = start(0)
    for index, (case, _app, _spec) in enumerate(CASES):
        assert c.name == names[case]
        daemon.wait_for("watch_set_changed", container=c.name, timeout=30)
        healthy(c)
        wait_past_grace({case: c})
        before = started_at(c)
        fault_at = time.time()
        gpu.set_persistence(False)
        assert gpu.idle_driver()
        upcoming = start(index + 1) if index + 1 < len(CASES) else None
        timings.append((case, check_healed(daemon, c, case, "persistence_off", before, fault_at)))
        time.sleep(1)
        assert len(daemon.find("container_restarted", container=c.name)) == 1, case
        c.remove(force=True)
        if upcoming is not None:
            c = upcoming
    print_timings("persistence off, driver idle", timings)


def test_each_profile_heals_once_on_its_apps_line_device_access_revoked(
    gpu: GpuController,
    make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess],
    watched: dict[str, str],
    image_refs: dict[str, str],
) -> None:
    """Device access revoked in every case's container at once (each its own fault);
    beside them the same lines from containers whose NVML works restart nothing."""
    broken = start_cases(make_container, watched)
    working = start_cases(make_container, watched, mode="tuner_fault", suffix="-ok")
    everyone = {**broken, **{f"{k}-ok": v for k, v in working.items()}}
    for c in broken.values():
        healthy(c)
    daemon = start_daemon({"gpu": {"poll_interval": "10m"}, **overrides(everyone)})
    for c in everyone.values():
        daemon.wait_for("watch_set_changed", container=c.name, timeout=30)
    daemon.wait_for("gpu_persistence_enabled", timeout=30)  # the start's own drift check
    wait_past_grace(everyone)
    before = {case: started_at(c) for case, c in broken.items()}

    fault_at = time.time()
    for c in broken.values():
        gpu.revoke_device_access(c)
    timings = [
        (case, check_healed(daemon, c, case, "device_access_lost", before[case], fault_at))
        for case, c in broken.items()
    ]
    time.sleep(1)
    for case, c in broken.items():
        assert len(daemon.find("container_restarted", container=c.name)) == 1, case
    for case, c in working.items():
        daemon.wait_for("log_match_not_gpu", container=c.name, timeout=30)
        assert daemon.find("container_restarted", container=c.name) == [], case
        assert daemon.find("probe_failed", container=c.name) == [], case
    print_timings("device access revoked", timings)


def test_notify_only_records_and_notifies_and_never_restarts(
    tmp_path: Path,
    gpu: GpuController,
    make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess],
    watched: dict[str, str],
) -> None:
    c = make_container("konomi", name="job", labels=watched,
                       environment={"WORKLOAD_APP": "pytorch", "WORKLOAD_INTERVAL": "0.5"})
    healthy(c)
    sink = tmp_path / "notifications.jsonl"
    daemon = start_daemon({
        "gpu": {"poll_interval": "10m"},
        "notify": {"command": ["/bin/sh", "-c", f"cat >> {sink}; echo >> {sink}"]},
        f"containers.{c.name}": {"profile": "pytorch", "action": "notify",
                                 "probe_interval": "60s"},
    })
    daemon.wait_for("watch_set_changed", container=c.name, timeout=30)
    wait_past_grace({"job": c})
    first_start = started_at(c)

    gpu.revoke_device_access(c)
    skipped = daemon.wait_for("remediation_skipped", container=c.name, timeout=30)
    assert skipped["reason"] == "notify_only"
    assert skipped["cause"] == "device_access_lost"
    assert f"docker restart {c.name}" in skipped["advice"]

    def notified() -> list[dict[str, object]] | None:
        if not sink.exists():
            return None
        docs = [json.loads(line) for line in sink.read_text().splitlines() if line.strip()]
        return [d for d in docs if d.get("event") == "remediation_skipped"] or None

    (note,) = wait_for(notified, 30, message="the notification command ran")
    assert note["reason"] == "notify_only" and note["container"] == c.name
    # The line keeps coming and the next confirmation probe fails again: still
    # one record for this cause in the window, and never a restart.
    daemon.wait_for("probe_failed", container=c.name, count=2, timeout=40)
    time.sleep(1)
    assert len(daemon.find("remediation_skipped", container=c.name)) == 1
    assert daemon.find("container_restarted") == []
    assert started_at(c) == first_start
    rc, _ = c.exec_run(["nvidia-smi", "-L"])
    assert rc != 0  # still broken: left for its owner to restart
