"""``all_gpu_containers`` on Podman: containers given GPUs by CDI or by hand are found.

Podman's compat inspect lists no devices for a container created through the
Docker API, and a CDI container's library mounts do not show; the daemon
still finds both, and the device-access evidence still works for them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest
from docker.models.containers import Container

from tests.bench.engines import Engine, cdi_device, run_cdi_container
from tests.bench.gpu import GpuController
from tests.live.conftest import healthy
from tests.live.daemon_process import DaemonProcess

pytestmark = [
    pytest.mark.docker, pytest.mark.slow,
    # The private Podman only: on the shared Docker engine the daemon would
    # select every GPU container of the machine.
    pytest.mark.parametrize("engine", ["podman"], indirect=True),
]


def test_all_gpu_containers_finds_cdi_and_compat_gpu_containers_not_plain_ones(
    engine: Engine, gpu: GpuController, make_container: Callable[..., Container],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    """A CDI container and a compat-API GPU container are watched; a plain one is not;
    a revoked CDI container is restarted with cause device_access_lost."""
    gpu.set_persistence(True)
    plain = make_container("nosmi", gpu=False)
    compat = make_container("konomi")
    name = f"gwd-cdi-{secrets.token_hex(4)}"
    with cdi_device(gpu) as device:
        cid = run_cdi_container(engine, engine.images["konomi"].tag, name, device, {})
        try:
            cdi = engine.client.containers.get(cid)
            healthy(cdi)
            daemon = start_daemon({"watch": {"containers": [], "labels": [],
                                             "all_gpu_containers": True},
                                   "probe": {"start_grace": "1s"}})
            daemon.wait_for("watch_set_changed", container=name, timeout=20)
            daemon.wait_for("watch_set_changed", container=compat.name, timeout=20)
            assert not daemon.find("watch_set_changed", container=plain.name)

            gpu.revoke_device_access(cdi)
            restarted = daemon.wait_for("container_restarted", container=name, timeout=30)
            assert restarted["cause"] == "device_access_lost"
            daemon.wait_for("container_recovered", container=name, timeout=60)
        finally:
            engine.podman("rm", "-f", "-t", "0", cid)
