"""Log patterns: literal substrings, or ``re:<regex>`` for a regular expression."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

REGEX_PREFIX = "re:"
#: Only this many leading characters of a line are matched: a 1 MiB line from an
#: untrusted program must cost no more than a normal one.
MAX_MATCH_CHARS = 8192


@dataclass(frozen=True)
class LogPattern:
    """One configured pattern, compiled at load time.

    Raises:
        re.error: when a ``re:`` pattern is not a valid regular expression.
    """

    source: str
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = (
            re.compile(self.source[len(REGEX_PREFIX) :])
            if self.source.startswith(REGEX_PREFIX)
            else None
        )
        object.__setattr__(self, "_regex", regex)

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
