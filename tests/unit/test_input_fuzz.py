"""Fuzz runs over the two ways input reaches the root daemon: the config file and
the control channel. Some thousands of cases each; every one must end in a value,
or in a one-line refusal, never in anything else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuwatchd.config import Config, ConfigError, load_config_text
from gpuwatchd.observers.control import MAX_PAUSE, ControlError, parse_request, pause_duration
from tests.unit.test_config_properties import documents, toml_document

EXAMPLE = (Path(__file__).parents[2] / "config.example.toml").read_text(encoding="utf-8")
SOURCE = Path("/etc/gpuwatchd/config.toml")
FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def config_or_one_line(text: str) -> Config | str:
    try:
        return load_config_text(text, SOURCE)
    except ConfigError as e:
        message = str(e)
        assert len(message.splitlines()) == 1, message
        assert message.startswith(f"{SOURCE}: "), message
        return message


@st.composite
def mutated_example(draw: st.DrawFn) -> str:
    """The shipped example config, uncommented, with a few random edits: the
    careless operator's config."""
    text = "\n".join(
        line[2:] if line.startswith("# ") and "=" in line else line
        for line in EXAMPLE.splitlines()
    )
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        piece = draw(
            st.text(max_size=6)
            | st.sampled_from(['"', "[", "]", "=", ".", "\n", "re:(a+)+$", "0", "1e-320",
                               "nan", "{", "}", '"re:."', "[[containers]]", "a." * 60])
        )
        if edit == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
        elif edit == "insert":
            text = text[:at] + piece + text[at:]
        elif edit == "replace":
            text = text[:at] + piece + text[at + len(piece):]
        else:
            end = min(len(text), at + draw(st.integers(1, 200)))
            text = text[:end] + text[at:]
    return text


@FUZZ
@given(mutated_example())
def test_fuzz_mutated_example_config(text: str) -> None:
    """Random edits of config.example.toml: a Config or one line naming the file."""
    config_or_one_line(text)


@FUZZ
@given(documents())
def test_fuzz_config_documents(document: dict[str, Any]) -> None:
    """TOML documents around the real keys, random values: a Config or one line."""
    config_or_one_line(toml_document(document))


# --------------------------------------------------------------------------
# The control channel

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from(["status", "pause", "resume", "reset", "KonomiTV", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=12,
)


@st.composite
def request_lines(draw: st.DrawFn) -> bytes:
    """What a hostile local user could send: requests around the real keys, raw
    bytes, NaN and Infinity spellings, deep nesting, truncation."""
    kind = draw(st.sampled_from(["request", "bytes", "constant", "deep", "truncated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        depth = draw(st.integers(1, 3000))
        opener = draw(st.sampled_from(["[", '{"a":']))
        closer = "]" if opener == "[" else "}"
        return (opener * depth + "1" + closer * depth).encode()
    request: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(["command", "container", "for", "x"]), max_size=4)):
        request[key] = draw(json_values)
    line = json.dumps(request).encode()
    if kind == "constant":
        return line[:-1] + b', "for": ' + draw(st.sampled_from(
            [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-0", b"true"])) + b"}"
    if kind == "truncated":
        return line[: draw(st.integers(0, len(line)))]
    return line


@FUZZ
@given(request_lines())
def test_fuzz_control_requests(line: bytes) -> None:
    """Every request line is a JSON object, or a one-line ``bad request: …``; the
    ``for`` of a taken request is a sane number of seconds, or a one-line refusal."""
    try:
        request = parse_request(line + b"\n")
    except ValueError as e:
        assert str(e).startswith("bad request: "), e
        assert len(str(e).splitlines()) == 1, e
        return
    assert isinstance(request, dict)
    try:
        seconds = pause_duration(request.get("for"))
    except ControlError as e:
        assert len(str(e).splitlines()) == 1, e
    else:
        assert seconds is None or 0 < seconds <= MAX_PAUSE
