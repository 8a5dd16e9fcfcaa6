"""Notifications: tell a person about the records that matter, by command,
webhook or Apprise URL.

``[notify] command = [...]`` runs a program (argv only, never a shell) with one
JSON document on its stdin; ``[notify] webhook = "https://…"`` POSTs the same
document; each of ``[notify] urls = [...]`` (Apprise URLs: ntfy, Discord,
Telegram, e-mail…) gets a short title and body (:mod:`gpuwatchd.sinks.notify_message`)
through Apprise, which only the child process imports. Only the events in
:data:`NOTIFY_EVENTS` are sent. Each target is one delivery, run as a child
process in its own process group (the command itself; the webhook and each
Apprise URL as ``python -m gpuwatchd.sinks.deliver``, which takes the URL on stdin;
the webhook follows no redirect), at most :data:`MAX_CONCURRENT` at once.
``notify.timeout`` is a total deadline per delivery: at it, the whole process
group is killed, so a receiver that trickles one byte at a time, a command that
ignores SIGTERM, or anything they started, ends there, and no thread is ever
left behind. A group is also killed when its leader exits: nothing a delivery
started outlives it. At most :data:`STDERR_CAP` bytes of stderr are kept. Beyond
:data:`MAX_PENDING` deliveries waiting or running, a new one is dropped and
recorded; at shutdown :meth:`Notifier.close` waits a grace period, then cancels
(kills) the rest and records each one. A failure becomes a ``notify_failed``
record, never an exception; ``notify_failed`` itself is never sent, so a broken
receiver cannot cause a storm of notifications about itself.

The document is the record's fields plus ``event``, ``level``, ``message``,
``timestamp`` (ISO 8601, UTC, milliseconds), ``message_id`` (or null) and
``host`` (this machine's name).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gpuwatchd.config import NotifyConfig, url_scheme
from gpuwatchd.model.records import Record, make_record
from gpuwatchd.text import one_line, record_timestamp, text_or_none

#: The events a person wants to hear about. ``notify_failed`` is never one.
NOTIFY_EVENTS: frozenset[str] = frozenset(
    {
        "container_restarted",
        "container_recovered",
        "remediation_failed",
        "remediation_gave_up",
        "remediation_skipped",
        "gpu_persistence_set_failed",
    }
)
#: Deliveries running at once; more wait their turn.
MAX_CONCURRENT = 4
#: Deliveries waiting or running; beyond this a record is dropped (and that
#: is recorded), so a receiver that never answers cannot grow memory forever.
MAX_PENDING = 64
#: Bytes of a delivery's stderr kept at most (the rest is read and dropped).
STDERR_CAP = 4096
#: Characters of that stderr shown in the ``notify_failed`` record.
STDERR_EXCERPT = 300
#: Seconds :meth:`Notifier.close` allows cancelled deliveries to kill and reap.
KILL_GRACE = 5.0

RecordSink = Callable[[Record], None]
ConfigSource = NotifyConfig | Callable[[], NotifyConfig]


def notification_document(
    record: Record, *, host: str, timestamp: datetime | None = None
) -> dict[str, Any]:
    """The JSON-ready document sent for ``record``.

    Tuples in the record's fields become lists; nothing else is changed.
    """
    when = timestamp or datetime.now(timezone.utc)
    doc: dict[str, Any] = {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in record.fields.items()
    }
    doc.update(
        event=record.event,
        level=record.level.value,
        message=record.message,
        timestamp=record_timestamp(when),
        message_id=record.message_id,
        host=host,
    )
    return doc


def redact_url(url: str) -> str:
    """``scheme://host[:port]/…``: enough to tell which webhook failed, without its
    path or query (which often hold a secret token)."""
    parts = urlsplit(url)
    netloc = parts.hostname or "?"
    with contextlib.suppress(ValueError):
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
    return f"{parts.scheme}://{netloc}/…"


def _one_line_clipped(text: str, limit: int) -> str:
    """``text`` as one line of at most ``limit`` characters, an ellipsis marking a cut."""
    flat = one_line(text)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class NotifyError(Exception):
    """One delivery failed; ``str()`` is one line for the ``notify_failed`` record."""


async def _read_capped(stream: asyncio.StreamReader, cap: int) -> bytes:
    """Read ``stream`` to its end, keeping only the first ``cap`` bytes (the rest is
    read and dropped, so the writer never blocks on a full pipe)."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < cap:
            kept += chunk[: cap - len(kept)]
    return bytes(kept)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def run_child(
    argv: Sequence[str], payload: bytes, limit: float, what: str,
    env: dict[str, str] | None = None,
) -> tuple[int, str]:
    """Run ``argv`` in a new process group with ``payload`` on stdin, for at most
    ``limit`` seconds in all; return its exit status and a one-line stderr excerpt.

    The group is killed when the leader exits, at the deadline, and when the
    task is cancelled; the leader is always reaped. stdout is discarded.

    Raises:
        NotifyError: the program could not start, or was killed at the deadline.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own group: killable whole, apart from the daemon's
            env=env,
        )
    except OSError as exc:
        raise NotifyError(f"{what} could not start: {exc.strerror or exc}") from None

    async def talk() -> tuple[int, bytes]:
        assert proc.stdin is not None and proc.stderr is not None
        reader = asyncio.ensure_future(_read_capped(proc.stderr, STDERR_CAP))
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(payload)
                await proc.stdin.drain()
            proc.stdin.close()
            status = await proc.wait()
            _kill_group(proc.pid)  # whatever it left behind ends with it (and stderr ends)
            return status, await reader
        finally:
            reader.cancel()

    try:
        status, err = await asyncio.wait_for(talk(), limit)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
        raise NotifyError(f"{what} timed out after {limit:g}s and was killed") from None
    finally:
        if proc.returncode is None:
            _kill_group(proc.pid)
            # asyncio's child watcher reaps it even if this wait is cancelled.
            await proc.wait()
    return status, _one_line_clipped(err.decode(errors="replace"), STDERR_EXCERPT)


async def run_command(argv: tuple[str, ...], payload: bytes, limit: float) -> None:
    """Run the notification command ``argv`` with ``payload`` on stdin (see :func:`run_child`).

    Raises:
        NotifyError: the program could not start, timed out, or exited non-zero.
    """
    name = argv[0]
    status, detail = await run_child(argv, payload, limit, f"command {name}")
    if status != 0:
        raise NotifyError(
            f"command {name} exited with status {status}" + (f": {detail}" if detail else "")
        )


def _child_env() -> dict[str, str]:
    """The daemon's environment, with this package importable by the child."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


