"""The shape of the code itself: no function in src/ longer than 60 lines (a long function is split into named
steps, so that a reader can follow it one step at a time)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 60

# Functions that are known to be too long and are being split on another branch. Each entry names the branch;
# the integrator removes the entry when that branch is merged (the test then checks the function too).
ALLOWED_FOR_NOW: set[str] = set()  # functions allowed over the limit while being split: none


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


def _module_imports(root: Path) -> dict[str, set[str]]:
    """For every module under `root`: the biggait modules it imports at module level (not inside functions)."""
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module:
                deps.add(node.module)
                deps.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan): each is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_src() -> None:
    assert not import_cycles(_module_imports(SRC)), "modules that import each other at module level"


def test_every_module_imports_and_training_leaves_the_visualisation_package_alone() -> None:
    """In a fresh process: every module of the package imports; the LightningModule, the evaluation and the
    stand-in LVM's training never load biggait.viz (the figures are the FeatureMapLogger callback's concern)."""
    import subprocess
    import sys

    code = (
        "import importlib, pkgutil, sys, biggait\n"
        "for m in ('biggait.lit_module', 'biggait.evaluation', 'biggait.synthetic_lvm'):\n"
        "    importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.startswith('biggait.viz')))\n"
        "for info in pkgutil.walk_packages(biggait.__path__, 'biggait.'):\n"
        "    if not info.name.endswith('__main__'):\n"
        "        importlib.import_module(info.name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[0] == "[]", proc.stdout
