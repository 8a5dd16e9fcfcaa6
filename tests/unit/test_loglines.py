"""Log line reassembly and cleaning: hostile bytes stay cheap and harmless."""

from __future__ import annotations

from gpuwatchd.core.loglines import LineSplitter, clean

ER05 = (
    "[INFO] [Live: gr041-1080p] [Status: Restart] "
    "チューナーとの接続が切断されました。エンコードタスクを再起動しています… (ER-05)"
)


def split_all(chunks: list[bytes], max_bytes: int = 64) -> list[bytes]:
    splitter = LineSplitter(max_bytes)
    out = [line for chunk in chunks for line in splitter.feed(chunk)]
    tail = splitter.flush()
    return out + ([tail] if tail is not None else [])


def test_lines_split_across_chunks_are_joined() -> None:
    """A line delivered in pieces comes out whole, once."""
    assert split_all([b"ab", b"c\nde", b"f\n"]) == [b"abc", b"def"]


def test_several_lines_in_one_chunk() -> None:
    assert split_all([b"a\nb\n\nc"]) == [b"a", b"b", b"", b"c"]


def test_over_long_line_is_capped_and_the_next_line_is_intact() -> None:
    """A 1 MiB line keeps only its head; the following line is unaffected."""
    huge = b"x" * (1 << 20)
    lines = split_all([huge[:300000], huge[300000:] + b"\nnext\n"], max_bytes=100)
    assert lines == [b"x" * 100, b"next"]


def test_clean_strips_escapes_nul_and_cr_and_keeps_japanese() -> None:
    """ANSI colours, NUL and CR are removed; the ER-05 text survives intact."""
    raw = ("\x1b[31m" + ER05 + "\x1b[0m\r").encode() + b"\x00"
    assert clean(raw) == ER05


def test_clean_replaces_invalid_utf8() -> None:
    assert clean(b"ok \xff\xfe (ER-05)").endswith("(ER-05)")


def test_split_multibyte_character_across_cap_does_not_raise() -> None:
    line = ER05.encode()
    (capped,) = split_all([line + b"\n"], max_bytes=10)
    assert clean(capped)  # a cut in the middle of a character decodes with a replacement
