"""Property tests: whatever the file holds, the loader answers with a Config or one line.

Random text, random TOML documents built around the real keys, and random valid
configurations (which must survive the effective-config round trip).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from datetime import date, datetime, time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gpuwatchd import config as config_module
from gpuwatchd.cli import main
from gpuwatchd.config import (
    MAX_DURATION,
    MIN_DURATION,
    Config,
    ConfigError,
    ContainerOverride,
    format_duration,
    load_config_text,
    parse_duration,
    render_effective,
)
from gpuwatchd.patterns import LogPattern

# --------------------------------------------------------------------------
# A tiny TOML writer for the test's documents (inline tables for nesting).


def toml_string(text: str) -> str:
    out = []
    for c in text:
        if c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(type(value))


def toml_document(document: dict[str, Any]) -> str:
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in document.items())


# --------------------------------------------------------------------------
# Strategies

SECTION_KEYS = {name: list(spec) for name, (_cls, spec) in config_module._SECTIONS.items()}
OVERRIDE_KEYS = list(config_module._OVERRIDE_KEYS)
ALL_KEYS = sorted({k for keys in SECTION_KEYS.values() for k in keys} | set(OVERRIDE_KEYS))

near_values = st.sampled_from(
    [
        "",
        "0",
        "30s",
        "-5s",
        "500ms",
        "1h30m",
        "8761h",
        "re:(",
        "re:ok",
        "(ER-05)",
        "KonomiTV",
        "127.0.0.1:9400",
        "[::1]:9400",
        "https://x.example/",
        "unix:///var/run/docker.sock",
        "/var/lib/gpuwatchd",
        "relative",
        "gpuwatchd.watch=true",
        "=x",
        "\u2028",
        "\x85",
        "a\nb",
        "nvidia-smi",
    ]
)
scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | near_values
    | st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1))
    | st.dates()
    | st.times()
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
keys = st.sampled_from(ALL_KEYS) | st.text(min_size=1, max_size=10)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly the real sections and keys, with random values and the odd stranger."""
    document: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from([*SECTION_KEYS, "containers"]), max_size=5)):
        if name == "containers":
            document[name] = draw(
                st.dictionaries(
                    st.sampled_from(["KonomiTV", "mirakurun", "bad name", ""])
                    | st.text(max_size=8),
                    st.dictionaries(st.sampled_from(OVERRIDE_KEYS) | keys, values, max_size=3)
                    | values,
                    max_size=2,
                )
            )
        else:
            document[name] = draw(
                st.dictionaries(st.sampled_from(SECTION_KEYS[name]) | keys, values, max_size=4)
                | values
            )
    if draw(st.booleans()):
        document[draw(keys)] = draw(values)
    return document


def assert_config_or_one_line(text: str) -> None:
    try:
        config = load_config_text(text, Path("/etc/gpuwatchd/config.toml"))
    except ConfigError as e:
        message = str(e)
        assert len(message.splitlines()) == 1, message
        assert message.startswith("/etc/gpuwatchd/config.toml: ")
    else:
        assert isinstance(config, Config)
        # Whatever loads must also render and load back the same.
        again = load_config_text(render_effective(config), config.source)
        assert again == config


@given(st.text(max_size=400))
@example('[probe]\ntimeout = "-5s"')
@example("\ufeff[probe]")
def test_random_text(text: str) -> None:
    """Arbitrary text: a Config or a one-line ConfigError, never anything else."""
    assert_config_or_one_line(text)


@given(documents())
@settings(max_examples=300)
def test_random_documents(document: dict[str, Any]) -> None:
    """TOML documents around the real keys: a Config or a one-line ConfigError."""
    assert_config_or_one_line(toml_document(document))


