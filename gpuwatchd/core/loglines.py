"""Turning a container's raw log chunks into bounded, printable lines.

Container output is untrusted bytes: invalid UTF-8, NUL, CR, ANSI escapes and
megabyte-long lines must cost no more than ordinary lines and never break the
follower. Only the first :data:`MAX_LINE_BYTES` of a line are kept; the rest of
an over-long line is dropped until its newline.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from gpuwatchd.patterns import MAX_MATCH_CHARS

#: Bytes of one line kept for matching (a UTF-8 character is at most 4 bytes).
MAX_LINE_BYTES = MAX_MATCH_CHARS * 4
#: CSI and OSC escape sequences, plus stray C0 controls other than TAB.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor movement
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window titles, links
    r"|\x1b."
    r"|[\x00-\x08\x0b-\x1f\x7f]"
)


def clean(raw: bytes) -> str:
    """Decode a raw line leniently and drop escapes and control characters."""
    return _ESCAPES.sub("", raw.decode("utf-8", errors="replace"))


class LineSplitter:
    """Reassembles lines from chunks, keeping at most ``max_bytes`` of each."""

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self._max = max_bytes
        self._buf = bytearray()
        self._overflow = False  # the current line already reached the cap

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """Yield every line completed by ``chunk`` (without its newline)."""
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            room = self._max - len(self._buf)
            if room > 0:
                self._buf += piece[:room]
            if len(piece) > room:
                self._overflow = True
            if end < 0:
                return
            yield bytes(self._buf)
            self._buf.clear()
            self._overflow = False
            start = end + 1

    def flush(self) -> bytes | None:
        """The unterminated last line, if any (the stream ended)."""
        if not self._buf:
            return None
        line = bytes(self._buf)
        self._buf.clear()
        self._overflow = False
        return line