async def post_webhook(url: str, payload: bytes, limit: float) -> None:
    """POST ``payload`` (JSON) to ``url`` from a child process (:mod:`gpuwatchd.sinks.deliver`),
    ended at ``limit`` seconds in all. The URL goes to the child on stdin.

    Raises:
        NotifyError: no connection, a malformed answer, a redirect, an answer other
        than 2xx, or the deadline; the URL shown without its path or query.
    """
    shown = f"webhook {redact_url(url)}"
    job = json.dumps({"url": url, "body": payload.decode(), "timeout": limit}).encode()
    argv = (sys.executable, "-m", "gpuwatchd.sinks.deliver")
    status, detail = await run_child(argv, job, limit, shown, env=_child_env())
    if status != 0:
        raise NotifyError(f"{shown} {detail or f'failed (exit status {status})'}")


def apprise_label(index: int, url: str) -> str:
    """``urls[1] (ntfys://)``: which Apprise URL, without any part that may be secret."""
    return f"urls[{index}] ({url_scheme(url)}://)"


async def send_apprise(url: str, index: int, title: str, body: str, limit: float) -> None:
    """Send ``title`` and ``body`` to the Apprise ``url`` from a child process
    (:mod:`gpuwatchd.sinks.deliver`, the only place Apprise is imported), ended at
    ``limit`` seconds in all. The URL goes to the child on stdin.

    Raises:
        NotifyError: Apprise could not parse the URL or send, or the deadline
        passed; the URL shown only by its place in ``urls`` and its scheme.
    """
    shown = f"apprise {apprise_label(index, url)}"
    job = json.dumps({"kind": "apprise", "url": url, "title": title, "body": body}).encode()
    argv = (sys.executable, "-m", "gpuwatchd.sinks.deliver")
    status, detail = await run_child(argv, job, limit, shown, env=_child_env())
    if status != 0:
        raise NotifyError(f"{shown} {detail or f'failed (exit status {status})'}")


