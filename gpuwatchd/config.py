"""Configuration: the TOML file parsed into frozen dataclasses.

Every default lives here, in the dataclass fields; ``config.example.toml``
documents the same values. Loading validates everything at once so the daemon
never discovers a bad value at 3 a.m.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import ipaddress
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from gpuwatchd.compat import tomllib
from gpuwatchd.patterns import REGEX_PREFIX, LogPattern, PatternError
from gpuwatchd.profiles import PROFILES, UnknownProfile, get_profile, profile_for_image

DEFAULT_CONFIG_PATH = Path("/etc/gpuwatchd/config.toml")


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path = Path("/var/lib/gpuwatchd")
    runtime_dir: Path = Path("/run/gpuwatchd")  #: holds the control socket
    dry_run: bool = False


@dataclass(frozen=True)
class DockerConfig:
    host: str = ""  #: empty: DOCKER_HOST or the default socket
    timeout: float = 30.0  #: seconds, per API call


@dataclass(frozen=True)
class GpuConfig:
    poll_interval: float = 30.0
    enforce_persistence: bool = True


@dataclass(frozen=True)
class ProbeConfig:
    interval: float = 60.0
    timeout: float = 10.0
    start_grace: float = 5.0
    command: tuple[str, ...] = ("nvidia-smi", "-L")


@dataclass(frozen=True)
class LogsConfig:
    patterns: tuple[LogPattern, ...] = (LogPattern("(ER-05)"),)
    confirm_with_probe: bool = True


@dataclass(frozen=True)
class RemediationConfig:
    restart_timeout: float = 30.0  #: stop grace period given to Docker
    verify_timeout: float = 60.0
    cooldown: float = 120.0
    max_restarts: int = 3
    window: float = 3600.0
    action: str = "restart"  #: "restart", or "notify": record and notify, never restart


@dataclass(frozen=True)
class WatchConfig:
    containers: tuple[str, ...] = ()  #: names or IDs
    labels: tuple[str, ...] = ("gpuwatchd.watch=true",)
    all_gpu_containers: bool = False


@dataclass(frozen=True)
class NotifyConfig:
    command: tuple[str, ...] = ()  #: empty: no command
    webhook: str = ""  #: empty: no webhook
    urls: tuple[str, ...] = ()  #: Apprise URLs (ntfy://, discord://, …); empty: none
    timeout: float = 10.0


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""  #: "127.0.0.1:PORT"; empty: metrics off


@dataclass(frozen=True)
class ContainerOverride:
    """Per-container settings from ``[containers.NAME]``; None means "inherit"."""

    patterns: tuple[LogPattern, ...] | None = None
    confirm_with_probe: bool | None = None
    probe_command: tuple[str, ...] | None = None
    probe_interval: float | None = None
    restart_timeout: float | None = None
    profile: str | None = None
    action: str | None = None
    start_grace: float | None = None


#: Where a container's profile came from (:attr:`ContainerSettings.profile_source`).
PROFILE_CONFIGURED = "configured"
PROFILE_FROM_IMAGE = "image"

#: Each profile's patterns, compiled once.
_PROFILE_PATTERNS = MappingProxyType(
    {name: tuple(LogPattern(p) for p in prof.patterns) for name, prof in PROFILES.items()}
)


@dataclass(frozen=True)
class ContainerSettings:
    """The effective settings for one container.

    Each value comes from the first of: the container's own key in
    ``[containers.NAME]``, its profile (configured, else chosen from the image),
    the global section.
    """

    patterns: tuple[LogPattern, ...]
    confirm_with_probe: bool
    probe_command: tuple[str, ...]
    probe_interval: float
    restart_timeout: float
    start_grace: float = 5.0
    action: str = "restart"
    profile: str | None = None  #: None: no profile, the global patterns and probe
    profile_source: str | None = None  #: PROFILE_CONFIGURED or PROFILE_FROM_IMAGE


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    remediation: RemediationConfig = field(default_factory=RemediationConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    containers: Mapping[str, ContainerOverride] = field(
        default_factory=lambda: MappingProxyType({})
    )
    source: Path | None = None  #: the file this was loaded from, if any

    def for_container(self, name: str, image: str = "") -> ContainerSettings:
        """Merge ``[containers.<name>]``, then its profile, over the global settings.

        ``image``: the container's image reference, which picks a profile when
        none is configured (see :func:`gpuwatchd.profiles.profile_for_image`).
        """
        o = self.containers.get(name, ContainerOverride())
        profile_name, source = o.profile, PROFILE_CONFIGURED if o.profile else None
        if profile_name is None and image:
            profile_name = profile_for_image(image)
            source = PROFILE_FROM_IMAGE if profile_name else None
        prof = PROFILES[profile_name] if profile_name else None
        patterns = self.logs.patterns if prof is None else _PROFILE_PATTERNS[prof.name]
        probe_command = self.probe.command if prof is None else prof.probe_command
        start_grace = self.probe.start_grace if prof is None else prof.start_grace
        return ContainerSettings(
            patterns=patterns if o.patterns is None else o.patterns,
            confirm_with_probe=(
                self.logs.confirm_with_probe
                if o.confirm_with_probe is None
                else o.confirm_with_probe
            ),
            probe_command=probe_command if o.probe_command is None else o.probe_command,
            probe_interval=self.probe.interval if o.probe_interval is None else o.probe_interval,
            restart_timeout=(
                self.remediation.restart_timeout if o.restart_timeout is None else o.restart_timeout
            ),
            start_grace=start_grace if o.start_grace is None else o.start_grace,
            action=self.remediation.action if o.action is None else o.action,
            profile=profile_name,
            profile_source=source,
        )


# --------------------------------------------------------------------------
# Errors


#: Characters that ``str.splitlines`` treats as line breaks: an error message
#: that must stay on one line escapes every one of them.
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_ONE_LINE = str.maketrans(
    {c: f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" for c in _LINE_BREAKS}
)


def _escape_line_breaks(text: str) -> str:
    """``text`` with every line break escaped, so it prints as exactly one line."""
    return text.translate(_ONE_LINE)


class ConfigError(Exception):
    """The configuration cannot be used.

    ``str()`` is always one line: ``FILE: KEY: PROBLEM``, leaving out the file or
    the key when there is none, ready to print for an operator as is.
    """

    def __init__(
        self, problem: str, *, source: Path | str | None = None, key: str | None = None
    ) -> None:
        super().__init__(problem)
        self.problem = problem
        self.source = source
        self.key = key

    def __str__(self) -> str:
        parts = [str(self.source)] if self.source is not None else []
        if self.key:
            parts.append(self.key)
        parts.append(self.problem)
        return _escape_line_breaks(": ".join(parts))


class _Invalid(Exception):
    """A problem at a key; :func:`load_config_text` adds the file name."""

    def __init__(self, key: _Key, problem: str) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem


_Key = tuple[str | int, ...]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


def _toml_key(key: str) -> str:
    """``key`` as TOML writes it: bare when it can be, quoted otherwise."""
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _dotted(key: _Key) -> str:
    """``("containers", "KonomiTV", "patterns", 1)`` → ``containers.KonomiTV.patterns[1]``."""
    out = ""
    for part in key:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _toml_key(part)
    return out


# --------------------------------------------------------------------------
# Values


_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),  # before int: bool is an int subclass
    (int, "integer"),
    (float, "float"),
    (str, "string"),
    (list, "array"),
    (dict, "table"),
    (datetime, "datetime"),  # before date: datetime is a date subclass
    (date, "date"),
    (time, "time"),
)


def _type_name(value: object) -> str:
    for cls, name in _TYPE_NAMES:
        if isinstance(value, cls):
            return name
    return type(value).__name__


def _show(value: object) -> str:
    """A short, one-line rendering of a TOML value for an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        shown = _escape_line_breaks(json.dumps(value[:80], ensure_ascii=False))
        return shown + ("…" if len(value) > 80 else "")
    name = _type_name(value)
    return ("an " if name[0] in "aeiou" else "a ") + name


