"""Loading and validating the TOML configuration: defaults, every error class, rendering."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from gpuwatchd import config as config_module
from gpuwatchd.compat import tomllib
from gpuwatchd.config import (
    MAX_CONFIG_BYTES,
    MAX_DURATION,
    Config,
    ConfigError,
    ContainerOverride,
    DaemonConfig,
    DockerConfig,
    GpuConfig,
    LogsConfig,
    MetricsConfig,
    NotifyConfig,
    ProbeConfig,
    RemediationConfig,
    WatchConfig,
    check_ownership,
    config_to_dict,
    format_duration,
    load_config,
    load_config_text,
    parse_duration,
    render_effective,
)
from gpuwatchd.patterns import LogPattern

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


def without_source(config: Config) -> Config:
    return dataclasses.replace(config, source=None)


# --------------------------------------------------------------------------
# Defaults and the example


def test_empty_document_gives_the_defaults() -> None:
    """An empty file means every default, and watches only labelled containers."""
    config = load_config_text("")
    assert config == Config()
    assert config.watch.containers == ()
    assert config.watch.labels == ("gpuwatchd.watch=true",)
    assert config.watch.all_gpu_containers is False


def test_empty_sections_give_the_defaults() -> None:
    """A section header with no keys changes nothing."""
    text = "\n".join(f"[{name}]" for name in config_module._SECTIONS)
    assert load_config_text(text) == Config()


def test_schema_keys_are_the_dataclass_fields() -> None:
    """Every dataclass field can be set from TOML, and nothing else can."""
    for name, (cls, spec) in config_module._SECTIONS.items():
        assert set(spec) == {f.name for f in dataclasses.fields(cls)}, name
        assert isinstance(getattr(Config(), name), cls)
    assert set(config_module._OVERRIDE_KEYS) == {
        f.name for f in dataclasses.fields(ContainerOverride)
    }
    sections = {f.name for f in dataclasses.fields(Config)} - {"containers", "source"}
    assert sections == set(config_module._SECTIONS)


def test_example_loads() -> None:
    """config.example.toml loads and watches KonomiTV by name plus labelled containers."""
    config = load_config(EXAMPLE)
    assert config.source == EXAMPLE
    assert config.watch.containers == ("KonomiTV",)
    assert config.watch.labels == ("gpuwatchd.watch=true",)
    assert config.watch.all_gpu_containers is False
    konomitv = config.for_container("KonomiTV")
    assert LogPattern("(ER-05)") in konomitv.patterns
    assert konomitv.confirm_with_probe is True
    assert config.daemon.dry_run is False


def _documented(text: str) -> dict[tuple[str, str], tuple[str, bool]]:
    """(section, key) → (value text, commented out) for every ``key = value`` line."""
    found: dict[tuple[str, str], tuple[str, bool]] = {}
    section = ""
    for line in text.splitlines():
        header = re.fullmatch(r"\[(.+)\]\s*(#.*)?", line)
        if header:
            section = header.group(1)
            continue
        setting = re.fullmatch(r"(#?)([a-z_]+) = (.+?)(\s+#.*)?", line)
        if setting:
            found[(section, setting.group(2))] = (setting.group(3), bool(setting.group(1)))
    return found


def test_example_documents_every_key_with_its_default() -> None:
    """Each key appears in its section; a commented one shows exactly the default."""
    text = EXAMPLE.read_text(encoding="utf-8")
    documented = _documented(text)
    defaults = config_to_dict(Config())
    for section, table in defaults.items():
        if section == "containers":
            continue
        for key, default in table.items():
            assert (section, key) in documented, f"{section}.{key} is not in the example"
            value, commented = documented[(section, key)]
            shown = tomllib.loads(f"v = {value}")["v"]
            if commented:
                assert parse_like(shown, default), f"{section}.{key}: {value} is not the default"
    for key in config_module._OVERRIDE_KEYS:
        assert ("containers.KonomiTV", key) in documented, f"containers.KonomiTV.{key}"


def parse_like(shown: object, default: object) -> bool:
    """Equal, comparing durations by their value ("60s" is "1m")."""
    if isinstance(default, str) and isinstance(shown, str) and shown != default:
        try:
            return parse_duration(shown) == parse_duration(default)
        except ValueError:
            return False
    return shown == default


def test_example_uncommented_is_the_default_configuration_plus_konomitv() -> None:
    """Removing every "#" from the settings changes nothing: the comments are the defaults."""
    text = EXAMPLE.read_text(encoding="utf-8")
    uncommented = re.sub(r"(?m)^#([a-z_]+ = )", r"\1", text)
    example = load_config(EXAMPLE)
    everything = load_config_text(uncommented)
    # Overrides become set, but to the values they inherited anyway.
    assert dataclasses.replace(everything, containers=example.containers, source=None) == (
        without_source(example)
    )
    assert everything.for_container("KonomiTV") == example.for_container("KonomiTV")


# --------------------------------------------------------------------------
# Values


def test_values_are_parsed() -> None:
    """Each kind of value arrives as the dataclass expects it."""
    config = load_config_text(
        """
        [daemon]
        state_dir = "/srv/gpuwatchd/"
        dry_run = true
        [docker]
        host = "unix:///run/docker.sock"
        timeout = 5
        [gpu]
        poll_interval = 2.5
        [probe]
        interval = "1h30m"
        start_grace = "500ms"
        command = ["/usr/bin/nvidia-smi", "-L"]
        [logs]
        patterns = ["(ER-05)", "re:ER-0[0-9]"]
        [remediation]
        max_restarts = 1
        [watch]
        containers = ["KonomiTV", "4f2c1b9e8d7a"]
        labels = ["gpu", "gpuwatchd.watch=true"]
        [notify]
        command = ["/usr/local/bin/page-me", "--loud"]
        webhook = "https://hooks.example.org/gpu?x=1"
        [metrics]
        listen = "127.0.0.1:9400"
        [containers.KonomiTV]
        confirm_with_probe = false
        probe_interval = "5m"
        [containers."mirakurun.1"]
        restart_timeout = 3
        """
    )
    assert config.daemon == DaemonConfig(state_dir=Path("/srv/gpuwatchd"), dry_run=True)
    assert config.docker == DockerConfig(host="unix:///run/docker.sock", timeout=5.0)
    assert config.gpu == GpuConfig(poll_interval=2.5)
    assert config.probe == ProbeConfig(
        interval=5400.0, start_grace=0.5, command=("/usr/bin/nvidia-smi", "-L")
    )
    assert config.logs == LogsConfig(patterns=(LogPattern("(ER-05)"), LogPattern("re:ER-0[0-9]")))
    assert config.remediation == RemediationConfig(max_restarts=1)
    assert config.watch == WatchConfig(
        containers=("KonomiTV", "4f2c1b9e8d7a"), labels=("gpu", "gpuwatchd.watch=true")
    )
    assert config.notify == NotifyConfig(
        command=("/usr/local/bin/page-me", "--loud"), webhook="https://hooks.example.org/gpu?x=1"
    )
    assert config.metrics == MetricsConfig(listen="127.0.0.1:9400")
    assert config.containers["KonomiTV"] == ContainerOverride(
        confirm_with_probe=False, probe_interval=300.0
    )
    assert config.containers["mirakurun.1"] == ContainerOverride(restart_timeout=3.0)
    settings = config.for_container("KonomiTV")
    assert settings.confirm_with_probe is False
    assert settings.probe_interval == 300.0
    assert settings.patterns == config.logs.patterns
    assert config.for_container("other").probe_interval == config.probe.interval
    with pytest.raises(TypeError):
        config.containers["x"] = ContainerOverride()  # type: ignore[index]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1m 30s", 90.0),
        (" 2s ", 2.0),
        ("+2s", 2.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("10ms", 0.01),
        ("8760h", MAX_DURATION),
        (30, 30.0),
        (0.25, 0.25),
        (0.01, 0.01),
    ],
)
def test_parse_duration_accepts(value: str | float, seconds: float) -> None:
    """Units ms, s, m, h (combinable) or a plain number of seconds."""
    assert parse_duration(value) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0s", "must be a positive duration"),
        ("0", "must be a positive duration such as"),
        ("-5s", 'must be a positive duration, got "-5s"'),
        ("- 5s", "must be a positive duration"),
        (0, "must be a positive duration"),
        (0.0, "must be a positive duration"),
        (-1, "must be a positive duration"),
        (float("nan"), "must be a positive duration"),
        (float("inf"), "must be at most 365 days"),
        ("1ms", "must be at least 10ms"),
        ("9ms", "must be at least 10ms"),
        (1e-9, "must be at least 10ms"),
        (1e-320, "must be at least 10ms"),
        (10**400, "must be at most 365 days"),
        ("8761h", "must be at most 365 days"),
        (True, "got true"),
        (False, "got false"),
        ("30", "such as"),
        ("", "such as"),
        ("s", "such as"),
        ("5 minutes", "such as"),
        ("5M", "such as"),
        ("5d", "such as"),
        ("1e3s", "such as"),
        ("５s", "such as"),  # a full-width digit
        ("٥s", "such as"),  # an Arabic-Indic digit
        ("1.s", "such as"),
        ([1], "such as"),
        (None, "such as"),
    ],
)
def test_parse_duration_rejects(value: object, problem: str) -> None:
    """Zero, negatives, booleans, bare strings and unknown units are refused, on one line."""
    with pytest.raises(ValueError, match=re.escape(problem)) as info:
        parse_duration(value)  # type: ignore[arg-type]
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize(
    ("seconds", "spelled"),
    [
        (30.0, "30s"),
        (60.0, "60s"),
        (90.0, "90s"),
        (120.0, "2m"),
        (3600.0, "1h"),
        (5400.0, "90m"),
        (0.5, "500ms"),
        (1.5, "1500ms"),
        (30, "30s"),
    ],
)
def test_format_duration(seconds: float, spelled: str | float) -> None:
    """The exact, shortest spelling, which parses back to the same value."""
    assert format_duration(seconds) == spelled
    assert parse_duration(format_duration(seconds)) == seconds


# --------------------------------------------------------------------------
# Every error class: one line naming the file, the key and the problem

ERROR_CASES = [
    # (document, key, problem substring)
    ('[probe]\ntimeout = "-5s"\n', "probe.timeout", 'must be a positive duration, got "-5s"'),
    ("[probe]\ntimeout = 0\n", "probe.timeout", "must be a positive duration, got 0"),
    ('[gpu]\npoll_interval = "fast"\n', "gpu.poll_interval", "such as"),
    ("[remediation]\ncooldown = true\n", "remediation.cooldown", "got true"),
    ('[probe]\ntimout = "5s"\n', "probe.timout", 'unknown key (did you mean "timeout"?)'),
    ("[probe]\nzzz = 1\n", "probe.zzz", "unknown key (known: interval, timeout"),
    ('[prob]\ninterval = "5s"\n', "prob", 'unknown section (did you mean "probe"?)'),
    ("version = 2\n", "version", "unknown section"),
    ("[probe.extra]\nx = 1\n", "probe.extra", "unknown key"),
    ("[containers.KonomiTV]\npatern = []\n", "containers.KonomiTV.patern", '"patterns"'),
    (
        '[containers.KonomiTV]\nprobe_interval = "-1s"\n',
        "containers.KonomiTV.probe_interval",
        "positive",
    ),
    ("probe = 5\n", "probe", "must be a table"),
    ("containers = 5\n", "containers", "must be a table"),
    ("containers = {KonomiTV = 5}\n", "containers.KonomiTV", "must be a table"),
    ('[containers."bad name"]\n', 'containers."bad name"', "must be a container name or ID"),
    (
        '[gpu]\nenforce_persistence = "yes"\n',
        "gpu.enforce_persistence",
        'must be true or false, got "yes"',
    ),
    ("[daemon]\ndry_run = 1\n", "daemon.dry_run", "must be true or false, got 1"),
    ('[daemon]\nstate_dir = "var/lib"\n', "daemon.state_dir", "must be an absolute path"),
    ("[daemon]\nstate_dir = 5\n", "daemon.state_dir", "must be an absolute path (a string)"),
    ('[daemon]\nruntime_dir = "/run/\\u0000x"\n', "daemon.runtime_dir", "NUL"),
    ("[remediation]\nmax_restarts = 0\n", "remediation.max_restarts", "must be at least 1, got 0"),
    ("[remediation]\nmax_restarts = -3\n", "remediation.max_restarts", "at least 1"),
    ("[remediation]\nmax_restarts = 2.5\n", "remediation.max_restarts", "must be an integer"),
    ("[remediation]\nmax_restarts = true\n", "remediation.max_restarts", "must be an integer"),
    ("[remediation]\nmax_restarts = 100000\n", "remediation.max_restarts", "at most 1000"),
    ("[probe]\ncommand = []\n", "probe.command", "must not be empty"),
    ('[probe]\ncommand = "nvidia-smi -L"\n', "probe.command", "must be an array of strings"),
    ('[probe]\ncommand = ["", "-L"]\n', "probe.command[0]", "command name must not be empty"),
    ('[probe]\ncommand = ["nvidia-smi", 1]\n', "probe.command[1]", "must be a string, got 1"),
    (
        "[containers.KonomiTV]\nprobe_command = []\n",
        "containers.KonomiTV.probe_command",
        "must not be empty",
    ),
    ("[logs]\npatterns = []\n", "logs.patterns", "must not be empty"),
    ('[logs]\npatterns = ["ok", ""]\n', "logs.patterns[1]", "must not be empty"),
    ('[logs]\npatterns = ["re:"]\n', "logs.patterns[0]", "must not be empty"),
    ('[logs]\npatterns = ["re:("]\n', "logs.patterns[0]", 'invalid regular expression "re:("'),
    ('[logs]\npatterns = ["re:."]\n', "logs.patterns[0]", "would match every line"),
    ("[probe]\ninterval = 1e-320\n", "probe.interval", "must be at least 10ms"),
    ('[logs]\npatterns = ["re:^"]\n', "logs.patterns[0]", "would match every line"),
    ('[logs]\npatterns = ["re:(a)\\\\1"]\n', "logs.patterns[0]", "backreferences and lookarounds"),
    ('[logs]\npatterns = ["re:(?=a)b"]\n', "logs.patterns[0]", "not supported"),
    ('[logs]\npatterns = ["re:a{1001}"]\n', "logs.patterns[0]", "invalid regular expression"),
    (
        '[containers.KonomiTV]\npatterns = ["(ER-05)", "re:["]\n',
        "containers.KonomiTV.patterns[1]",
        "invalid regular expression",
    ),
    ('[logs]\npatterns = "(ER-05)"\n', "logs.patterns", "must be an array"),
    ('[logs]\nconfirm_with_probe = "no"\n', "logs.confirm_with_probe", "true or false"),
    ('[watch]\ncontainers = ["Konomi TV"]\n', "watch.containers[0]", "container name or ID"),
    ('[watch]\ncontainers = ["/KonomiTV"]\n', "watch.containers[0]", "container name or ID"),
    ('[watch]\nlabels = ["=true"]\n', "watch.labels[0]", '"KEY" or "KEY=VALUE"'),
    ('[watch]\nall_gpu_containers = "true"\n', "watch.all_gpu_containers", "true or false"),
    ('[docker]\nhost = "/var/run/docker.sock"\n', "docker.host", "Docker host URL"),
    ('[docker]\nhost = "ftp://x"\n', "docker.host", "Docker host URL"),
    ('[metrics]\nlisten = "9400"\n', "metrics.listen", '"HOST:PORT"'),
    ('[metrics]\nlisten = "127.0.0.1:0"\n', "metrics.listen", '"HOST:PORT"'),
    ('[metrics]\nlisten = "127.0.0.1:70000"\n', "metrics.listen", '"HOST:PORT"'),
    ('[metrics]\nlisten = "::1:9400"\n', "metrics.listen", '"HOST:PORT"'),
    ('[metrics]\nlisten = "[zz]:9400"\n', "metrics.listen", '"HOST:PORT"'),
    ('[notify]\nwebhook = "hooks.example.org"\n', "notify.webhook", "http:// or https://"),
    ('[notify]\nwebhook = "ftp://hooks.example.org"\n', "notify.webhook", "http://"),
    ('[notify]\nwebhook = "http://"\n', "notify.webhook", "http://"),
    ('[notify]\nwebhook = "http://x:99999/"\n', "notify.webhook", "http://"),
    ('[notify]\ncommand = "page-me"\n', "notify.command", "must be an array"),
    ('[notify]\ntimeout = "0ms"\n', "notify.timeout", "positive"),
    ("[probe]\ninterval = 1979-05-27\n", "probe.interval", "got a date"),
    ("[probe]\ninterval = 07:32:00\n", "probe.interval", "got a time"),
    ("[probe]\ninterval = {a = 1}\n", "probe.interval", "got a table"),
]


@pytest.mark.parametrize(("document", "key", "problem"), ERROR_CASES)
def test_invalid_values_name_file_and_key(document: str, key: str, problem: str) -> None:
    """Each error class is one line: FILE: KEY: PROBLEM."""
    source = Path("/etc/gpuwatchd/config.toml")
    with pytest.raises(ConfigError) as info:
        load_config_text(document, source)
    message = str(info.value)
    assert message.startswith(f"{source}: {key}: "), message
    assert problem in message
    assert len(message.splitlines()) == 1
    assert info.value.key == key


@pytest.mark.parametrize(
    ("document", "line"),
    [
        ("[probe]\ntimeout = \n", 2),
        ("[probe]\n[probe]\n", 2),
        ("[probe\n", 1),
        ('a = "unterminated\n', 1),
        ('\n\n[logs]\npatterns = ["a",\n', 5),
    ],
)
def test_toml_syntax_error_names_the_line(document: str, line: int) -> None:
    """A syntax error says "invalid TOML" and where."""
    with pytest.raises(ConfigError) as info:
        load_config_text(document, Path("/x.toml"))
    message = str(info.value)
    assert message.startswith("/x.toml: invalid TOML: ")
    assert f"line {line}" in message or "end of document" in message
    assert len(message.splitlines()) == 1


def test_message_stays_on_one_line_with_line_breaks_in_keys() -> None:
    """Keys and values with line breaks of any kind are escaped."""
    for text in ['"a\\nb" = 1', '"a\\u2028b" = 1', '[probe]\ntimeout = "1\\u0085s"']:
        with pytest.raises(ConfigError) as info:
            load_config_text(text, Path("/dir\nwith newline/c.toml"))
        assert len(str(info.value).splitlines()) == 1


def test_config_error_without_file_or_key() -> None:
    """A ConfigError made from a problem alone prints just the problem."""
    assert str(ConfigError("no configuration file to reload")) == "no configuration file to reload"
    error = ConfigError("bad\nthing", source=Path("/c.toml"), key="probe.timeout")
    assert str(error) == "/c.toml: probe.timeout: bad\\x0athing"
    assert (error.problem, error.source, error.key) == (
        "bad\nthing",
        Path("/c.toml"),
        "probe.timeout",
    )


def test_without_a_source_the_message_says_config() -> None:
    """load_config_text without a source still has a file part."""
    with pytest.raises(ConfigError, match=r"^<config>: probe.timeout: "):
        load_config_text("[probe]\ntimeout = 0")


# --------------------------------------------------------------------------
# Reading the file


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is named with the reason."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r": cannot read config: No such file or directory$"):
        load_config(path)


def test_directory(tmp_path: Path) -> None:
    """A directory is not a config file."""
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path)


def test_fifo_does_not_hang(tmp_path: Path) -> None:
    """A FIFO is refused at once instead of blocking the daemon's start-up."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(fifo)


