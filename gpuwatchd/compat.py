"""Stand-ins for the few standard-library names newer than Python 3.10.

Every module imports these names from here, so the package reads the same on
3.10 (Ubuntu 22.04 LTS) and on 3.11+, where the standard library's own
objects are used.
"""

from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum

    import tomllib
else:  # pragma: no cover - exercised by the 3.10 unit run
    import tomli as tomllib

    class StrEnum(str, Enum):
        """An Enum whose members are strings: ``str()`` and ``format()`` give the value."""

        __str__ = str.__str__
        __format__ = str.__format__  # type: ignore[assignment]


__all__ = ["StrEnum", "tomllib"]
