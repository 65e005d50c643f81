"""Restricted unpickler for untrusted dataset pickles: numpy arrays and plain containers only."""

from __future__ import annotations

import codecs
import collections
import io
import os
import pickle
from typing import Any

import numpy as np

from biggait.errors import CorruptDataError

__all__ = ["UnsafePickleError", "load_pickle", "loads_pickle"]

# Everything a pickled ndarray / numpy scalar / dtype needs (numpy 1.x writes `numpy.core`, 2.x `numpy._core`).
# Lists, dicts, tuples, str, numbers are pickle opcodes and never reach `find_class`.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,  # protocol 0-2 store bytes (array buffers) this way
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = np._core.multiarray._reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = np._core.multiarray.scalar
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = np._core.numeric._frombuffer


class UnsafePickleError(CorruptDataError):
    """A pickle asked for a global outside the allow-list (it could run code)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, *, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise UnsafePickleError(
            f"{self._source}: refusing to load {module}.{name}; dataset pickles may hold only numpy arrays "
            "and plain containers (lists, dicts, tuples, numbers). If you trust this file, re-save it as a "
            "plain numpy array."
        )


def loads_pickle(data: bytes, *, source: str = "<bytes>") -> Any:
    """Unpickle `data`, admitting only numpy arrays, numpy scalars / dtypes and plain containers."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated / garbage file: one readable error, not a pickle traceback
        raise CorruptDataError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


def load_pickle(path: str | os.PathLike) -> Any:
    """`loads_pickle` of a file; errors name the file."""
    with open(path, "rb") as f:
        return loads_pickle(f.read(), source=str(path))