def test_not_utf8(tmp_path: Path) -> None:
    """A file that is not UTF-8 is refused with the byte offset."""
    path = tmp_path / "c.toml"
    path.write_bytes(b"[probe]\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not valid UTF-8 \(byte 13\)"):
        load_config(path)


def test_too_big(tmp_path: Path) -> None:
    """A huge file is refused without being read whole."""
    path = tmp_path / "c.toml"
    path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(path)


def test_loaded_file_is_the_source(tmp_path: Path) -> None:
    """Errors in a file name that file."""
    path = tmp_path / "c.toml"
    path.write_text('[remediation]\nwindow = "0s"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: remediation.window: ")


# --------------------------------------------------------------------------
# Ownership (the daemon's check)


def _file(tmp_path: Path, mode: int, uid: int = 0) -> Path:
    path = tmp_path / "config.toml"
    path.write_text('[watch]\ncontainers = ["KonomiTV"]\n', encoding="utf-8")
    os.chown(path, uid, 0)
    path.chmod(mode)
    return path


@as_root
@pytest.mark.parametrize("mode", [0o600, 0o644, 0o400, 0o640])
def test_owner_check_accepts_root_files(tmp_path: Path, mode: int) -> None:
    """Root-owned and writable only by root: accepted."""
    path = _file(tmp_path, mode)
    assert load_config(path, check_owner=True).watch.containers == ("KonomiTV",)
    check_ownership(path)


@as_root
@pytest.mark.parametrize(("mode", "shown"), [(0o664, "0664"), (0o602, "0602"), (0o666, "0666")])
def test_owner_check_refuses_writable_files(tmp_path: Path, mode: int, shown: str) -> None:
    """Writable by group or others: refused with the mode and the fix."""
    path = _file(tmp_path, mode)
    expected = f"{path}: refusing config: writable by group or others (mode {shown}); run chmod 600"
    with pytest.raises(ConfigError) as info:
        load_config(path, check_owner=True)
    assert str(info.value) == expected
    with pytest.raises(ConfigError):
        check_ownership(path)
    assert load_config(path).watch.containers == ("KonomiTV",)  # only the daemon checks


@as_root
def test_owner_check_refuses_other_owners(tmp_path: Path) -> None:
    """A file owned by another user is refused, however strict its mode."""
    path = _file(tmp_path, 0o600, uid=1000)
    with pytest.raises(ConfigError, match="refusing config: owned by uid 1000, not root"):
        load_config(path, check_owner=True)


@as_root
def test_owner_check_follows_a_symlink_to_the_file_read(tmp_path: Path) -> None:
    """The check applies to the file actually read, not to the link."""
    target = _file(tmp_path, 0o666)
    link = tmp_path / "link.toml"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="writable by group or others"):
        load_config(link, check_owner=True)


