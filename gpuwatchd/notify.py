"""Notifications: tell a person about the records that matter, by command or webhook.

``[notify] command = [...]`` runs a program (argv only, never a shell) with one
JSON document on its stdin; ``[notify] webhook = "https://…"`` POSTs the same
document. Only the events in :data:`NOTIFY_EVENTS` are sent. Delivery runs in
tasks on the daemon's event loop (the command as an asyncio subprocess, the
webhook through ``urllib`` in a worker thread), each bounded by
``notify.timeout`` and at most :data:`MAX_CONCURRENT` at once, so a slow or
hung receiver never holds the daemon up. A failure becomes a ``notify_failed``
record, never an exception; ``notify_failed`` itself is never sent, so a
broken receiver cannot cause a storm of notifications about itself.

The document is the record's fields plus ``event``, ``level``, ``message``,
``timestamp`` (ISO 8601, UTC, milliseconds), ``message_id`` (or null) and
``host`` (this machine's name).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from gpuwatchd import __version__
from gpuwatchd.config import NotifyConfig
from gpuwatchd.records import Record, make_record

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
#: Bytes of a failing command's stderr kept in the ``notify_failed`` record.
STDERR_EXCERPT = 300

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
        timestamp=when.astimezone(timezone.utc).isoformat(timespec="milliseconds"),
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


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class NotifyError(Exception):
    """One delivery failed; ``str()`` is one line for the ``notify_failed`` record."""


async def run_command(argv: tuple[str, ...], payload: bytes, limit: float) -> None:
    """Run ``argv`` with ``payload`` on stdin and let it run at most ``limit`` seconds.

    The program's stdout is discarded; its stderr is kept for the error. A
    program still running at the timeout (or when the task is cancelled) is
    killed and reaped. (``limit`` is not a cancellation scope: the
    process must be killed, not just abandoned.)

    Raises:
        NotifyError: the program could not start, timed out, or exited non-zero.
    """
    name = argv[0]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a signal to the daemon's group must not reach it
        )
    except OSError as exc:
        raise NotifyError(f"command {name} could not start: {exc.strerror or exc}") from None
    try:
        _out, err = await asyncio.wait_for(proc.communicate(payload), limit)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
        raise NotifyError(f"command {name} timed out after {limit:g}s and was killed") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            # asyncio's child watcher reaps it even if this wait is cancelled.
            await proc.wait()
    if proc.returncode != 0:
        detail = _one_line(err.decode(errors="replace"), STDERR_EXCERPT)
        raise NotifyError(
            f"command {name} exited with status {proc.returncode}"
            + (f": {detail}" if detail else "")
        )


def post_webhook(url: str, payload: bytes, timeout: float) -> None:
    """POST ``payload`` (JSON) to ``url``; blocking, so run it in a thread.

    Raises:
        NotifyError: no connection, a timeout, or an answer other than 2xx.
    """
    request = urllib.request.Request(
        url,
        data=payload,
        method="POST",
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": f"gpuwatchd/{__version__}",
        },
    )
    shown = redact_url(url)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status = int(answer.status)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the connection open
        raise NotifyError(f"webhook {shown} answered HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise NotifyError(f"webhook {shown} failed: {exc.reason}") from None
    except (TimeoutError, OSError) as exc:
        raise NotifyError(f"webhook {shown} failed: {exc or type(exc).__name__}") from None
    if not 200 <= status < 300:
        raise NotifyError(f"webhook {shown} answered HTTP {status}")


class Notifier:
    """Sends the records in :data:`NOTIFY_EVENTS` to the configured command and webhook.

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

    @property
    def config(self) -> NotifyConfig:
        """The notify settings in force now."""
        return self._config() if callable(self._config) else self._config

    def on_record(self, record: Record) -> None:
        """Schedule the deliveries for ``record`` (on the event loop; never blocks).

        Ignores records outside :data:`NOTIFY_EVENTS` and does nothing when
        neither a command nor a webhook is configured.
        """
        if record.event not in NOTIFY_EVENTS:
            return
        config = self.config
        if not config.command and not config.webhook:
            return
        if len(self._tasks) >= MAX_PENDING:
            self._failed(record, f"{len(self._tasks)} notifications pending; "
                                 f"{record.event} dropped")
            return
        payload = json.dumps(
            notification_document(record, host=self.host), ensure_ascii=False
        ).encode()
        task = asyncio.get_running_loop().create_task(
            self._deliver(record, payload, config), name=f"notify-{record.event}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, record: Record, payload: bytes, config: NotifyConfig) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        async with self._slots:
            if config.command:
                try:
                    await run_command(config.command, payload, config.timeout)
                except NotifyError as exc:
                    self._failed(record, str(exc))
            if config.webhook:
                try:
                    # The thread gives up at the timeout; wait_for is the backstop.
                    await asyncio.wait_for(
                        asyncio.to_thread(post_webhook, config.webhook, payload, config.timeout),
                        config.timeout + 1.0,
                    )
                except NotifyError as exc:
                    self._failed(record, str(exc))
                except TimeoutError:
                    self._failed(record, f"webhook {redact_url(config.webhook)} timed out "
                                         f"after {config.timeout:g}s")

    def _failed(self, record: Record, error: str) -> None:
        self._record(
            make_record(
                "notify_failed",
                error=f"{record.event}: {error}",
                container=_str_or_none(record.get("container")),
                container_id=_str_or_none(record.get("container_id")),
            )
        )

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for deliveries in flight (at shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)

    @property
    def pending(self) -> int:
        """Deliveries waiting or running."""
        return len(self._tasks)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


__all__ = [
    "MAX_CONCURRENT",
    "NOTIFY_EVENTS",
    "Notifier",
    "NotifyError",
    "notification_document",
    "post_webhook",
    "redact_url",
    "run_command",
]