class Notifier:
    """Sends the records in :data:`NOTIFY_EVENTS` to the configured command, webhook
    and Apprise URLs (one delivery each).

    ``config`` is a :class:`NotifyConfig`, or a function returning the current
    one (read at each record, so a config reload takes effect at once).
    ``record`` receives the ``notify_failed`` records (the daemon's own
    record writer). Use :meth:`on_record` as a ``Daemon.record_listeners`` entry.
    """

    def __init__(
        self, config: ConfigSource, record: RecordSink, *, host: str | None = None
    ) -> None:
        self._config = config
        self._record = record
        self.host = host or socket.gethostname()
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def config(self) -> NotifyConfig:
        """The notify settings in force now."""
        return self._config() if callable(self._config) else self._config

    def on_record(self, record: Record) -> None:
        """Schedule the deliveries for ``record`` (on the event loop; never blocks).

        Ignores records outside :data:`NOTIFY_EVENTS` and does nothing when no
        command, webhook or URL is configured. After :meth:`close`, and for each
        delivery beyond :data:`MAX_PENDING`, records ``notify_failed`` instead.
        """
        if record.event not in NOTIFY_EVENTS:
            return
        targets = self._targets(self.config, record)
        if not targets:
            return
        if self._closing:
            self._failed(record, "not sent: gpuwatchd is stopping")
            return
        loop = asyncio.get_running_loop()
        for label, send in targets:
            if len(self._tasks) >= MAX_PENDING:
                self._failed(record, f"{MAX_PENDING} notifications pending; {label} dropped")
                continue
            task = loop.create_task(self._deliver(record, label, send()),
                                    name=f"notify-{record.event}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _targets(
        self, config: NotifyConfig, record: Record
    ) -> list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]]:
        """Each configured delivery for ``record``: a label (no secret in it) and
        a function that starts it."""
        out: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        if config.command or config.webhook:
            payload = json.dumps(
                notification_document(record, host=self.host), ensure_ascii=False
            ).encode()
            if config.command:
                out.append((f"command {config.command[0]}",
                            lambda: run_command(config.command, payload, config.timeout)))
            if config.webhook:
                out.append((f"webhook {redact_url(config.webhook)}",
                            lambda: post_webhook(config.webhook, payload, config.timeout)))
        if config.urls:
            # Loaded with the first URL: a daemon without urls carries none of it.
            from gpuwatchd.sinks.notify_message import human_message

            title, body = human_message(record)
            for i, url in enumerate(config.urls):
                out.append((apprise_label(i, url),
                            functools.partial(send_apprise, url, i, title, body,
                                              config.timeout)))
        return out

    async def _deliver(
        self, record: Record, label: str, send: Coroutine[Any, Any, None]
    ) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        try:
            async with self._slots:
                await send
        except NotifyError as exc:
            self._failed(record, str(exc))
        except asyncio.CancelledError:
            self._failed(record, f"{label} not delivered: gpuwatchd is stopping")
            raise
        except Exception as exc:  # whatever breaks one delivery ends in notify_failed
            self._failed(record, f"{label} failed: {type(exc).__name__}: {one_line(exc)}")
        finally:
            send.close()  # never started when cancelled while waiting for a slot

    def _failed(self, record: Record, error: str) -> None:
        self._record(
            make_record(
                "notify_failed",
                error=f"{record.event}: {error}",
                container=text_or_none(record.get("container")),
                container_id=text_or_none(record.get("container_id")),
            )
        )

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for deliveries in flight."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)

    async def close(self, grace: float) -> None:
        """At shutdown: send nothing new, wait up to ``grace`` seconds for deliveries
        in flight, then cancel the rest (their processes are killed) and record each.

        Returns within about ``grace`` + :data:`KILL_GRACE` seconds.
        """
        self._closing = True
        await self.drain(grace)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=KILL_GRACE)

    @property
    def pending(self) -> int:
        """Deliveries waiting or running."""
        return len(self._tasks)


__all__ = [
    "MAX_CONCURRENT",
    "NOTIFY_EVENTS",
    "Notifier",
    "NotifyError",
    "notification_document",
    "post_webhook",
    "redact_url",
    "run_child",
    "run_command",
    "send_apprise",
]
