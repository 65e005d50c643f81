"""Every code block of README.md and docs/*.md is run or checked, so the documentation cannot rot.

* ```python blocks are executed in order, one namespace per page, in a fresh temporary directory (CPU,
  no network).
* ```bash blocks are checked, not run: `bash -n` syntax; every `make TARGET` is a Makefile target; every
  `python -m biggait.X ...` / `biggait SUB ...` command exists and each `--flag` it uses appears in that
  command's `--help`; a `python some/script.py --flag` names a file of the repository that accepts the flag.
* Other blocks (```text, ```json, unlabelled, ...) are sample output and are not checked.
* Every relative Markdown link (outside code blocks) points to a file of the repository, and its `#anchor`,
  if any, to a heading of that page.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Commands the docs describe before the branch that adds them is merged (empty on main). Each entry must still
# be missing: `test_pending_commands_are_still_pending` fails as soon as one exists, so the set cannot
# silently outlive its reason.
PENDING_COMMANDS: set[str] = set()

# Pages linked before the branch that writes them is merged (empty on main); `test_pending_pages_are_still_pending`
# fails once one of them exists.
PENDING_PAGES: set[str] = set()

FENCE = re.compile(r"^```([\w+-]*)\s*$")
FLAG = re.compile(r"^\[?(--[A-Za-z0-9][\w-]*)")


def code_blocks(page: Path) -> list[tuple[str, int, str]]:
    """(language, first line number, code) of every top-level fenced block of a Markdown page."""
    blocks, language, start, lines = [], None, 0, []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        match = FENCE.match(line)
        if language is None and match:
            language, start, lines = match.group(1).lower() or "text", number + 1, []
        elif language is not None and line.strip() == "```":
            blocks.append((language, start, "\n".join(lines) + "\n"))
            language = None
        elif language is not None:
            lines.append(line)
    assert language is None, f"{page.name}: a code block opened at line {start - 1} is never closed"
    return blocks


def blocks_of(page: Path, *languages: str) -> list[tuple[int, str]]:
    return [(start, code) for language, start, code in code_blocks(page) if language in languages]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


# ----------------------------------------------------------------------------------------------- python


@pytest.mark.parametrize("page", [p for p in PAGES if blocks_of(p, "python")], ids=page_id)
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for start, code in blocks_of(page, "python"):
        exec(compile(code, f"{page_id(page)}:{start}", "exec"), namespace)  # noqa: S102


# ------------------------------------------------------------------------------------------------- bash


@functools.cache
def make_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text()
    return frozenset(re.findall(r"^([A-Za-z0-9_.-]+):", text, flags=re.M))


@functools.cache
def help_text(command: tuple[str, ...]) -> str:
    """`--help` of `python <command...>` run from the repository root (exit status 0 required)."""
    run = subprocess.run(
        [sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, f"`python {' '.join(command)} --help` failed:\n{run.stderr[-2000:]}"
    return run.stdout + run.stderr


def logical_lines(code: str) -> list[str]:
    """Shell lines with backslash continuations joined; blank lines dropped."""
    return [line for line in code.replace("\\\n", " ").splitlines() if line.strip()]


def module_exists(module: str) -> bool:
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return False
    if spec is None:
        return False
    return (
        spec.submodule_search_locations is None or importlib.util.find_spec(f"{module}.__main__") is not None
    )


def check_flags(label: str, command: tuple[str, ...], words: list[str]) -> list[str]:
    """Problems with the `--flags` among `words` for the CLI `python <command>`."""
    flags = [m.group(1) for w in words if (m := FLAG.match(w))]
    if not flags:
        return []
    positionals = [w for w in words[: next(i for i, w in enumerate(words) if FLAG.match(w))] if "=" not in w]
    text = help_text(command)
    if positionals and not all(mentions(text, f) for f in flags):  # a sub-command has its own --help
        text = help_text((*command, positionals[0]))
    return [f"`{label}` has no flag {flag}" for flag in flags if not mentions(text, flag)]


def check_command(words: list[str]) -> list[str]:
    """Problems with one shell command (already split into words)."""
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # VAR=value prefixes
        words = words[1:]
    if not words:
        return []
    if words[0] == "make":
        targets = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
        return [
            f"`make {t}`: no such target in the Makefile"
            for t in targets
            if t not in make_targets() and f"make {t}" not in PENDING_COMMANDS
        ]
    if words[0] == "biggait":
        sub = words[1] if len(words) > 1 else ""
        if f"biggait {sub}" in PENDING_COMMANDS:
            return []
        if sub not in console_help():
            return [f"`biggait {sub}`: no such sub-command of the `biggait` console script"]
        return [
            f"`biggait {sub}` has no flag {f}"
            for f in _flags(words[2:])
            if not mentions(console_help(sub), f)
        ]
    if "-m" in words[:-1]:
        module = words[words.index("-m") + 1]
        if not module.startswith("biggait"):
            return []
        if module in PENDING_COMMANDS:
            return []
        if not module_exists(module):
            return [f"`python -m {module}`: no such module"]
        return check_flags(f"python -m {module}", ("-m", module), words[words.index("-m") + 2 :])
    script = next((w for w in words[:2] if w.endswith(".py")), None)
    if script is not None and re.search(r"python[\d.]*$", words[0]):
        if not (ROOT / script).is_file():
            return [f"`{script}`: no such file in the repository"]
        return check_flags(script, (script,), words[words.index(script) + 1 :])
    return []


def mentions(text: str, flag: str) -> bool:
    """Whether `flag` appears in a --help text as a whole word (`--worker` is not `--workers`)."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def _flags(words: list[str]) -> list[str]:
    return [m.group(1) for w in words if (m := FLAG.match(w))]


