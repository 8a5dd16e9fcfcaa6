"""The command line: help, version, usage errors, check-config and run's hand-over."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from gpuwatchd import __version__
from gpuwatchd.cli import CONFIG_ENV, LOG_FORMATS, SUBCOMMANDS, main
from gpuwatchd.config import Config, load_config, load_config_text
from gpuwatchd.exitcodes import EXIT_STATUS_HELP

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the owner check wants root-owned files")


@pytest.fixture(autouse=True)
def no_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


# --------------------------------------------------------------------------
# Help, version, usage


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the name and version and exits 0."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"gpuwatchd {__version__}\n"


@pytest.mark.parametrize("argv", [["--help"], *([name, "--help"] for name in SUBCOMMANDS)])
def test_help_shows_the_exit_statuses(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Every --help ends with the one exit-status table."""
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gpuwatchd")
    assert EXIT_STATUS_HELP in out


def test_top_level_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """The commands and the default config path are on the top-level help."""
    main(["--help"])
    out = capsys.readouterr().out
    for name in ("run", "check-config"):
        assert name in out
    assert "/etc/gpuwatchd/config.toml" in out
    assert CONFIG_ENV in out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["--bogus"],
        ["run", "--log-format", "xml"],
        ["run", "extra"],
        ["check-config", "--config"],
        ["check-config", "--dry-run"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Argparse usage errors give exit 2 and a message, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert "Traceback" not in err


def test_log_formats_match_the_logging_module() -> None:
    """--log-format offers exactly what gpuwatchd.sinks.log can configure."""
    log = pytest.importorskip("gpuwatchd.sinks.log")
    assert tuple(log.LOG_FORMATS) == LOG_FORMATS


# --------------------------------------------------------------------------
# check-config


def test_check_config_prints_the_effective_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The output is TOML that loads back to the same configuration."""
    path = write(tmp_path, EXAMPLE.read_text(encoding="utf-8"))
    assert main(["check-config", "--config", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    again = load_config_text(captured.out)
    assert dataclasses.replace(again, source=path) == load_config(path)
    assert "[containers.KonomiTV]" in captured.out
    assert 'cooldown = "2m"' in captured.out


def test_check_config_output_as_a_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config of its own output prints the same thing again (a fixed point)."""
    path = write(tmp_path, '[probe]\ninterval = "1h30m"\n[logs]\npatterns = ["re:ER-0[0-9]"]\n')
    main(["check-config", "--config", str(path)])
    first = capsys.readouterr().out
    second_path = tmp_path / "effective.toml"
    second_path.write_text(first, encoding="utf-8")
    assert main(["check-config", "--config", str(second_path)]) == 0
    second = capsys.readouterr().out
    assert first.replace(str(path), str(second_path)) == second


def test_check_config_uses_the_environment_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """$GPUWATCHD_CONFIG replaces the default path."""
    path = write(tmp_path, "[remediation]\nmax_restarts = 7\n")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert main(["check-config"]) == 0
    assert "max_restarts = 7" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[probe]\ntimeout = "-5s"\n', "probe.timeout"),
        ("[probe]\ntimout = 5\n", "probe.timout"),
        ("[remediation]\nmax_restarts = 0\n", "remediation.max_restarts"),
        ('[containers.KonomiTV]\npatterns = ["ok", "re:("]\n', "containers.KonomiTV.patterns[1]"),
        ("[logs]\npatterns = []\n", "logs.patterns"),
        ("[probe]\ncommand = []\n", "probe.command"),
        ('[metrics]\nlisten = "localhost"\n', "metrics.listen"),
        ('[notify]\nwebhook = "gopher://x"\n', "notify.webhook"),
        ("[watch]\ncontainers = 5\n", "watch.containers"),
        ("[probe\n", "invalid TOML"),
    ],
)
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_config_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str, command: str
) -> None:
    """Each config error: exit 2, nothing on stdout, one stderr line naming file and key."""
    path = write(tmp_path, text)
    assert main([command, "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = one_line(captured.err)
    assert line.startswith(f"gpuwatchd: {path}: {key}")


def test_missing_explicit_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A --config that does not exist: exit 2, one line with the reason."""
    path = tmp_path / "missing.toml"
    assert main(["check-config", "--config", str(path)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line == f"gpuwatchd: {path}: cannot read config: No such file or directory"


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_missing_default_config_gives_a_hint(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    """No config at the default path: exit 2 and how to create one."""
    path = tmp_path / "etc" / "config.toml"
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert main([command]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"gpuwatchd: {path}: no configuration file: copy config.example.toml")


@as_root
def test_check_config_warns_about_a_file_run_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config vets drafts too: a writable file is a warning there, exit 0."""
    path = write(tmp_path, "", mode=0o664)
    assert main(["check-config", "--config", str(path)]) == 0
    line = one_line(capsys.readouterr().err)
    assert "warning:" in line
    assert "writable by group or others (mode 0664)" in line


# --------------------------------------------------------------------------
# run


@pytest.fixture
def fake_daemon(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Config, Any]]:
    """Stand in for gpuwatchd.daemon: only run's hand-over is under test here."""
    calls: list[tuple[Config, Any]] = []

    def run_daemon(config: Config, *, log_format: Any, force_dry_run: bool) -> int:
        assert force_dry_run is config.daemon.dry_run
        calls.append((config, log_format))
        return 0

    module = types.ModuleType("gpuwatchd.daemon")
    module.run_daemon = run_daemon  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gpuwatchd.daemon", module)
    return calls


@as_root
def test_run_hands_the_config_to_the_daemon(
    tmp_path: Path, fake_daemon: list[tuple[Config, Any]]
) -> None:
    """run loads the file and calls run_daemon with it; its status is the exit status."""
    path = write(tmp_path, '[watch]\ncontainers = ["KonomiTV"]\n')
    assert main(["run", "--config", str(path)]) == 0
    [(config, log_format)] = fake_daemon
    assert config.source == path
    assert config.watch.containers == ("KonomiTV",)
    assert config.daemon.dry_run is False
    assert log_format is None  # the daemon picks journal or console itself


@as_root
def test_run_dry_run_and_log_format(tmp_path: Path, fake_daemon: list[tuple[Config, Any]]) -> None:
    """--dry-run overrides daemon.dry_run; --log-format is passed on."""
    path = write(tmp_path, "")
    assert main(["run", "--config", str(path), "--dry-run", "--log-format", "json"]) == 0
    [(config, log_format)] = fake_daemon
    assert config.daemon.dry_run is True
    assert log_format == "json"


@as_root
def test_run_refuses_a_writable_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_daemon: list[tuple[Config, Any]]
) -> None:
    """The daemon's owner check: exit 2, one line, the daemon never called."""
    path = write(tmp_path, "", mode=0o664)
    assert main(["run", "--config", str(path)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line == (
        f"gpuwatchd: {path}: refusing config: writable by group or others (mode 0664); "
        "run chmod 600"
    )
    assert fake_daemon == []


@as_root
def test_run_refuses_a_config_owned_by_someone_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file another user owns is refused even at mode 600."""
    path = write(tmp_path, "")
    os.chown(path, 1000, 1000)
    assert main(["run", "--config", str(path)]) == 2
    assert "owned by uid 1000, not root" in one_line(capsys.readouterr().err)


@as_root
def test_run_without_a_daemon_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the daemon cannot be imported: one line, exit 1."""
    monkeypatch.setitem(sys.modules, "gpuwatchd.daemon", None)
    path = write(tmp_path, "")
    assert main(["run", "--config", str(path)]) == 1
    assert one_line(capsys.readouterr().err).startswith("gpuwatchd: cannot start the daemon: ")


# --------------------------------------------------------------------------
# The real command, in a subprocess


def gpuwatchd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpuwatchd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[probe]\ntimeout = "-5s"\n', 'probe.timeout: must be a positive duration, got "-5s"'),
        ('[containers.KonomiTV]\npatterns = ["re:("]\n', "containers.KonomiTV.patterns[0]"),
        ("[daemon]\nstate_dir = 1\n", "daemon.state_dir"),
        ("[probe]\ninterval = \n", "invalid TOML"),
    ],
)
def test_subprocess_config_error(tmp_path: Path, text: str, key: str) -> None:
    """python -m gpuwatchd check-config: exit 2, one stderr line, no traceback."""
    path = write(tmp_path, text)
    result = gpuwatchd("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert one_line(result.stderr).startswith(f"gpuwatchd: {path}: {key}")


@as_root
def test_subprocess_run_refuses_a_runtime_dir_others_can_write(tmp_path: Path) -> None:
    """gpuwatchd run with a world-writable runtime_dir: exit 2, one line, nothing made there."""
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o777)
    path = write(tmp_path, f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
                           f'runtime_dir = "{run}"\n')
    try:
        result = subprocess.run(
            [sys.executable, "-m", "gpuwatchd", "run", "--config", str(path)],
            capture_output=True, text=True, timeout=20, check=False,
            env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail("gpuwatchd run started with a world-writable runtime_dir")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert one_line(result.stderr) == (
        f"gpuwatchd: runtime_dir {run} is writable by group/others (mode 0777); it must be "
        f"owned by root and not writable by group/others (run chmod go-w {run})"
    )
    assert os.listdir(run) == []


def test_subprocess_check_config_of_the_example() -> None:
    """python -m gpuwatchd check-config on the shipped example succeeds."""
    result = gpuwatchd("check-config", "--config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "[containers.KonomiTV]" in result.stdout


def test_subprocess_non_utf8_terminal(tmp_path: Path) -> None:
    """A terminal that cannot print Japanese still gets valid TOML."""
    path = write(tmp_path, '[logs]\npatterns = ["チューナーとの接続が切断されました。"]\n')
    result = gpuwatchd(
        "check-config",
        "--config",
        str(path),
        env={"PYTHONIOENCODING": "ascii", "PYTHONUTF8": "0", "LC_ALL": "C"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.isascii()
    assert load_config_text(result.stdout).logs.patterns == load_config(path).logs.patterns


def test_subprocess_version_and_usage() -> None:
    """The real entry point honours --version and usage errors."""
    assert gpuwatchd("--version").stdout == f"gpuwatchd {__version__}\n"
    result = gpuwatchd("no-such-command")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
