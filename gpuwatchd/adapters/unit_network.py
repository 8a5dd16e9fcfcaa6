"""Whether the installed systemd unit lets gpuwatchd open IP sockets.

The shipped unit allows ``AF_UNIX`` only; a webhook or an Apprise URL needs
``AF_INET``/``AF_INET6``, which a drop-in adds. :func:`ip_sockets_allowed`
reads the unit and its drop-ins in ``/etc/systemd/system`` the way systemd
combines ``RestrictAddressFamilies=`` lines (an allow-list adds, ``~`` removes,
an empty value resets). It answers None when it cannot tell: no unit installed
there. Units and drop-ins elsewhere (``/run``, ``/usr/lib``) are not read.
"""

from __future__ import annotations

from pathlib import Path

UNIT_DIR = Path("/etc/systemd/system")
UNIT = "gpuwatchd.service"
_KEY = "RestrictAddressFamilies="


def _assignments(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    section = ""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line
        elif section == "[Service]" and line.startswith(_KEY):
            out.append(line[len(_KEY):].strip())
    return out


def families_allow_inet(assignments: list[str]) -> bool:
    """Whether ``RestrictAddressFamilies=`` values, in order, leave ``AF_INET`` allowed."""
    allow_list: set[str] | None = None  # None: every family but those denied
    denied: set[str] = set()
    for value in assignments:
        if not value:
            allow_list, denied = None, set()
        elif value == "none":
            allow_list = set()
        elif value.startswith("~"):
            names = set(value[1:].split())
            if allow_list is None:
                denied |= names
            else:
                allow_list -= names
        elif allow_list is None:
            allow_list = set(value.split())
        else:
            allow_list |= set(value.split())
    if allow_list is None:
        return "AF_INET" not in denied
    return "AF_INET" in allow_list


def ip_sockets_allowed(unit_dir: Path | None = None) -> bool | None:
    """True or False for the installed unit in ``unit_dir`` (default
    ``/etc/systemd/system``) with its ``*.conf`` drop-ins; None when no unit is there."""
    base = unit_dir if unit_dir is not None else UNIT_DIR
    unit = base / UNIT
    if not unit.is_file():
        return None
    values = _assignments(unit)
    dropins = base / f"{UNIT}.d"
    if dropins.is_dir():
        for conf in sorted(dropins.glob("*.conf")):
            values += _assignments(conf)
    return families_allow_inet(values)


__all__ = ["families_allow_inet", "ip_sockets_allowed"]
