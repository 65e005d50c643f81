"""Atomic file writes: a temp file in the same folder, flushed and fsynced, then renamed over the target.

The new file gets the mode of the file it replaces, else the one the umask gives a new file (never
`mkstemp`'s 0600: shards, galleries and exports are read by other users of a shared machine; issue #22), and
a `verify` callback may check the complete temporary file before it is renamed (an export that fails its
check never replaces a good one). `check_writable` refuses an output path that cannot be written before any
work is done.

The temporary file is always created next to the target (never in `TMPDIR`, which may be another filesystem,
where a rename becomes a copy that a kill can cut short). Its name carries the writer's process id,
`.<name>.tmp-<pid>.<random>.tmp`, so the next writer of the same target removes what a killed process left behind
(`remove_stale_temporaries`).
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from biggait.errors import BiggaitError

__all__ = [
    "OutputError",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_writable",
    "figure_png",
    "remove_stale_temporaries",
    "save_png",
]

_TMP_PID = re.compile(r"\.tmp-(\d+)(?:\.[^.]*\.tmp)?$")


class OutputError(BiggaitError, ValueError):
    """An output path that cannot be written (a directory, under a file, no permission, a read-only place)."""


def _umask() -> int:
    """The process umask without changing it (Linux: /proc/self/status), else by setting it back at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The mode of the file `path` replaces, else what `open()` would give a new file under the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse, before any work, an output `path` that cannot be written: a directory, a path under a file,
    a folder without write permission or that refuses new files (read-only, /proc). Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory: name a file to write")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{what} {path} cannot be written: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.tmp-{os.getpid()}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"{what} {path} cannot be written in {folder}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the `.<name>.tmp-<pid>...` files in `folder` (of any name when `name` is None) whose writer
    process is gone, i.e. what a killed atomic write left behind; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    pattern = f".{_glob_escape(name)}.tmp-*" if name is not None else ".*.tmp-*"
    for tmp in folder.glob(pattern):
        match = _TMP_PID.search(tmp.name)
        if match is None or int(match.group(1)) == os.getpid() or _alive(int(match.group(1))):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextmanager
def atomic_open(
    path: str | os.PathLike, *, verify: Callable[[Path], object] | None = None
) -> Iterator[IO[bytes]]:
    """A binary file to write `path` through: on a clean exit it is flushed, fsynced, given the mode of the
    file it replaces (else the umask's), checked by `verify(temporary path)` if given, and renamed over
    `path`; on any exception (Ctrl-C, a failed check) the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        if verify is not None:
            verify(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a crash right after it could otherwise lose the new name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes, *, verify: Callable[[Path], object] | None = None
) -> Path:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part (and
    never one that `verify` refused)."""
    with atomic_open(path, verify=verify) as f:
        f.write(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """`obj` as JSON (trailing newline), atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode())


def figure_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """`fig` rendered as PNG bytes (for notebooks and loggers; nothing touches disk)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_png(fig: Figure, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Write `fig` to `path` as PNG atomically: the one PNG writer of the package."""
    return atomic_write_bytes(path, figure_png(fig, dpi=dpi))