@functools.cache
def console_help(*sub: str) -> str:
    """`biggait [SUB] --help` of the installed console script ('' when it is not installed)."""
    script = Path(sys.executable).parent / "biggait"
    if not script.is_file():
        return ""
    run = subprocess.run([str(script), *sub, "--help"], capture_output=True, text=True, timeout=300)
    return run.stdout + run.stderr


def bash_problems(code: str) -> list[str]:
    syntax = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True)
    if syntax.returncode != 0:
        return [f"bash -n: {syntax.stderr.strip()}"]
    problems = []
    for line in logical_lines(code):
        for command in re.split(r"&&|\|\||;|\|", line):
            try:
                words = shlex.split(command, comments=True)
            except ValueError as err:
                problems.append(f"cannot split {command!r}: {err}")
                continue
            problems += check_command(words)
    return problems


@pytest.mark.parametrize("page", [p for p in PAGES if blocks_of(p, "bash", "sh", "shell")], ids=page_id)
def test_bash_blocks_are_valid(page: Path) -> None:
    problems = [
        f"{page_id(page)}:{start}: {problem}"
        for start, code in blocks_of(page, "bash", "sh", "shell")
        for problem in bash_problems(code)
    ]
    assert not problems, "\n".join(problems)


def test_pending_commands_are_still_pending() -> None:
    """Each PENDING_COMMANDS entry must still be missing; once merged, remove it from the set."""
    present = []
    for command in PENDING_COMMANDS:
        if command.startswith("make "):
            present += [command] if command.split()[1] in make_targets() else []
        elif command.startswith("biggait "):
            present += [command] if command.split()[1] in console_help() else []
        elif module_exists(command):
            present.append(command)
    assert not present, f"these commands exist now: remove them from PENDING_COMMANDS: {sorted(present)}"


def test_checker_catches_broken_commands() -> None:
    """The bash checks themselves can fail: a bad target, module, flag and syntax are each reported."""
    assert bash_problems("make no-such-target\n") == ["`make no-such-target`: no such target in the Makefile"]
    assert bash_problems("python -m biggait.no_such_module\n") == [
        "`python -m biggait.no_such_module`: no such module"
    ]
    assert bash_problems("python -m biggait.compat.opengait IN OUT --no-such-flag\n") == [
        "`python -m biggait.compat.opengait` has no flag --no-such-flag"
    ]
    assert bash_problems("python -m biggait.data_prep ccpg --raw R --out O --worker 2\n") == [
        "`python -m biggait.data_prep` has no flag --worker"
    ]
    assert bash_problems("make train (\n")[0].startswith("bash -n:")
    assert bash_problems("make train ARGS='a=b'  # comment\nmake help\n") == []


# ------------------------------------------------------------------------------------------------ links

LINK_PAGES = [*PAGES, ROOT / "data_prep" / "README.md", ROOT / "tests" / "fixtures" / "README.md"]


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.*)$", text, re.M)
    }


def link_problems(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    problems = []
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", link):  # http(s), mailto
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page.resolve()
        if not target.exists():
            if str(target.relative_to(ROOT)) not in PENDING_PAGES:
                problems.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in heading_anchors(target):
            problems.append(f"{link}: no heading with anchor #{anchor} in {target.relative_to(ROOT)}")
    return problems


@pytest.mark.parametrize("page", LINK_PAGES, ids=page_id)
def test_relative_links_resolve(page: Path) -> None:
    problems = link_problems(page)
    assert not problems, "\n".join(f"{page_id(page)}: {p}" for p in problems)


def test_pending_pages_are_still_pending() -> None:
    present = sorted(p for p in PENDING_PAGES if (ROOT / p).exists())
    assert not present, f"these pages exist now: remove them from PENDING_PAGES: {present}"


# -------------------------------------------------------------------------------------------- citations

UNRESOLVABLE = re.compile("spec " + "§|engineering " + "notes")  # split so this file does not match itself
CITATION_SCOPE = ["README.md", "Makefile", "docs", "src", "conf", "tests", "bench", "data_prep", "notebooks"]
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".ipynb", ".txt", ".toml", ""}


def test_citations_resolve_inside_the_repository() -> None:
    """Only citations a reader can open: the paper, OpenGait files/functions/issues, or docs/ pages."""
    hits = []
    for entry in CITATION_SCOPE:
        base = ROOT / entry
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file()]
        for path in files:
            if path.suffix not in TEXT_SUFFIXES or ".egg-info" in str(path) or "__pycache__" in path.parts:
                continue
            for number, line in enumerate(path.read_text(errors="ignore").splitlines(), 1):
                if UNRESOLVABLE.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not hits, "citations a reader cannot open (see docs/fidelity.md for what to cite):\n" + "\n".join(
        hits
    )
