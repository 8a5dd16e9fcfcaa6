"""Print the largest modules and functions of a package, by lines.

Run by scripts/check so that growth is seen at every check; it never fails.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def main(package: Path, top: int = 3) -> None:
    modules: list[tuple[int, str]] = []
    functions: list[tuple[int, str]] = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(package.parent)
        modules.append((len(text.splitlines()), str(rel)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
                lines = node.end_lineno - node.lineno + 1
                functions.append((lines, f"{rel}:{node.lineno} {node.name}"))
    for title, rows in (("largest modules", modules), ("largest functions", functions)):
        print(f"{title} (lines):")
        for lines, name in sorted(rows, reverse=True)[:top]:
            print(f"  {lines:5d}  {name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
