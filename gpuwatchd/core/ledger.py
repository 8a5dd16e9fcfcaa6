"""Restart budgets, give-ups and pauses: the core's ledger of what it may still do.

At most ``max_restarts`` restarts per container name per ``window``; a give-up
holds for one ``window``; pauses hold until resumed or their end. The ledger
survives reloads and, through :class:`~gpuwatchd.model.state.PersistedState`,
daemon restarts.
"""
from __future__ import annotations

from gpuwatchd.core.base import CoreBase, TrackedContainer, target_name
from gpuwatchd.model.events import (
    DeadlineKind,
)
from gpuwatchd.model.state import (
    ALL_CONTAINERS,
    HistoryEntry,
)
from gpuwatchd.model.vocabulary import Cause


class Ledger(CoreBase):
    """Budgets, give-ups and pauses over :class:`~gpuwatchd.core.base.CoreBase`."""

    def _give_up(self, c: TrackedContainer, now: float, cause: Cause, restarts: int) -> None:
        name = c.ref.name
        window = self._config.remediation.window
        self._given_up[name] = now
        self._remember(name, HistoryEntry(now, "gave_up", cause.value))
        self._emit(
            "remediation_gave_up",
            c,
            cause=cause.value,
            count=restarts,
            window=window,
            until=now + window,
            dry_run=self._dry_run,
        )
        self._wake(name, DeadlineKind.GIVE_UP_END, now + window)
        self._save()

    def _rearm(self, name: str) -> None:
        del self._given_up[name]
        c = self._containers.get(name)
        self._emit("remediation_rearmed", c, container=name)
        self._save()

    def _given_up_now(self, name: str, now: float) -> bool:
        at = self._given_up.get(name)
        if at is None:
            return False
        if at + self._config.remediation.window <= now:
            self._rearm(name)
            return False
        return True

    def _prune(self, name: str, now: float) -> None:
        window = self._config.remediation.window
        kept = [t for t in self._restarts.get(name, []) if t > now - window]
        if kept:
            self._restarts[name] = kept
        else:
            self._restarts.pop(name, None)

    def _in_window(self, name: str, now: float) -> list[float]:
        # Entries "in the future" (the wall clock stepped back) still count: the
        # safe side is fewer restarts, never more.
        window = self._config.remediation.window
        return [t for t in self._restarts.get(name, []) if t > now - window]

    def _on_reset(self, name: str | None) -> None:
        names = [name] if name else sorted(set(self._restarts) | set(self._given_up))
        for n in names:
            self._restarts.pop(n, None)
            self._given_up.pop(n, None)
            self._host_skips.pop(n, None)
            self._tokens.pop((n, DeadlineKind.GIVE_UP_END), None)
        for key in [k for k in self._notify_skips if name is None or k[0] == name]:
            del self._notify_skips[key]
        if name is None:
            self._host_skips.clear()
        self._emit("operator_reset", target=target_name(name))
        self._save()

    def _pause_key(self, key: str, now: float) -> tuple[bool, float | None]:
        if key not in self._paused:
            return False, None
        until = self._paused[key]
        if until is not None and until <= now:
            return False, None
        return True, until

    def _pause_of(self, name: str, now: float) -> tuple[bool, float | None]:
        paused, until = self._pause_key(name, now)
        if paused:
            return paused, until
        return self._pause_key(ALL_CONTAINERS, now)

    def _paused_now(self, name: str | None, now: float) -> bool:
        """Whether remediation of ``name`` (None: host-wide actions) is paused."""
        if name is None:
            return self._pause_key(ALL_CONTAINERS, now)[0]
        return self._pause_of(name, now)[0]

