"""Print the package layout as a tree, one line per module: its docstring's first line.

    python scripts/layout_tree.py [pipeline fakes]

A module without a docstring shows "(no docstring)", which is how a new one
that nobody explained yet is found.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def summary(path: Path) -> str:
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    if not docstring:
        return "(no docstring)"
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    sentence, period, _ = paragraph.partition(". ")
    return sentence + ("." if period else "")


def tree(root: Path, prefix: str = "") -> list[str]:
    lines = []
    entries = sorted(
        (p for p in root.iterdir() if p.name != "__pycache__" and not p.name.startswith(".")),
        key=lambda p: (p.is_dir(), p.name),
    )
    entries = [p for p in entries if (p / "__init__.py").exists() or p.suffix == ".py"]
    for index, path in enumerate(entries):
        last = index == len(entries) - 1
        branch = "└── " if last else "├── "
        if path.is_dir():
            lines.append(f"{prefix}{branch}{path.name}/  {summary(path / '__init__.py')}")
            lines.extend(tree(path, prefix + ("    " if last else "│   ")))
        elif path.name != "__init__.py":
            lines.append(f"{prefix}{branch}{path.name}  {summary(path)}")
    return lines


def main(packages: list[str]) -> None:
    for package in packages or ["pipeline", "fakes"]:
        root = REPO / package
        print(f"{package}/  {summary(root / '__init__.py')}")
        print("\n".join(tree(root)))


if __name__ == "__main__":
    main(sys.argv[1:])
