"""Project exception types: one readable error naming the thing and the fix."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "BiggaitError",
    "ConfigError",
    "CorruptDataError",
    "DatasetNotFoundError",
    "exit_on_error",
    "one_line",
]


class BiggaitError(Exception):
    """Base class of every error biggait raises on purpose."""


class ConfigError(BiggaitError, ValueError):
    """An option or a combination of options is invalid."""


class DatasetNotFoundError(BiggaitError, FileNotFoundError):
    """A dataset path does not exist or holds no shards / manifest."""


class CorruptDataError(BiggaitError, ValueError):
    """A record, shard or manifest is malformed."""


def one_line(error: BaseException) -> str:
    """The error's own message. An error re-raised from a DataLoader worker carries the worker's traceback in
    its message ("Caught X in DataLoader worker process 0. Original Traceback ..."): its last line is the message."""
    text = str(error)
    if "\nOriginal Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if last.startswith(f"{type(error).__module__}.") else last
    return text


@contextmanager
def exit_on_error() -> Iterator[None]:
    """For command-line entry points: a BiggaitError becomes one `error: ...` line on stderr and exit status 2.

    Hydra wraps errors raised while instantiating a config (`raise InstantiationException(...) from err`): the
    `__cause__` chain is searched, so a bad callback option reads the same as a bad path. Ctrl-C is one
    `error: interrupted` line and exit status 130 (outputs are written atomically: nothing half-written stays).
    Any other exception keeps its traceback.
    """
    try:
        yield
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C); outputs not yet written were not written", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, BiggaitError):
            cause = cause.__cause__
        if cause is None:
            raise
        print(f"error: {one_line(cause)}", file=sys.stderr)
        raise SystemExit(2) from None
