"""Which containers gpuwatchd watches: the ``[watch]`` rules, as a pure function."""

from __future__ import annotations

from gpuwatchd.config import WatchConfig
from gpuwatchd.docker_io import ContainerInfo

#: A configured ID must be at least this long to match (Docker's short ID).
MIN_ID_PREFIX = 12


def _matches_ref(info: ContainerInfo, ref: str) -> bool:
    if ref.lstrip("/") == info.name:
        return True
    # An ID names one container instance: a recreated container has a new ID.
    return len(ref) >= MIN_ID_PREFIX and info.id.startswith(ref.lower())


def _matches_label(info: ContainerInfo, selector: str) -> bool:
    key, sep, value = selector.partition("=")
    if key not in info.labels:
        return False
    return not sep or info.labels[key] == value


def is_watched(info: ContainerInfo, watch: WatchConfig) -> bool:
    """True when a name/ID, a label selector (``key`` or ``key=value``) or the
    GPU heuristic of ``all_gpu_containers`` selects the container."""
    return (
        any(_matches_ref(info, ref) for ref in watch.containers)
        or any(_matches_label(info, sel) for sel in watch.labels)
        or (watch.all_gpu_containers and info.uses_gpu)
    )