#: The longest accepted duration: anything longer is a typo, and huge values
#: overflow timer arithmetic further down.
MAX_DURATION = 365 * 86400.0
#: The shortest duration any key takes: below it a timer becomes a busy loop.
MIN_DURATION = 0.01
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*(ms|s|m|h)"
_DURATION = re.compile(rf"(?:{_DURATION_PART}\s*)+", re.ASCII)
_DURATION_HINT = 'such as "500ms", "30s", "5m", "1h" or a number of seconds'


def parse_duration(value: str | float) -> float:
    """Seconds from ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"1h30m"`` or a number.

    A number means seconds. The result is at least :data:`MIN_DURATION` (a
    shorter one would make a busy loop) and at most :data:`MAX_DURATION`.

    Raises:
        ValueError: for zero, a negative value, one below 10 ms, a boolean, a non-finite number,
            a string without a unit, or anything else; the message is one line
            ending in the offending value.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be a positive duration {_DURATION_HINT}, got {_show(value)}")
    if isinstance(value, str):
        text = value.strip()
        unsigned = text[1:].lstrip() if text[:1] in "+-" else text
        if not _DURATION.fullmatch(unsigned):
            raise ValueError(f"must be a positive duration {_DURATION_HINT}, got {_show(value)}")
        seconds = sum(
            float(number) * _DURATION_UNITS[unit]
            for number, unit in re.findall(_DURATION_PART, unsigned, re.ASCII)
        )
        if text.startswith("-"):
            seconds = -seconds
    else:
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
    if math.isnan(seconds) or seconds <= 0:
        raise ValueError(f"must be a positive duration, got {_show(value)}")
    if seconds < MIN_DURATION:
        raise ValueError(f"must be at least 10ms, got {_show(value)}")
    if seconds > MAX_DURATION:
        raise ValueError(f"must be at most 365 days, got {_show(value)}")
    return seconds


def format_duration(seconds: float) -> str | float:
    """The shortest exact spelling of ``seconds`` that :func:`parse_duration` reads back.

    ``"60s"``, ``"90s"``, ``"2m"``, ``"1h"``, ``"500ms"`` when a unit fits exactly
    (seconds up to a minute, else the largest unit), else the float itself.
    """
    seconds = float(seconds)  # an int from a hand-built Config has no is_integer() in 3.11
    if 1 <= seconds <= 60 and seconds.is_integer():
        return f"{int(seconds)}s"
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001)):
        count = seconds / size
        if count >= 1 and count.is_integer() and count < 1e15:
            text = f"{int(count)}{unit}"
            if parse_duration(text) == seconds:
                return text
    return seconds


# --------------------------------------------------------------------------
# Converters: one per kind of value, each raising _Invalid at the key.

_Converter = Callable[[object, _Key], Any]


def _expect(value: object, key: _Key, cls: type, what: str) -> None:
    if not isinstance(value, cls) or (cls is int and isinstance(value, bool)):
        raise _Invalid(key, f"must be {what}, got {_show(value)}")


def _no_nul(value: str, key: _Key) -> str:
    if "\0" in value:
        raise _Invalid(key, "must not contain NUL characters")
    return value


def _duration(value: object, key: _Key) -> float:
    try:
        return parse_duration(value)  # type: ignore[arg-type]  # checked inside
    except ValueError as e:
        raise _Invalid(key, str(e)) from None


def _bool(value: object, key: _Key) -> bool:
    _expect(value, key, bool, "true or false")
    return bool(value)


def _abs_path(value: object, key: _Key) -> Path:
    _expect(value, key, str, "an absolute path (a string)")
    assert isinstance(value, str)
    if not value.startswith("/"):
        raise _Invalid(key, f"must be an absolute path, got {_show(value)}")
    return Path(_no_nul(value, key))


MAX_RESTARTS_LIMIT = 1000


def _max_restarts(value: object, key: _Key) -> int:
    _expect(value, key, int, "an integer")
    assert isinstance(value, int)
    if value < 1:
        raise _Invalid(key, f"must be at least 1, got {value}")
    if value > MAX_RESTARTS_LIMIT:
        raise _Invalid(key, f"must be at most {MAX_RESTARTS_LIMIT}, got {value}")
    return value


def _strings(value: object, key: _Key, what: str) -> list[str]:
    _expect(value, key, list, f"an array of {what}")
    assert isinstance(value, list)
    for i, item in enumerate(value):
        _expect(item, (*key, i), str, "a string")
        _no_nul(item, (*key, i))
    return value


def _command(*, allow_empty: bool) -> _Converter:
    def convert(value: object, key: _Key) -> tuple[str, ...]:
        argv = _strings(value, key, "strings (a command and its arguments)")
        if not argv:
            if allow_empty:
                return ()
            raise _Invalid(key, 'must not be empty: give a command such as ["nvidia-smi", "-L"]')
        if not argv[0].strip():
            raise _Invalid((*key, 0), "the command name must not be empty")
        return tuple(argv)

    return convert


def _patterns(value: object, key: _Key) -> tuple[LogPattern, ...]:
    sources = _strings(value, key, "patterns (strings)")
    if not sources:
        raise _Invalid(key, "must not be empty: remove the key to use the default")
    patterns = []
    for i, source in enumerate(sources):
        if source in ("", REGEX_PREFIX):
            raise _Invalid((*key, i), "a pattern must not be empty: it would match every line")
        try:
            patterns.append(LogPattern(source))
        except PatternError as e:
            what = "invalid regular expression" if source.startswith(REGEX_PREFIX) else "pattern"
            raise _Invalid((*key, i), f"{what} {_show(source)}: {e}") from None
    return tuple(patterns)


def _profile(value: object, key: _Key) -> str:
    _expect(value, key, str, "a profile name (a string)")
    assert isinstance(value, str)
    try:
        return get_profile(value).name
    except UnknownProfile as e:
        raise _Invalid(key, str(e)) from None


ACTIONS = ("restart", "notify")


def _action(value: object, key: _Key) -> str:
    _expect(value, key, str, 'a string, "restart" or "notify"')
    assert isinstance(value, str)
    if value not in ACTIONS:
        raise _Invalid(key, f'must be "restart" or "notify", got {_show(value)}')
    return value


#: Docker's own rule for container names; IDs (hex) match it too.
_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", re.ASCII)
_NAME_HINT = "must be a container name or ID (letters, digits, '_', '.', '-')"


def _container_name(name: str, key: _Key) -> str:
    if not _CONTAINER_NAME.fullmatch(name):
        raise _Invalid(key, f"{_NAME_HINT}, got {_show(name)}")
    return name


def _containers_list(value: object, key: _Key) -> tuple[str, ...]:
    names = _strings(value, key, "container names or IDs")
    return tuple(_container_name(name, (*key, i)) for i, name in enumerate(names))


def _labels(value: object, key: _Key) -> tuple[str, ...]:
    labels = _strings(value, key, 'labels ("KEY" or "KEY=VALUE")')
    for i, label in enumerate(labels):
        if not label.partition("=")[0].strip():
            raise _Invalid((*key, i), f'must be "KEY" or "KEY=VALUE", got {_show(label)}')
    return tuple(labels)


_DOCKER_SCHEMES = ("unix", "tcp", "ssh", "http", "https", "npipe")


def _docker_host(value: object, key: _Key) -> str:
    _expect(value, key, str, "a string")
    assert isinstance(value, str)
    scheme, sep, rest = value.partition("://")
    if value and not (sep and scheme in _DOCKER_SCHEMES and rest):
        raise _Invalid(
            key,
            'must be empty or a Docker host URL such as "unix:///var/run/docker.sock" '
            f'or "tcp://127.0.0.1:2375", got {_show(value)}',
        )
    return _no_nul(value, key)


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", re.ASCII)


def _listen(value: object, key: _Key) -> str:
    _expect(value, key, str, 'a string "HOST:PORT"')
    assert isinstance(value, str)
    if not value:
        return value
    host, sep, port = value.rpartition(":")
    ok = bool(sep) and port.isascii() and port.isdigit() and 0 < int(port) < 65536
    if ok and host.startswith("[") and host.endswith("]"):
        try:
            ok = ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            ok = False
    elif ok:
        ok = bool(_HOSTNAME.fullmatch(host))
    if not ok:
        raise _Invalid(
            key, f'must be "HOST:PORT" such as "127.0.0.1:9400" (empty: off), got {_show(value)}'
        )
    return value


def _webhook(value: object, key: _Key) -> str:
    _expect(value, key, str, "a string (an http:// or https:// URL)")
    assert isinstance(value, str)
    if not value:
        return value
    try:
        url = urlsplit(value)
        ok = url.scheme in ("http", "https") and bool(url.hostname)
        url.port  # noqa: B018  # raises ValueError for a bad port
    except ValueError:
        ok = False
    if not ok or any(c.isspace() for c in value):
        # Only the scheme is shown: the rest of a webhook URL often holds a token.
        scheme = url_scheme(value)
        if scheme in ("http", "https"):
            got = f"{scheme}:// without a valid host and port, or with a space"
        else:
            got = f"a {scheme}:// URL" if scheme != "?" else "no URL"
        raise _Invalid(key, f"must be an http:// or https:// URL (empty: off), got {got}")
    return value


#: Most Apprise URLs one config may list (each is its own delivery).
MAX_NOTIFY_URLS = 16
#: Longest accepted Apprise URL.
MAX_URL_LENGTH = 2048
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,31})://", re.ASCII)
_APPRISE_HINT = 'an Apprise URL such as "ntfy://ntfy.sh/TOPIC" or "discord://ID/TOKEN"'


def url_scheme(url: str) -> str:
    """``"ntfys"`` for ``"ntfys://…"``; ``"?"`` when ``url`` has no scheme. The only
    part of an Apprise URL ever shown: the rest may hold a token or a password."""
    match = _URL_SCHEME.match(url)
    return match.group(1).lower() if match else "?"


def _apprise_urls(value: object, key: _Key) -> tuple[str, ...]:
    # Apprise itself is never imported here (the daemon stays small); the child
    # process that delivers rejects what it cannot parse, as notify_failed.
    urls = _strings(value, key, "Apprise URLs (strings)")
    if len(urls) > MAX_NOTIFY_URLS:
        raise _Invalid(key, f"at most {MAX_NOTIFY_URLS} URLs, got {len(urls)}")
    for i, url in enumerate(urls):
        match = _URL_SCHEME.match(url)
        if match is None or len(url) == match.end():
            # Nothing of the value is echoed: it may be a token pasted on its own.
            raise _Invalid((*key, i), f"must be {_APPRISE_HINT}")
        shown = f"a {match.group(1).lower()}:// URL"
        if len(url) > MAX_URL_LENGTH:
            raise _Invalid((*key, i), f"{shown} longer than {MAX_URL_LENGTH} characters")
        if any(c.isspace() or not c.isprintable() for c in url):
            raise _Invalid((*key, i), f"{shown} with a space or control character in it")
        if url in urls[:i]:
            raise _Invalid((*key, i), f"{shown} listed twice")
    return tuple(urls)


#: What to run when ``urls`` is set and Apprise is not installed.
APPRISE_INSTALL_HINT = (
    "pip install 'gpuwatchd[apprise]' into gpuwatchd's environment "
    "(/opt/gpuwatchd/bin/pip install apprise), or run packaging/install.sh again "
    "without --without-apprise"
)


def check_notify_available(config: Config) -> None:
    """Refuse ``[notify] urls`` when Apprise is not installed.

    Looks for the package without importing it (the daemon never imports Apprise;
    its delivery child processes do).

    Raises:
        ConfigError: ``urls`` is set and no ``apprise`` package can be found.
    """
    import importlib.util

    if config.notify.urls and importlib.util.find_spec("apprise") is None:
        raise ConfigError(
            f"Apprise is not installed: {APPRISE_INSTALL_HINT}",
            source=config.source, key="notify.urls",
        )


# --------------------------------------------------------------------------
# The schema: section → (dataclass, key → converter). The keys are the
# dataclass field names (a test pins that down).

_SECTIONS: dict[str, tuple[type[Any], dict[str, _Converter]]] = {
    "daemon": (
        DaemonConfig,
        {"state_dir": _abs_path, "runtime_dir": _abs_path, "dry_run": _bool},
    ),
    "docker": (DockerConfig, {"host": _docker_host, "timeout": _duration}),
    "gpu": (GpuConfig, {"poll_interval": _duration, "enforce_persistence": _bool}),
    "probe": (
        ProbeConfig,
        {
            "interval": _duration,
            "timeout": _duration,
            "start_grace": _duration,
            "command": _command(allow_empty=False),
        },
    ),
    "logs": (LogsConfig, {"patterns": _patterns, "confirm_with_probe": _bool}),
    "remediation": (
        RemediationConfig,
        {
            "restart_timeout": _duration,
            "verify_timeout": _duration,
            "cooldown": _duration,
            "max_restarts": _max_restarts,
            "window": _duration,
            "action": _action,
        },
    ),
    "watch": (
        WatchConfig,
        {"containers": _containers_list, "labels": _labels, "all_gpu_containers": _bool},
    ),
    "notify": (
        NotifyConfig,
        {
            "command": _command(allow_empty=True),
            "webhook": _webhook,
            "urls": _apprise_urls,
            "timeout": _duration,
        },
    ),
    "metrics": (MetricsConfig, {"listen": _listen}),
}
_OVERRIDE_KEYS: dict[str, _Converter] = {
    "patterns": _patterns,
    "confirm_with_probe": _bool,
    "probe_command": _command(allow_empty=False),
    "probe_interval": _duration,
    "restart_timeout": _duration,
    "profile": _profile,
    "action": _action,
    "start_grace": _duration,
}
_TOP_LEVEL = (*_SECTIONS, "containers")


def _unknown(key: _Key, known: Iterable[str], what: str) -> _Invalid:
    name = str(key[-1])
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f'did you mean "{close[0]}"?' if close else "known: " + ", ".join(known)
    return _Invalid(key, f"unknown {what} ({hint})")


def _table(value: object, key: _Key) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _Invalid(key, f"must be a table ([{_dotted(key)}]), got {_type_name(value)}")
    return value


def _parse_table(value: object, key: _Key, spec: Mapping[str, _Converter]) -> dict[str, Any]:
    table = _table(value, key)
    parsed: dict[str, Any] = {}
    for name, item in table.items():
        if name not in spec:
            raise _unknown((*key, name), spec, "key")
        parsed[name] = spec[name](item, (*key, name))
    return parsed


def _parse_document(document: dict[str, object], source: Path | None) -> Config:
    sections: dict[str, Any] = {}
    containers: dict[str, ContainerOverride] = {}
    for name, value in document.items():
        if name == "containers":
            for cname, override in _table(value, (name,)).items():
                ckey = (name, cname)
                _container_name(cname, ckey)
                containers[cname] = ContainerOverride(
                    **_parse_table(override, ckey, _OVERRIDE_KEYS)
                )
        elif name in _SECTIONS:
            cls, spec = _SECTIONS[name]
            sections[name] = cls(**_parse_table(value, (name,), spec))
        else:
            raise _unknown((name,), _TOP_LEVEL, "section")
    return Config(**sections, containers=MappingProxyType(containers), source=source)


# --------------------------------------------------------------------------
# Loading

#: A config file is a few kilobytes; refusing big ones keeps a mistake (a log
#: file, a device node) from eating the daemon's memory.
MAX_CONFIG_BYTES = 1024 * 1024


_TOO_DEEP = "invalid TOML: nested too deeply for a gpuwatchd config"


def load_config_text(text: str, source: Path | None = None) -> Config:
    """Parse and validate a whole TOML document; ``source`` only names it in errors.

    Raises:
        ConfigError: for a TOML syntax error, an unknown section or key, a value of
            the wrong type, or a value out of range; the first problem found.
    """
    label = source if source is not None else "<config>"
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}", source=label) from None
    except RecursionError:
        raise ConfigError(_TOO_DEEP, source=label) from None
    try:
        return _parse_document(document, source)
    except _Invalid as e:
        raise ConfigError(e.problem, source=label, key=_dotted(e.key)) from None
    except RecursionError:
        raise ConfigError(_TOO_DEEP, source=label) from None


def _check_owner(path: Path, st: os.stat_result) -> None:
    if st.st_uid != 0:
        raise ConfigError(
            f"refusing config: owned by uid {st.st_uid}, not root; run chown root:root", source=path
        )
    if st.st_mode & 0o022:
        raise ConfigError(
            "refusing config: writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod 600",
            source=path,
        )


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def check_ownership(path: Path) -> None:
    """Refuse ``path`` unless root owns it and neither group nor others may write it.

    The daemon runs as root and restarts containers on what the file says, so a
    file someone else can edit would hand them that power.

    Raises:
        ConfigError: when the file cannot be examined or fails the check.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"cannot read config: {e.strerror or e}", source=path) from None
    _check_owner(path, st)


