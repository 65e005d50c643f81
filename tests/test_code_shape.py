"""The shape of the code itself: no function in src/ longer than 60 lines (a long function is split into named
steps, so that a reader can follow it one step at a time)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 60

# Functions that are known to be too long and are being split on another branch. Each entry names the branch;
# the integrator removes the entry when that branch is merged (the test then checks the function too).
ALLOWED_FOR_NOW = {
    # split by branch wds-14 (the shard reader rewritten on webdataset), which owns src/biggait/data/shards.py
    "biggait/data/shards.py:validate_manifest",
}


def long_functions(root: Path, limit: int) -> list[tuple[str, int]]:
    """`(file:qualified name, lines)` of every function or method under `root` longer than `limit` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                name = prefix
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        lines = child.end_lineno - child.lineno + 1
                        if lines > limit:
                            found.append((f"{path.relative_to(root).as_posix()}:{name}", lines))
                    name += "."
                stack.append((child, name))
    return sorted(found)


def test_the_scan_finds_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(
        f"class A:\n    def f(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n"
    )
    (tmp_path / "short.py").write_text("def g():\n    return 1\n")
    assert long_functions(tmp_path, MAX_LINES) == [("m.py:A.f", MAX_LINES + 1)]


def test_no_function_in_src_is_longer_than_60_lines() -> None:
    found = long_functions(SRC, MAX_LINES)
    too_long = [f"{name} ({lines} lines)" for name, lines in found if name not in ALLOWED_FOR_NOW]
    assert not too_long, f"split these into named steps (<= {MAX_LINES} lines each): {too_long}"
    stale = sorted(ALLOWED_FOR_NOW - {name for name, _ in found})
    assert not stale, f"no longer too long (or gone): remove them from ALLOWED_FOR_NOW: {stale}"
