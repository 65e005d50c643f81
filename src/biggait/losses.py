"""Training losses of BigGait (OpenGait `opengait/modeling/losses/triplet.py`, `ce.py`) as pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["cross_entropy_loss", "part_distances", "triplet_loss"]


def part_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[n, c, p] x [m, c, p] -> [p, n, m] Euclidean distances per part (OpenGait's expansion)."""
    x = x.permute(2, 0, 1).float()
    y = y.permute(2, 0, 1).float()
    d2 = x.pow(2).sum(-1, keepdim=True) + y.pow(2).sum(-1).unsqueeze(1) - 2 * x.matmul(y.transpose(1, 2))
    return F.relu(d2).sqrt()


def triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    *,
    return_parts: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Batch-all triplet loss per part, averaged over non-zero terms, then over parts (OpenGait `TripletLoss`).

    embeddings [n, c, p], labels [n]. Positives include the anchor itself (distance 0). Works on
    embeddings gathered across ranks (`all_gather(sync_grads=True)`): no world-size factor is needed.
    With `return_parts`, also returns the per-part losses and non-zero counts.
    """
    if embeddings.dim() != 3 or labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"expected embeddings [n, c, p] and labels [n], got {tuple(embeddings.shape)}, "
            f"{tuple(labels.shape)}"
        )
    dist = part_distances(embeddings, embeddings)  # [p, n, n]
    same = labels[:, None] == labels[None, :]
    valid = same[:, :, None] & ~same[:, None, :]  # anchor a, positive i, negative j
    terms = F.relu(dist[:, :, :, None] - dist[:, :, None, :] + margin) * valid
    total = terms.sum((1, 2, 3))
    count = (terms != 0).sum((1, 2, 3)).float()
    per_part = torch.where(count > 0, total / (count + 1e-9), torch.zeros_like(total))
    loss = per_part.mean()
    if return_parts:
        return loss, {"loss_per_part": per_part, "num_nonzero": count}
    return loss


def cross_entropy_loss(
    logits: torch.Tensor, labels: torch.Tensor, scale: float = 16.0, label_smoothing: float = 0.1
) -> torch.Tensor:
    """Cross-entropy of scale*logits [n, K, p] against labels repeated over the p parts (OpenGait `CrossEntropyLoss`)."""
    target = labels[:, None].expand(-1, logits.shape[-1])
    return F.cross_entropy(scale * logits.float(), target, label_smoothing=label_smoothing)
