"""The pure layers stay pure: model and core import no I/O layer and no I/O library.

Every import is read with ``ast``, module level and inside functions alike, in
both ``import x`` and ``from x import y`` forms (relative ones resolved).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gpuwatchd"
PURE_LAYERS = ("model", "core")
#: Internal layers that do I/O, and libraries that do (or that bring threads or loops).
FORBIDDEN = (
    "gpuwatchd.observers",
    "gpuwatchd.executor",
    "gpuwatchd.sinks",
    "gpuwatchd.adapters",
    "gpuwatchd.daemon",
    "gpuwatchd.runtime",
    "gpuwatchd.status",
    "gpuwatchd.cli",
    "gpuwatchd.diagnose",
    "docker",
    "pynvml",
    "systemd",
    "subprocess",
    "socket",
    "threading",
    "asyncio",
)


def _modules() -> list[Path]:
    return sorted(p for layer in PURE_LAYERS for p in (PACKAGE / layer).rglob("*.py"))


def imported_names(path: Path, source: str | None = None) -> set[str]:
    """Every module ``path`` (or ``source`` read as if it were ``path``) imports,
    as absolute dotted names."""
    package = ".".join(("gpuwatchd", *path.relative_to(PACKAGE).parent.parts))
    text = path.read_text() if source is None else source
    found: set[str] = set()
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            # ``from gpuwatchd import daemon`` imports the module gpuwatchd.daemon.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_module_imports_no_io(path: Path) -> None:
    """A module of model/ or core/ imports none of the I/O layers or libraries."""
    bad = sorted(n for n in imported_names(path) if _forbidden(n))
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_the_reader_sees_every_form() -> None:
    """The check itself: plain, from, relative and function-level imports are all seen."""
    source = (
        "import socket\n"
        "from docker import errors\n"
        "from ..adapters import nvml\n"
        "from gpuwatchd import daemon\n"
        "def f():\n"
        "    import subprocess\n"
    )
    names = imported_names(PACKAGE / "core" / "x.py", source)
    assert {"socket", "docker", "gpuwatchd.adapters.nvml", "gpuwatchd.daemon",
            "subprocess"} <= names
    assert all(_forbidden(n) for n in ("socket", "docker.errors", "gpuwatchd.daemon"))
    assert not _forbidden("gpuwatchd.dockerish")
