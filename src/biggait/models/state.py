"""How a state dict differs from the one a module expects: the one comparison behind every strict weight
loader (our checkpoints, official OpenGait checkpoints, the official mask-branch file)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["StateDiff", "state_diff"]


@dataclass
class StateDiff:
    """Names missing from the given state, names it has in excess, and `(name, given, expected)` shapes."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)


def state_diff(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> StateDiff:
    """Compare `given` (a file's tensors) with `expected` (a module's `state_dict()`); empty (falsy) if they fit."""
    return StateDiff(
        missing=sorted(set(expected) - set(given)),
        unexpected=sorted(set(given) - set(expected)),
        shapes=[
            (k, tuple(v.shape), tuple(expected[k].shape))
            for k, v in given.items()
            if k in expected and tuple(v.shape) != tuple(expected[k].shape)
        ],
    )
