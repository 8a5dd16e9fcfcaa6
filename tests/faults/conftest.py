"""Fixtures for fault tests: the live tests' watch-set labels."""

from tests.live.conftest import watch_label, watched

__all__ = ["watch_label", "watched"]
