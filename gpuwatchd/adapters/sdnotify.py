"""sd_notify: tell systemd about readiness, reloads, shutdown, status and liveness.

A thin wrapper over ``systemd.daemon.notify`` (systemd-python). Every function
is a no-op returning False when ``NOTIFY_SOCKET`` is unset (not started by
systemd as ``Type=notify``) and never raises: a lost notification must not take
the daemon down. When systemd-python is missing, the datagram is sent directly
(the protocol is one ``AF_UNIX`` datagram of ``KEY=VALUE`` lines).
"""

from __future__ import annotations

import os
import socket
import time

from gpuwatchd.text import one_line

NOTIFY_SOCKET = "NOTIFY_SOCKET"


def notify(state: str) -> bool:
    """Send *state* (newline-separated ``KEY=VALUE`` lines) to systemd.

    Returns True when it was sent, False when there is no ``NOTIFY_SOCKET`` or
    sending failed. Never raises.
    """
    if not os.environ.get(NOTIFY_SOCKET):
        return False
    try:
        from systemd import daemon
    except ImportError:
        return _send_datagram(state)
    try:
        return bool(daemon.notify(state))
    except Exception:  # a notification must never take the daemon down
        return False


def ready(status_text: str | None = None) -> bool:
    """``READY=1`` (with an optional ``STATUS=``): start-up, or the end of a reload, is done."""
    return notify(_with_status("READY=1", status_text))


def reloading(status_text: str | None = None) -> bool:
    """``RELOADING=1`` plus ``MONOTONIC_USEC`` (newer systemd requires it; 252 ignores it).

    Follow it with :func:`ready` once the reload is applied or refused.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(_with_status(f"RELOADING=1\nMONOTONIC_USEC={usec}", status_text))


def stopping(status_text: str | None = None) -> bool:
    """``STOPPING=1``: graceful shutdown has begun."""
    return notify(_with_status("STOPPING=1", status_text))


def status(text: str) -> bool:
    """``STATUS=<text>``, shown by ``systemctl status``; newlines are folded to spaces."""
    return notify(_with_status(None, text))


def watchdog_ping(status_text: str | None = None) -> bool:
    """``WATCHDOG=1``, with ``STATUS=<status_text>`` when given: send only while
    the event loop and every observer are alive."""
    return notify(_with_status("WATCHDOG=1", status_text))


def watchdog_interval() -> float | None:
    """Seconds within which systemd expects ``WATCHDOG=1`` (``WatchdogSec=``), or None.

    None when the watchdog is off or meant for another process (``WATCHDOG_PID``
    is set to a PID other than ours). Ping at half this interval.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    try:
        if pid and int(pid) != os.getpid():
            return None
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


def _with_status(state: str | None, status_text: str | None) -> str:
    lines = [state] if state else []
    if status_text is not None:
        lines.append("STATUS=" + one_line(status_text))
    return "\n".join(lines)


def _send_datagram(state: str) -> bool:
    address = os.environ.get(NOTIFY_SOCKET, "")
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True
