"""``[notify] urls``: validation without Apprise, the missing-Apprise refusal, and
check-config's warning about the unit's address families."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpuwatchd.adapters import unit_network
from gpuwatchd.adapters.unit_network import families_allow_inet, ip_sockets_allowed
from gpuwatchd.cli import main
from gpuwatchd.config import ConfigError, load_config_text

REPO = Path(__file__).resolve().parents[2]
TOKEN = "tk_Zq8X3vN7pL2mR9wQ4sT6"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def test_urls_load_in_order() -> None:
    config = load_config_text(
        '[notify]\nurls = ["ntfys://ntfy.sh/gpu", "discord://1234/abcd", "json://h:8/"]\n'
    )
    assert config.notify.urls == ("ntfys://ntfy.sh/gpu", "discord://1234/abcd", "json://h:8/")
    assert load_config_text("").notify.urls == ()


@pytest.mark.parametrize(
    ("url", "key", "problem"),
    [
        (TOKEN, "notify.urls[0]", "must be an Apprise URL"),
        (f"ntfy:{TOKEN}", "notify.urls[0]", "must be an Apprise URL"),
        ("ntfy://", "notify.urls[0]", "must be an Apprise URL"),
        (f"ntfy://ntfy.sh/{TOKEN} x", "notify.urls[0]", "a ntfy:// URL with a space"),
        (f"tgram://{TOKEN}/\x07", "notify.urls[0]", "a tgram:// URL with a space or control"),
        ("gotify://h/" + TOKEN * 100, "notify.urls[0]", "a gotify:// URL longer than 2048"),
    ],
)
def test_a_bad_url_is_one_line_naming_the_key_and_only_the_scheme(
    url: str, key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(f"[notify]\nurls = [{_toml(url)}]\n", Path("/c.toml"))
    message = str(info.value)
    assert message.startswith(f"/c.toml: {key}: ")
    assert problem in message
    assert TOKEN not in message
    assert len(message.splitlines()) == 1


def test_a_url_listed_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"notify\.urls\[1\]: a pover:// URL listed twice"):
        load_config_text('[notify]\nurls = ["pover://u@t", "pover://u@t"]\n')


def test_urls_must_be_an_array_of_strings() -> None:
    with pytest.raises(ConfigError, match=r"notify\.urls: must be an array"):
        load_config_text('[notify]\nurls = "ntfy://ntfy.sh/gpu"\n')
    with pytest.raises(ConfigError, match=r"notify\.urls\[0\]"):
        load_config_text("[notify]\nurls = [1]\n")
    with pytest.raises(ConfigError, match="at most 16"):
        load_config_text(
            "[notify]\nurls = [" + ", ".join(f'"json://h/{i}"' for i in range(17)) + "]\n"
        )


def _toml(text: str) -> str:
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}"
                         for c in text) + '"'


# --------------------------------------------------------------------------
# Apprise missing: refused before anything starts


def _python_without_apprise(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """This Python with every installed package but Apprise: a copy of the
    site-packages directory made of symlinks, Apprise's entries left out."""
    import apprise

    site = Path(apprise.__file__).resolve().parent.parent
    shadow = tmp_path / "site-packages"
    shadow.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith("apprise"):
            (shadow / entry.name).symlink_to(entry)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join((str(REPO), str(shadow))))
    return [sys.executable, "-S", "-m", "gpuwatchd"], env


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_urls_without_apprise_installed_exit_2_saying_how_to_install_it(
    tmp_path: Path, command: str
) -> None:
    argv, env = _python_without_apprise(tmp_path)
    check = subprocess.run([*argv[:3], "-c", "import apprise"], env=env, capture_output=True)
    assert check.returncode != 0  # Apprise is really gone for this interpreter
    path = write(tmp_path, f'[notify]\nurls = ["ntfy://ntfy.sh/{TOKEN}"]\n')
    done = subprocess.run([*argv, command, "--config", str(path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"gpuwatchd: {path}: notify.urls: Apprise is not installed: ")
    assert "pip install 'gpuwatchd[apprise]'" in line
    assert TOKEN not in line


def test_without_urls_apprise_is_not_needed(tmp_path: Path) -> None:
    argv, env = _python_without_apprise(tmp_path)
    path = write(tmp_path, "[notify]\n")
    done = subprocess.run([*argv, "check-config", "--config", str(path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_daemon_never_imports_apprise() -> None:
    """The idle daemon stays small: importing the daemon and the notifier loads no Apprise."""
    code = ("import sys, gpuwatchd.daemon, gpuwatchd.sinks.notify, gpuwatchd.sinks.deliver; "
            "sys.exit(any(m.split('.')[0] == 'apprise' for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# --------------------------------------------------------------------------
# The unit's address families


@pytest.mark.parametrize(
    ("lines", "allowed"),
    [
        ([], True),
        (["AF_UNIX"], False),
        (["AF_UNIX", "AF_INET AF_INET6"], True),
        (["AF_UNIX", ""], True),
        (["AF_UNIX AF_INET", "~AF_INET"], False),
        (["~AF_INET6"], True),
        (["~AF_INET"], False),
        (["none"], False),
        (["AF_UNIX", "", "AF_UNIX"], False),
    ],
)
def test_families_combine_as_systemd_does(lines: list[str], allowed: bool) -> None:
    assert families_allow_inet(lines) is allowed


def _install_unit(unit_dir: Path, dropin: str | None) -> None:
    shipped = (REPO / "packaging/systemd/gpuwatchd.service").read_text()
    (unit_dir / "gpuwatchd.service").write_text(shipped)
    if dropin is not None:
        (unit_dir / "gpuwatchd.service.d").mkdir()
        (unit_dir / "gpuwatchd.service.d/override.conf").write_text(dropin)


def test_the_shipped_unit_allows_unix_sockets_only(tmp_path: Path) -> None:
    assert ip_sockets_allowed(tmp_path) is None  # nothing installed: cannot tell
    _install_unit(tmp_path, None)
    assert ip_sockets_allowed(tmp_path) is False


@pytest.mark.parametrize(
    ("dropin", "warned"),
    [
        (None, True),
        ("[Service]\nRestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n", False),
        ("[Service]\nLimitNOFILE=100\n", True),
        ("[Unit]\nRestrictAddressFamilies=AF_INET\n", True),  # not the [Service] section
    ],
)
@pytest.mark.parametrize("key", ["urls", "webhook"])
def test_check_config_warns_when_the_unit_blocks_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    dropin: str | None, warned: bool, key: str,
) -> None:
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    _install_unit(unit_dir, dropin)
    monkeypatch.setattr(unit_network, "UNIT_DIR", unit_dir)
    value = f'["ntfy://ntfy.sh/{TOKEN}"]' if key == "urls" else f'"https://h/{TOKEN}"'
    path = write(tmp_path, f"[notify]\n{key} = {value}\n")
    assert main(["check-config", "--config", str(path)]) == 0
    err = capsys.readouterr().err
    if warned:
        [line] = err.splitlines()
        assert line.startswith(f"gpuwatchd: warning: notify.{key} needs IP sockets")
        assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in line
        assert TOKEN not in line
    else:
        assert err == ""


def test_check_config_says_nothing_without_network_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    _install_unit(unit_dir, None)
    monkeypatch.setattr(unit_network, "UNIT_DIR", unit_dir)
    path = write(tmp_path, '[notify]\ncommand = ["/bin/true"]\n')
    assert main(["check-config", "--config", str(path)]) == 0
    assert capsys.readouterr().err == ""


def test_check_config_warns_about_a_url_apprise_cannot_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(unit_network, "UNIT_DIR", tmp_path / "no-units")
    path = write(tmp_path, f'[notify]\nurls = ["ntfys://ntfy.sh/gpu", "nosuch://{TOKEN}@h/"]\n')
    assert main(["check-config", "--config", str(path)]) == 0
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("gpuwatchd: warning: notify.urls[1]: Apprise does not understand "
                           "this nosuch:// URL")
    assert TOKEN not in line


@pytest.mark.parametrize(
    ("webhook", "got"),
    [
        (f"ftp://hooks.example.org/{TOKEN}", "got a ftp:// URL"),
        (f"https://hooks.example.org:99999/{TOKEN}", "got https:// without a valid host"),
        (f"{TOKEN}", "got no URL"),
    ],
)
def test_a_bad_webhook_is_shown_by_its_scheme_only(webhook: str, got: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(f'[notify]\nwebhook = "{webhook}"\n')
    message = str(info.value)
    assert message.startswith("<config>: notify.webhook: must be an http:// or https:// URL")
    assert got in message
    assert TOKEN not in message and "hooks.example.org" not in message
