"""PID 1's daemon-reload messages in the system journal: the one query, for the
reload watcher (following new ones) and ``diagnose`` (the last one).

systemd 252 writes ``Reloading.`` (no MESSAGE_ID) as a reload starts, newer
releases ``Reloading...``; a ``daemon-reexec`` writes ``Reexecuting.`` and has
the same effect. Only those start messages count, so each reload is seen once
(not again at ``Reloading finished in N ms.``).
"""

from __future__ import annotations

from typing import Any

#: PID 1's messages that start a reload (252: "Reloading."; 253+: "Reloading...").
RELOAD_MESSAGES = frozenset({"Reloading.", "Reloading...", "Reexecuting.", "Reexecuting..."})


def open_journal(path: str | None = None) -> Any:
    """A reader of the local system journal, or of the journal directory ``path`` (tests).

    Raises:
        ImportError: systemd-python is not installed.
        OSError: the journal cannot be opened.
    """
    from systemd import journal

    if path is not None:
        return journal.Reader(path=path)
    return journal.Reader(flags=journal.SYSTEM_ONLY | journal.LOCAL_ONLY)


def reload_reader(path: str | None = None) -> tuple[Any, Any]:
    """A journal reader matching PID 1's reload messages, positioned at the last
    one, and that last entry (falsy when there is none). The reader's
    ``get_next()`` then returns only newer reloads; the caller closes it.

    Raises:
        ImportError: systemd-python is not installed.
        OSError: the journal cannot be opened or read.
    """
    reader = open_journal(path)
    try:
        # Fields AND, values of one field OR: _PID=1 and one of the messages.
        reader.add_match(_PID="1")
        for message in sorted(RELOAD_MESSAGES):
            reader.add_match(MESSAGE=message)
        reader.seek_tail()
        last = reader.get_previous()
    except BaseException:
        reader.close()
        raise
    return reader, last


def last_reload(path: str | None = None) -> float | None:
    """When PID 1 last logged a daemon-reload (epoch seconds); None when unknown
    (no systemd-python, no journal, no such message). Never raises."""
    try:
        reader, entry = reload_reader(path)
    except (ImportError, OSError):
        return None
    reader.close()
    if not entry:
        return None
    stamp = entry.get("__REALTIME_TIMESTAMP")
    return stamp.timestamp() if hasattr(stamp, "timestamp") else None
