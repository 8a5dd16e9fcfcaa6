"""The private Docker engine: stopped and started without touching the shared one."""

from __future__ import annotations

import docker
import docker.errors
import pytest

from tests.bench import ONAIR_LINE, ContainerFactory, PrivateEngine, wait_for_log

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_private_engine_stops_and_starts_keeping_containers(
    private_engine: PrivateEngine,
    make_container: ContainerFactory,
    docker_client: docker.DockerClient,
) -> None:
    """A container on the private engine survives an engine stop/start and can run again."""
    client = private_engine.client()
    container = make_container(client=client, environment={"WORKLOAD_INTERVAL": "0.3"})
    wait_for_log(container, ONAIR_LINE, timeout=30)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(container.id)  # the shared engine never sees it

    private_engine.stop()
    assert private_engine.pid is None
    assert not private_engine.answers()

    private_engine.start()
    again = private_engine.client().containers.get(container.id)
    assert again.status == "exited"
    again.start()
    wait_for_log(again, ONAIR_LINE, timeout=30)
    again.reload()
    assert again.status == "running"
    assert private_engine.socket_url.startswith("unix:///tmp/gwd-eng-")