@given(document=documents())
@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_documents_through_check_config(
    document: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config exits 0 with TOML on stdout, or 2 with one line on stderr."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(toml_document(document), encoding="utf-8")
        path.chmod(0o600)
        status = main(["check-config", "--config", str(path)])
    captured = capsys.readouterr()
    assert status in (0, 2)
    if status == 2:
        assert captured.out == ""
        assert len(captured.err.splitlines()) == 1
        assert captured.err.startswith(f"gpuwatchd: {path}: ")
    else:
        assert load_config_text(captured.out) == dataclasses.replace(
            load_config_text(toml_document(document)), source=None
        )


# --------------------------------------------------------------------------
# Durations


@given(st.text(max_size=20) | st.integers() | st.floats() | st.booleans() | st.none())
@example("1h30m")
@example("-0.0s")
def test_parse_duration_total(value: Any) -> None:
    """A positive, bounded float or a one-line ValueError, never anything else."""
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        assert len(str(e).splitlines()) == 1
    else:
        assert isinstance(seconds, float)
        assert 0 < seconds <= MAX_DURATION


positive_seconds = st.floats(
    min_value=MIN_DURATION, max_value=MAX_DURATION, allow_nan=False
) | st.integers(min_value=1, max_value=int(MAX_DURATION)).map(float)


@given(positive_seconds)
def test_format_duration_round_trips(seconds: float) -> None:
    """Every valid duration has a spelling that parses back exactly."""
    assert parse_duration(format_duration(seconds)) == seconds


# --------------------------------------------------------------------------
# Valid configurations round-trip through the effective rendering

names = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{1,20}", fullmatch=True)
safe_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\0"), min_size=1, max_size=20
)
patterns = st.lists(
    safe_text.filter(lambda s: s != "re:").map(LogPattern)
    | st.sampled_from(["re:ER-0[0-9]", "re:^x$", r"re:\(ER-05\)"]).map(LogPattern),
    min_size=1,
    max_size=3,
).map(tuple)
commands = st.lists(safe_text, min_size=1, max_size=3).filter(lambda c: c[0].strip()).map(tuple)
paths = st.from_regex(r"/[a-z0-9_/.-]{0,20}", fullmatch=True).map(Path)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    c = config_module
    d = positive_seconds
    overrides = draw(
        st.dictionaries(
            names,
            st.builds(
                ContainerOverride,
                patterns=st.none() | patterns,
                confirm_with_probe=st.none() | st.booleans(),
                probe_command=st.none() | commands,
                probe_interval=st.none() | d,
                restart_timeout=st.none() | d,
            ),
            max_size=3,
        )
    )
    return Config(
        daemon=c.DaemonConfig(draw(paths), draw(paths), draw(st.booleans())),
        docker=c.DockerConfig(
            draw(st.sampled_from(["", "unix:///x.sock", "tcp://h:2375"])), draw(d)
        ),
        gpu=c.GpuConfig(draw(d), draw(st.booleans())),
        probe=c.ProbeConfig(draw(d), draw(d), draw(d), draw(commands)),
        logs=c.LogsConfig(draw(patterns), draw(st.booleans())),
        remediation=c.RemediationConfig(
            draw(d), draw(d), draw(d), draw(st.integers(1, 1000)), draw(d)
        ),
        watch=c.WatchConfig(
            tuple(draw(st.lists(names, max_size=3))),
            tuple(
                draw(st.lists(st.sampled_from(["a", "a=b", "gpuwatchd.watch=true"]), max_size=3))
            ),
            draw(st.booleans()),
        ),
        notify=c.NotifyConfig(
            draw(st.just(()) | commands),
            draw(st.sampled_from(["", "http://x", "https://hooks.example.org:8443/a?b=c"])),
            urls=tuple(draw(st.lists(
                st.sampled_from(["ntfy://ntfy.sh/gpu", "json://127.0.0.1:8/",
                                 "discord://1/t0k3n", "mailto://u:p@example.org"]),
                max_size=3, unique=True,
            ))),
            timeout=draw(d),
        ),
        metrics=c.MetricsConfig(
            draw(st.sampled_from(["", "127.0.0.1:9400", "[::1]:1", "h:65535"]))
        ),
        containers=MappingProxyType(overrides),
    )


@given(configs(), st.booleans())
@settings(max_examples=200)
def test_effective_config_round_trips(config: Config, ascii_only: bool) -> None:
    """render_effective's output loads back to the very same configuration."""
    rendered = render_effective(config, ascii_only=ascii_only)
    if ascii_only:
        assert rendered.isascii()
    assert load_config_text(rendered) == config
