"""Triplet and cross-entropy losses (OpenGait `TripletLoss`, `CrossEntropyLoss`) against brute force and the official values."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from biggait.losses import cross_entropy_loss, part_distances, triplet_loss

# Recorded by the official OpenGait code (tests/fixtures/README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures"
OFFICIAL_TINY = FIXTURES / "official_tiny"


def brute_force_triplet(emb: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    n, _, p = emb.shape
    per_part = []
    for k in range(p):
        terms = []
        for a, i, j in itertools.product(range(n), repeat=3):
            if labels[a] == labels[i] and labels[a] != labels[j]:
                d_ap = (emb[a, :, k] - emb[i, :, k]).norm()
                d_an = (emb[a, :, k] - emb[j, :, k]).norm()
                terms.append(torch.relu(d_ap - d_an + margin))
        nonzero = [t for t in terms if t > 0]
        per_part.append(torch.stack(nonzero).mean() if nonzero else torch.tensor(0.0, dtype=emb.dtype))
    return torch.stack(per_part).mean()


@pytest.mark.parametrize("seed", [0, 1])
def test_triplet_matches_brute_force_with_uneven_identities(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(7, 5, 3, generator=g, dtype=torch.float64) * 0.3
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3])  # uneven K and a singleton identity
    got = triplet_loss(emb, labels, margin=0.2)
    assert got.item() == pytest.approx(brute_force_triplet(emb, labels, 0.2).item(), rel=1e-6)


def test_triplet_zero_when_all_satisfied_and_grad_flows() -> None:
    emb = torch.zeros(4, 2, 1)
    emb[2:, 0] = 10.0
    labels = torch.tensor([0, 0, 1, 1])
    assert triplet_loss(emb, labels).item() == 0.0
    emb = torch.randn(6, 4, 2, requires_grad=True)
    triplet_loss(emb, torch.tensor([0, 0, 1, 1, 2, 2])).backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_official_triplet_and_ce_values() -> None:
    ref = torch.load(OFFICIAL_TINY / "losses.pt", weights_only=True)
    loss, info = triplet_loss(ref["embeddings"], ref["labels"], margin=0.2, return_parts=True)
    torch.testing.assert_close(info["loss_per_part"], ref["triplet_per_part"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(info["num_nonzero"], ref["triplet_loss_num"].float())
    assert loss.item() == pytest.approx(ref["triplet"].item(), rel=1e-5)
    ce = cross_entropy_loss(ref["logits"], ref["labels"], scale=16.0, label_smoothing=0.1)
    assert ce.item() == pytest.approx(ref["ce"].item(), rel=1e-5)


def test_cross_entropy_is_mean_over_parts_with_smoothing() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.rand(4, 6, 3, generator=g) * 2 - 1
    labels = torch.tensor([0, 5, 2, 2])
    manual = []
    for k in range(3):
        logp = F.log_softmax(16 * logits[:, :, k], dim=1)
        nll = -logp[torch.arange(4), labels]
        smooth = -logp.mean(1)
        manual.append(0.9 * nll + 0.1 * smooth)
    expected = torch.stack(manual).mean()
    assert cross_entropy_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_part_distances_nonnegative_and_exact() -> None:
    x = torch.randn(5, 8, 4, dtype=torch.float64)
    d = part_distances(x, x)
    assert d.shape == (4, 5, 5) and bool((d >= 0).all())
    torch.testing.assert_close(d[1, 2, 3], (x[2, :, 1] - x[3, :, 1]).norm().float(), rtol=1e-5, atol=1e-5)


def test_triplet_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="embeddings"):
        triplet_loss(torch.randn(4, 8), torch.arange(4))
