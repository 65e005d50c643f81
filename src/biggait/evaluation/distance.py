"""Per-part Euclidean distance of OpenGait's evaluator (OpenGait `opengait/evaluation/evaluator.py`), in bounded-memory chunks."""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["part_euclidean", "iter_distance_rows"]

# Elements of the [q, g, p] cross-term tensor materialised at once (128 MiB of float32).
_BUDGET = 1 << 25


def part_euclidean(probe: torch.Tensor, gallery: torch.Tensor, *, budget: int = _BUDGET) -> torch.Tensor:
    """[Q, C, P] x [G, C, P] -> [Q, G]: mean over parts of the per-part L2 distance (not the flat 4096-d one).

    Computed as OpenGait's `cuda_dist`: sqrt(relu(|x|^2 + |y|^2 - 2 x.y)) per part, averaged over parts.
    The cross term is built in gallery chunks so memory stays within `budget` elements.
    """
    if probe.dim() != 3 or gallery.dim() != 3 or probe.shape[1:] != gallery.shape[1:]:
        raise ValueError(
            f"expected [Q, C, P] and [G, C, P], got {tuple(probe.shape)} and {tuple(gallery.shape)}"
        )
    q, _, p = probe.shape
    x = probe.float().permute(2, 0, 1)  # [P, Q, C]
    y = gallery.float().permute(2, 0, 1)  # [P, G, C]
    x2 = x.pow(2).sum(-1, keepdim=True)  # [P, Q, 1]
    y2 = y.pow(2).sum(-1).unsqueeze(1)  # [P, 1, G]
    out = torch.empty(q, gallery.shape[0], device=probe.device)
    step = max(1, budget // max(1, q * p))
    for start in range(0, gallery.shape[0], step):
        stop = start + step
        d2 = x2 + y2[:, :, start:stop] - 2 * torch.bmm(x, y[:, start:stop].transpose(1, 2))
        out[:, start:stop] = torch.relu(d2).sqrt().mean(0)
    return out


def iter_distance_rows(
    probe: torch.Tensor, gallery: torch.Tensor, *, budget: int = _BUDGET
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (probe slice, [q, G] distances) in probe chunks so that q * G stays within `budget`."""
    rows = max(1, budget // max(1, gallery.shape[0] * gallery.shape[2]))
    for start in range(0, probe.shape[0], rows):
        sl = slice(start, min(start + rows, probe.shape[0]))
        yield sl, part_euclidean(probe[sl], gallery, budget=budget)
