"""Project exception types: one readable error naming the thing and the fix."""

from __future__ import annotations

__all__ = ["BiggaitError", "ConfigError", "CorruptDataError", "DatasetNotFoundError"]


class BiggaitError(Exception):
    """Base class of every error biggait raises on purpose."""


class ConfigError(BiggaitError, ValueError):
    """An option or a combination of options is invalid."""


class DatasetNotFoundError(BiggaitError, FileNotFoundError):
    """A dataset path does not exist or holds no shards / manifest."""


class CorruptDataError(BiggaitError, ValueError):
    """A record, shard or manifest is malformed."""
