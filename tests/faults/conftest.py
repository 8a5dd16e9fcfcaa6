"""Fixtures for the faults-survived tests: the live daemon fixtures, shared."""

from tests.live.conftest import start_daemon, watch_label

__all__ = ["start_daemon", "watch_label"]
