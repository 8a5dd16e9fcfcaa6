"""Which containers gpuwatchd watches: the ``[watch]`` rules, as pure functions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gpuwatchd.config import Config, WatchConfig
from gpuwatchd.model.container import ContainerInfo


class UnknownTarget(LookupError):
    """A pause or resume names no container gpuwatchd watches or is configured
    for (the message is one line for people; the control channel answers it)."""


#: A configured ID must be at least this long to match (Docker's short ID).
MIN_ID_PREFIX = 12
#: How much of a refused name its error message repeats.
_SHOWN = 64


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


def control_target(
    name: str | None,
    watched: Mapping[str, str],
    config: Config,
    paused: Iterable[str] = (),
) -> str | None:
    """The container a ``pause``/``resume`` request for ``name`` applies to.

    None (or an empty name) means every container and gives None. Otherwise
    the result is the name pauses are kept under: ``name`` itself when it is
    a watched container's name (``watched`` maps ID to name), the name of the
    one watched container whose ID starts with ``name`` (at least
    :data:`MIN_ID_PREFIX` characters), or ``name`` when the configuration
    names it (``[watch] containers`` or a ``[containers.NAME]`` table: a
    stopped container, or one Docker does not show now, can be paused ahead)
    or when it is in ``paused`` (a pause in force can always be lifted).

    Raises:
        UnknownTarget: ``no watched or configured container named 'NAME'``
            for any other name (one line; a long name is cut short).
    """
    if not name:
        return None
    if name in watched.values():
        return name
    if len(name) >= MIN_ID_PREFIX:
        prefix = name.lower()
        owners = {n for cid, n in watched.items() if cid.startswith(prefix)}
        if len(owners) == 1:
            return owners.pop()
    if name in config.watch.containers or name in config.containers or name in set(paused):
        return name
    shown = name if len(name) <= _SHOWN else name[:_SHOWN] + "…"
    raise UnknownTarget(f"no watched or configured container named {shown!r}")
