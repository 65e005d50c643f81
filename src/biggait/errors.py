"""Project exception types: one readable error naming the thing and the fix."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["BiggaitError", "ConfigError", "CorruptDataError", "DatasetNotFoundError", "exit_on_error"]


class BiggaitError(Exception):
    """Base class of every error biggait raises on purpose."""


class ConfigError(BiggaitError, ValueError):
    """An option or a combination of options is invalid."""


class DatasetNotFoundError(BiggaitError, FileNotFoundError):
    """A dataset path does not exist or holds no shards / manifest."""


class CorruptDataError(BiggaitError, ValueError):
    """A record, shard or manifest is malformed."""


@contextmanager
def exit_on_error() -> Iterator[None]:
    """For command-line entry points: a BiggaitError becomes one `error: ...` line on stderr and exit status 2.

    Hydra wraps errors raised while instantiating a config (`raise InstantiationException(...) from err`): the
    `__cause__` chain is searched, so a bad callback option reads the same as a bad path. Any other exception
    keeps its traceback.
    """
    try:
        yield
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, BiggaitError):
            cause = cause.__cause__
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None
