"""Log patterns: literal substrings, or ``re:<regex>`` for a regular expression.

Regular expressions run on RE2, a linear-time engine: a line a container
prints costs time in proportion to its length, whatever the pattern, so no
pattern can freeze the daemon (Python's ``re`` backtracks for hours on
``(a+)+$``). RE2 refuses what it cannot run in linear time: backreferences
and lookarounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import re2

REGEX_PREFIX = "re:"
#: Only this many leading characters of a line are matched: a 1 MiB line from an
#: untrusted program must cost no more than a normal one.
MAX_MATCH_CHARS = 8192
#: A pattern that matches every one of these would confirm every line a
#: container prints: it is refused.
_EVERYTHING = ("x", "0", " ", "-", "\t")

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # errors reach the operator as one line, not on stderr


class PatternError(ValueError):
    """A pattern that cannot be used; the message is one line for people."""


def _compile(regex: str) -> Any:
    try:
        return re2.compile(regex, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid"
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        hint = ""
        if "perl operator" in str(reason) or "escape sequence" in str(reason):
            hint = " (backreferences and lookarounds are not supported: patterns run on RE2)"
        raise PatternError(f"{reason}{hint}") from None


@dataclass(frozen=True)
class LogPattern:
    """One configured pattern, compiled at load time.

    Raises:
        PatternError: a ``re:`` pattern RE2 cannot compile, or any pattern
            that would match every line (empty, ``re:.``, ``re:^``).
    """

    source: str
    _regex: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = (
            _compile(self.source[len(REGEX_PREFIX) :])
            if self.source.startswith(REGEX_PREFIX)
            else None
        )
        object.__setattr__(self, "_regex", regex)
        if all(self.matches(text) for text in _EVERYTHING):
            raise PatternError("it would match every line")

    def matches(self, line: str) -> bool:
        """True when the (length-capped) line contains the pattern."""
        text = line[:MAX_MATCH_CHARS]
        if self._regex is not None:
            return self._regex.search(text) is not None
        return self.source in text


def first_match(patterns: tuple[LogPattern, ...], line: str) -> LogPattern | None:
    """The first pattern that matches ``line``, or None."""
    for pattern in patterns:
        if pattern.matches(line):
            return pattern
    return None