# --------------------------------------------------------------------------
# The effective configuration


def test_render_effective_round_trips_the_example() -> None:
    """check-config's output, fed back, gives the same configuration."""
    config = load_config(EXAMPLE)
    rendered = render_effective(config)
    assert without_source(load_config_text(rendered)) == without_source(config)
    assert f'# source: "{EXAMPLE}"' in rendered


def test_render_effective_fills_in_every_default() -> None:
    """Every key of every section is printed."""
    rendered = tomllib.loads(render_effective(Config()))
    for name, (cls, _spec) in config_module._SECTIONS.items():
        assert set(rendered[name]) == {f.name for f in dataclasses.fields(cls)}
    assert rendered["probe"]["interval"] == "60s"
    assert rendered["remediation"]["cooldown"] == "2m"
    assert rendered["logs"]["patterns"] == ["(ER-05)"]


def test_render_effective_odd_values_round_trip() -> None:
    """Quotes, backslashes, control characters, Japanese and odd keys survive."""
    config = load_config_text(
        r"""
        [logs]
        patterns = [
            "チューナーとの接続が切断されました。",
            "re:\\(ER-0[5-9]\\)",
            "tab\there \"q\" \u007f",
        ]
        [probe]
        timeout = 0.0125
        [containers."a.b-c_d"]
        patterns = ["x"]
        [containers.empty]
        """
    )
    for ascii_only in (False, True):
        rendered = render_effective(config, ascii_only=ascii_only)
        assert rendered.isascii() is ascii_only or not ascii_only
        assert load_config_text(rendered) == config
    assert "[containers.empty]" in render_effective(config)
    assert '[containers."a.b-c_d"]' in render_effective(config)


def test_config_to_dict_lists_only_set_overrides() -> None:
    """Unset overrides inherit, so they are not printed as if set."""
    config = load_config_text('[containers.KonomiTV]\nprobe_interval = "90s"\n')
    assert config_to_dict(config)["containers"] == {"KonomiTV": {"probe_interval": "90s"}}


@pytest.mark.parametrize(
    "document",
    [
        "x = " + "[" * 5000 + "]" * 5000 + "\n",
        "x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n",
        "[containers.k]\npatterns = " + "[" * 5000 + "]" * 5000 + "\n",
    ],
)
def test_deep_nesting_is_one_line_not_a_recursion_error(document: str) -> None:
    """A config nested past what the parsers recurse through is a ConfigError (exit 2)."""
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config_text(document, Path("/etc/gpuwatchd/config.toml"))
