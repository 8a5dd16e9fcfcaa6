"""Waiting helpers with timeouts: poll until something is true, or fail clearly."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from docker.models.containers import Container

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not become true in time (an assertion failure of the test)."""


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    interval: float = 0.1,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Calls ``predicate`` until it returns a truthy value, and returns that value.

    ``message`` (or its result, when callable: evaluated only on failure, so
    it can describe the state at that moment) names what was awaited.

    Raises:
        WaitTimeout: when ``timeout`` seconds pass first; the last falsy value
            is included.  Exceptions from ``predicate`` propagate at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {text} (last: {value!r})")
        time.sleep(interval)


def log_lines(container: Container, since: datetime | float | None = None) -> list[str]:
    """The container's log (stdout and stderr) as decoded lines, optionally from ``since``."""
    kwargs: dict[str, object] = {"stdout": True, "stderr": True}
    if since is not None:
        kwargs["since"] = since
    raw: bytes = container.logs(**kwargs)
    return raw.decode("utf-8", errors="replace").splitlines()


def wait_for_log(
    container: Container,
    text: str,
    timeout: float,
    since: datetime | float | None = None,
) -> str:
    """Waits until a log line of ``container`` contains ``text``; returns that line.

    ``since`` (a datetime or a Unix time, as the Docker API takes it) limits
    the search to lines logged from then on; note Docker keeps log times to
    the second in this filter, so pass a time taken *before* the change you
    wait for.

    Raises:
        WaitTimeout: when no such line appears within ``timeout`` seconds; the
            message carries the last lines seen.
    """
    seen: list[str] = []

    def find() -> str | None:
        nonlocal seen
        seen = log_lines(container, since)
        return next((line for line in seen if text in line), None)

    def describe() -> str:
        tail = "\n  ".join(seen[-5:])
        return f"{text!r} in the log of {container.name}; last lines:\n  {tail}\n"

    return wait_for(find, timeout, interval=0.2, message=describe)
