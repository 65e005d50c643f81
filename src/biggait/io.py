"""Atomic file writes: a temp file in the same folder, flushed, then renamed over the target (figures too)."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["atomic_write_bytes", "atomic_write_json", "figure_png", "save_png"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
