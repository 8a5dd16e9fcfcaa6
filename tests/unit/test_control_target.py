"""Which container a `gpuwatchd pause NAME` / `resume NAME` names: a watched or a
configured one, or the request is refused (a misspelt name must not pass silently)."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from gpuwatchd.config import Config, ContainerOverride, WatchConfig
from gpuwatchd.core.watchset import UnknownTarget, control_target

ID = "3f2a9c1b7d4e" + "0" * 52
OTHER_ID = "9d8c7b6a5f4e" + "1" * 52
WATCHED = {ID: "KonomiTV", OTHER_ID: "labelled"}
CONFIG = Config(
    watch=WatchConfig(containers=("KonomiTV", "stopped-one", "0123456789ab"),
                      labels=("gpuwatchd.watch=true",)),
    containers=MappingProxyType({"Mirakurun": ContainerOverride(probe_interval=300.0)}),
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (None, None),  # every container
        ("", None),
        ("KonomiTV", "KonomiTV"),  # watched and configured
        ("labelled", "labelled"),  # watched through a label only
        ("stopped-one", "stopped-one"),  # configured, not watched now (stopped, or no Docker)
        ("Mirakurun", "Mirakurun"),  # configured through [containers.NAME] only
        ("0123456789ab", "0123456789ab"),  # a configured ID
        (ID[:12], "KonomiTV"),  # a watched container's ID: pauses are kept by name
        (ID, "KonomiTV"),
        (OTHER_ID[:16].upper(), "labelled"),
    ],
)
def test_watched_or_configured_names_are_taken(name: str | None, expected: str | None) -> None:
    assert control_target(name, WATCHED, CONFIG) == expected


@pytest.mark.parametrize(
    "name",
    ["Konomitv", "konomitv", "KonomiTV ", "/KonomiTV", "nobody", "*", ID[:11],
     "gpuwatchd.watch=true", "gpuwatchd.watch"],
)
def test_other_names_are_refused_with_one_line(name: str) -> None:
    with pytest.raises(UnknownTarget) as refused:
        control_target(name, WATCHED, CONFIG)
    assert str(refused.value) == f"no watched or configured container named {name!r}"


def test_a_name_with_a_pause_in_force_may_be_resumed() -> None:
    """A pause kept for a container that has since left the config can still be lifted."""
    assert control_target("Gone", WATCHED, CONFIG, paused=("Gone",)) == "Gone"
    with pytest.raises(UnknownTarget):
        control_target("Gone", WATCHED, CONFIG)


def test_the_refusal_stays_one_short_line() -> None:
    for name in ("a\nb\u2028c", "x" * 10_000):
        with pytest.raises(UnknownTarget) as refused:
            control_target(name, WATCHED, CONFIG)
        text = str(refused.value)
        assert len(text.splitlines()) == 1
        assert len(text) < 200
