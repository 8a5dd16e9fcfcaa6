"""The bench workload speaks each profiled app: its real lines when NVML fails, none before."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from docker.models.containers import Container

from gpuwatchd.patterns import LogPattern
from gpuwatchd.profiles import PROFILES
from tests.bench import ONAIR_LINE, ContainerFactory, GpuController, log_lines, wait_for

pytestmark = pytest.mark.docker

#: WORKLOAD_APP -> the profile whose patterns must match its lines.
APPS = {
    "konomitv": "konomitv",
    "konomitv-er06": "konomitv",
    "konomitv-e09hn": "konomitv",
    "jellyfin": "jellyfin",
    "emby": "emby",
    "frigate": "frigate",
    "immich-ml": "immich-ml",
    "ollama": "ollama",
    "pytorch": "pytorch",
    "tdarr": "tdarr",
    "generic": "generic",
}


def matched(lines: list[str], profile: str) -> list[str]:
    patterns = [LogPattern(p) for p in PROFILES[profile].patterns]
    return [line for line in lines if any(p.matches(line) for p in patterns)]


def matcher(profile: str) -> Callable[[str], bool]:
    patterns = [LogPattern(p) for p in PROFILES[profile].patterns]

    def matches(line: str) -> bool:
        return any(p.matches(line) for p in patterns)

    return matches


def wait_for_line(c: Container, predicate: Callable[[str], bool], what: str) -> None:
    def found() -> bool:
        return any(predicate(line) for line in log_lines(c))

    wait_for(found, 30, message=f"{what} in {c.name}")


def test_each_app_prints_its_lines_when_nvml_fails(
    make_container: ContainerFactory, gpu: GpuController
) -> None:
    """One container per app, all broken at once by the field report's fault."""
    containers = {
        app: make_container("konomi", name=app,
                            environment={"WORKLOAD_APP": app, "WORKLOAD_INTERVAL": "0.3"})
        for app in [*APPS, "plex"]
    }
    for app, c in containers.items():
        wait_for_line(c, lambda line: line == ONAIR_LINE, f"{app} healthy")
        assert matched(log_lines(c), APPS.get(app, "generic")) == [], app
    assert gpu.idle_driver()
    for app, profile in APPS.items():
        wait_for_line(containers[app], matcher(profile), f"{app}'s fault line")
    # Plex logs nothing a profile matches: its profile has no patterns, only the probe.
    plex = containers["plex"]
    wait_for_line(plex, lambda line: "Plex Transcoder" in line, "plex's failure line")
    assert PROFILES["plex"].patterns == ()
    for profile in PROFILES:
        if profile != "generic":
            assert matched(log_lines(plex), profile) == [], profile


def test_tuner_fault_mode_prints_the_apps_line_while_nvml_works(
    make_container: ContainerFactory,
) -> None:
    c = make_container("konomi", mode="tuner_fault",
                       environment={"WORKLOAD_APP": "ollama", "WORKLOAD_INTERVAL": "0.3"})
    wait_for_line(c, lambda line: bool(matched([line], "ollama")), "ollama's line")
    rc, _ = c.exec_run(["nvidia-smi", "-L"])
    assert rc == 0