def load_config(path: Path, *, check_owner: bool = False) -> Config:
    """Read, parse and validate the config file at ``path``.

    With ``check_owner`` (the daemon's setting) a file not owned by root, or
    writable by group or others, is refused (see :func:`check_ownership`); the
    check is made on the opened file, so a swap between check and read cannot
    slip past it.

    Raises:
        ConfigError: when the file cannot be read, is not a regular file, is
            larger than :data:`MAX_CONFIG_BYTES`, is not UTF-8, fails the owner
            check, or holds an invalid configuration (see :func:`load_config_text`).
    """
    try:
        # O_NONBLOCK: a FIFO given as the config must not hang the daemon at open().
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if check_owner and e.errno == errno.EACCES:
            # Root without CAP_DAC_OVERRIDE (the shipped unit) cannot open a 0600
            # file someone else owns: name the owner problem, not just EACCES.
            with contextlib.suppress(OSError):
                _check_owner(path, os.stat(path))
        raise ConfigError(f"cannot read config: {e.strerror or e}", source=path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("cannot read config: not a regular file", source=path)
        if check_owner:
            _check_owner(path, st)
        data = _read_at_most(fd, MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read config: {e.strerror or e}", source=path) from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"cannot read config: larger than {MAX_CONFIG_BYTES} bytes", source=path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not valid UTF-8 (byte {e.start})", source=path) from None
    return load_config_text(text, path)


# --------------------------------------------------------------------------
# The effective configuration, back as TOML


def _plain(value: object, converter: _Converter) -> Any:
    """A config value as a TOML-ready value (the inverse of its converter)."""
    if converter is _duration:
        return format_duration(value)  # type: ignore[arg-type]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [p.source if isinstance(p, LogPattern) else p for p in value]
    return value


def config_to_dict(config: Config) -> dict[str, Any]:
    """The configuration as plain TOML values, every default filled in.

    Durations are spelled as :func:`format_duration` does; ``containers`` holds
    only the overrides that are set (unset ones inherit the global value).
    """
    out: dict[str, Any] = {}
    for name, (_cls, spec) in _SECTIONS.items():
        section = getattr(config, name)
        out[name] = {key: _plain(getattr(section, key), conv) for key, conv in spec.items()}
    out["containers"] = {
        cname: {
            key: _plain(getattr(override, key), conv)
            for key, conv in _OVERRIDE_KEYS.items()
            if getattr(override, key) is not None
        }
        for cname, override in config.containers.items()
    }
    return out


_TOML_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_string(value: str, *, ascii_only: bool = False) -> str:
    out = []
    for c in value:
        if c in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F or c in _LINE_BREAKS or (ascii_only and ord(c) > 0x7E):
            out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _toml_value(value: object, *, ascii_only: bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value, ascii_only=ascii_only)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v, ascii_only=ascii_only) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def render_effective(config: Config, *, ascii_only: bool = False) -> str:
    """The effective configuration as a TOML document that loads back to ``config``.

    ``ascii_only`` escapes every non-ASCII character (for a terminal that cannot
    print them); the document means the same either way.
    """
    data = config_to_dict(config)
    lines = ["# gpuwatchd effective configuration: every default filled in."]
    if config.source is not None:
        lines.append(f"# source: {_toml_string(str(config.source), ascii_only=True)}")
    for name, table in data.items():
        if name == "containers":
            continue
        lines += ["", f"[{name}]"]
        lines += [f"{k} = {_toml_value(v, ascii_only=ascii_only)}" for k, v in table.items()]
    for cname, table in data["containers"].items():
        lines += ["", f"[containers.{_toml_key(cname)}]"]
        lines += [f"{k} = {_toml_value(v, ascii_only=ascii_only)}" for k, v in table.items()]
    names = list(dict.fromkeys([*config.containers, *config.watch.containers]))
    if names:
        lines += ["", "# Effective settings of each named container (comments only):"]
        for cname in names:
            for line in describe_settings(cname, config.for_container(cname)):
                # A comment may hold no control character at all (TOML).
                text = "".join(
                    f"\\x{ord(c):02x}" if ord(c) < 0x20 or ord(c) == 0x7F else c
                    for c in _escape_line_breaks(line)
                )
                if ascii_only:
                    text = text.encode("ascii", "backslashreplace").decode("ascii")
                lines.append("#   " + text)
    return "\n".join(lines) + "\n"


def describe_settings(name: str, settings: ContainerSettings) -> list[str]:
    """Two or three lines for people: a container's profile, patterns, probe and action."""
    if settings.profile is None:
        profile = "none (an image of a known app picks one when the container is seen)"
    elif settings.profile_source == PROFILE_FROM_IMAGE:
        profile = f"{settings.profile} (chosen from the image)"
    else:
        profile = f"{settings.profile} (configured)"
    patterns = ", ".join(json.dumps(p.source, ensure_ascii=False) for p in settings.patterns)
    return [
        f"{name}: profile {profile}; action {settings.action}",
        f"  patterns: {patterns or 'none (probes only)'}",
        f"  probe: {json.dumps(list(settings.probe_command))} every "
        f"{format_duration(settings.probe_interval)}, start grace "
        f"{format_duration(settings.start_grace)}",
    ]
