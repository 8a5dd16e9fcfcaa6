"""Records out: folded, written, then handed to every listener (notifications, metrics)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gpuwatchd.model.records import Record, RecordFolder, make_record
from gpuwatchd.sinks.log import write_record


class RecordWriter:
    """Folds identical records within ``fold_interval`` seconds, writes the rest.

    Called on the event loop. ``listeners`` are called with every record
    written (after folding) and must not block; one that raises is recorded
    and the others still get the record.
    """

    def __init__(self, fold_interval: float) -> None:
        self._folder = RecordFolder(fold_interval)
        self.listeners: list[Callable[[Record], None]] = []

    def record(self, record: Record, *, fold: bool = True) -> None:
        for out in self._folder.offer(record, time.time(), fold=fold):
            self.write(out)

    def write(self, record: Record) -> None:
        write_record(record)
        for listener in self.listeners:
            try:
                listener(record)
            except Exception as exc:  # a broken listener must not lose the next record
                # Written directly: through record() it could fail the same way again.
                write_record(make_record("internal_error", task=f"listener {listener!r}",
                                         error=f"{type(exc).__name__}: {exc}"))

    async def flush_forever(self) -> None:
        """Write folded summaries as their interval ends (run as a task)."""
        while True:
            await asyncio.sleep(1.0)
            for record in self._folder.due(time.time()):
                self.write(record)

    def flush(self) -> None:
        """Write every summary still held (at shutdown)."""
        for record in self._folder.flush():
            self.write(record)
