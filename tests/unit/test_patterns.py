"""Log patterns: literal substrings, ``re:`` regular expressions, the length cap."""

from __future__ import annotations

import pytest

from gpuwatchd.patterns import MAX_MATCH_CHARS, LogPattern, PatternError, first_match

ER05 = "チューナーとの接続が切断されました。エンコードタスクを再起動しています… (ER-05)"


@pytest.mark.parametrize(
    ("source", "line", "matches"),
    [
        ("(ER-05)", ER05, True),
        ("(ER-05)", f"2024-05-01 12:00:00 [ERROR] {ER05}", True),
        ("(ER-05)", "(ER-06)", False),
        ("(ER-05)", "ER-05", False),  # literal: the parentheses must be there
        ("(ER-05)", "(er-05)", False),  # literal: case matters
        ("チューナーとの接続が切断されました", ER05, True),
        ("re:\\(ER-0[5-9]\\)", ER05, True),
        ("re:\\(ER-0[5-9]\\)", "(ER-04)", False),
        ("re:(ER-05)", "ER-05", True),  # a regex: the parentheses group
        ("re:^(ER-05)", ER05, False),
        ("re:(?i)er-05", ER05, True),
    ],
)
def test_matches(source: str, line: str, matches: bool) -> None:
    """Literal patterns are substrings; "re:" patterns are searched regexes."""
    assert LogPattern(source).matches(line) is matches


def test_only_the_head_of_a_long_line_is_matched() -> None:
    """A match past MAX_MATCH_CHARS is not seen: a huge line costs no more than a short one."""
    pattern = LogPattern("(ER-05)")
    assert pattern.matches("x" * (MAX_MATCH_CHARS - len("(ER-05)")) + "(ER-05)")
    assert not pattern.matches("x" * MAX_MATCH_CHARS + "(ER-05)")
    assert not LogPattern("re:ER-05").matches("x" * MAX_MATCH_CHARS + "ER-05")


def test_invalid_regex_raises_at_construction() -> None:
    """A bad "re:" pattern fails when built (config load), never while matching."""
    with pytest.raises(PatternError, match="missing"):
        LogPattern("re:(")


@pytest.mark.timeout(20)  # a hang guard, not a timing assertion: re backtracks for hours
@pytest.mark.parametrize("source", ["re:(a+)+$", "re:(a|a)*b", "re:(a|aa)+$", "re:(a|a?)+b"])
def test_catastrophic_patterns_run_in_linear_time(source: str) -> None:
    """Patterns that make Python's re backtrack exponentially end at once on RE2."""
    pattern = LogPattern(source)
    for n in (26, 35, MAX_MATCH_CHARS - 1):
        assert pattern.matches("a" * n + "!") is False


@pytest.mark.parametrize("source", [r"re:(a)\1", "re:(?=ER)ER-05", "re:(?<!x)ER-05",
                                    "re:(?!x)ER"])
def test_backreferences_and_lookarounds_are_refused_with_a_hint(source: str) -> None:
    with pytest.raises(PatternError, match="not supported: patterns run on RE2"):
        LogPattern(source)


@pytest.mark.parametrize("source", ["re:", "re:.", "re:^", "re:$", "re:.*", "re:x*", "re:(?s).",
                                    "re:[\\s\\S]"])
def test_a_pattern_that_matches_every_line_is_refused(source: str) -> None:
    """Every line would then ask for a probe: such a pattern is a mistake."""
    with pytest.raises(PatternError, match="would match every line"):
        LogPattern(source)


def test_equality_is_by_source() -> None:
    """Two patterns with the same source are equal and hash alike."""
    assert LogPattern("re:a+") == LogPattern("re:a+")
    assert hash(LogPattern("re:a+")) == hash(LogPattern("re:a+"))
    assert LogPattern("a+") != LogPattern("re:a+")


def test_first_match_keeps_the_configured_order() -> None:
    """The first matching pattern is reported, or None."""
    patterns = (LogPattern("re:ER-0[0-9]"), LogPattern("(ER-05)"))
    assert first_match(patterns, ER05) == patterns[0]
    assert first_match(patterns[::-1], ER05) == patterns[1]
    assert first_match(patterns, "all fine") is None
    assert first_match((), ER05) is None
