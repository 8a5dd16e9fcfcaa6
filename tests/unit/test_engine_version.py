"""Which engine answers: Docker or Podman, from its /version answer; shown by status."""

from __future__ import annotations

from gpuwatchd.core.docker_inspect import EngineVersion, engine_version
from gpuwatchd.status_view import render_status

#: Trimmed ``GET /version`` answers, as each engine gives them.
DOCKER = {"Version": "20.10.24+dfsg1", "ApiVersion": "1.41",
          "Components": [{"Name": "Engine", "Version": "20.10.24+dfsg1"},
                         {"Name": "containerd", "Version": "1.6.20"}]}
PODMAN = {"Version": "4.3.1", "ApiVersion": "1.41",
          "Components": [{"Name": "Podman Engine", "Version": "4.3.1",
                          "Details": {"APIVersion": "4.3.1"}},
                         {"Name": "Conmon", "Version": "conmon version 2.1.6"}]}


def test_docker_is_named_with_its_version() -> None:
    assert engine_version(DOCKER) == EngineVersion("Docker", "20.10.24+dfsg1")


def test_podman_is_named_by_its_component_not_the_api_level() -> None:
    doc = {**PODMAN, "Version": "4.0.0"}  # the Docker-level field may say anything
    assert engine_version(doc) == EngineVersion("Podman", "4.3.1")
    assert str(engine_version(doc)) == "Podman 4.3.1"


def test_a_bare_answer_is_docker_of_unknown_version() -> None:
    assert engine_version({}) == EngineVersion("Docker", "unknown")


def test_status_names_the_engine_it_talks_to() -> None:
    doc = {"version": "9.9", "pid": 1, "uptime": 5.0, "docker_available": True,
           "engine": {"name": "Podman", "version": "4.3.1", "host": "unix:///run/podman/podman.sock"},
           "core": {}}
    assert "engine: Podman 4.3.1 at unix:///run/podman/podman.sock" in render_status(doc, 10.0)
    assert "engine:" not in render_status({**doc, "engine": None}, 10.0)
