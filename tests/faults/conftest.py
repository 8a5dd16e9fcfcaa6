"""Fixtures for fault tests: the live tests' watch set and daemon subprocess."""

from tests.live.conftest import start_daemon, watch_label, watched

__all__ = ["start_daemon", "watch_label", "watched"]
