"""What the notebook and `notebooks/render_example.py` fall back to: a tiny random model, a tiny synthetic set,
and a quick rank-1 evaluation for the heatmaps."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from matplotlib.figure import Figure

from .io import read_sequences, records_to_batch
from .panels import PanelSequence, comparison_indices, select_sequence

__all__ = ["comparison_sequences", "make_demo_shards", "rank1_heatmaps", "tiny_random_model"]

# The CPU preset of conf/model/biggait_tiny.yaml; num_classes only sizes the classifier, unused here.
TINY_MODEL = {"backbone": "tiny", "num_classes": 8, "image_size": (224, 112), "map_size": (32, 16)}


def tiny_random_model(*, seed: int = 0) -> torch.nn.Module:
    """The tiny CPU BigGait with seeded random weights, in eval mode (nothing is trained)."""
    from biggait.models import BigGait

    torch.manual_seed(seed)
    with warnings.catch_warnings():  # callers say "random" themselves; the no-pretrained warning is expected
        warnings.filterwarnings("ignore", message=".*NO pretrained weights.*")
        return BigGait(**TINY_MODEL).eval()


def make_demo_shards(out: str | Path, *, seed: int = 0) -> Path:
    """A small synthetic set (few subjects, short sequences) in `out`, built in seconds on a CPU."""
    from biggait.data_prep import synthetic

    cfg = synthetic.SyntheticConfig(seed=seed, **synthetic.TINY)
    synthetic.prepare(out, cfg, workers=1)
    return Path(out)


@torch.no_grad()
def comparison_sequences(
    model: torch.nn.Module,
    shards: str | Path,
    *,
    split: str = "test",
    max_sequences: int = 24,
    max_frames: int = 8,
) -> list[PanelSequence]:
    """[person A outfit 1, person A outfit 2, person B] from the first `max_sequences` of a split, run
    through `model.forward_features` in eval mode, as `PanelSequence`s (CPU tensors)."""
    records = read_sequences(shards, split=split, limit=max_sequences, max_frames=max_frames)
    picks = comparison_indices([r.subject for r in records], [r.seq_type for r in records])
    batch = records_to_batch([records[i] for i in picks])
    features = model.eval().forward_features(batch["frames"], batch["ratios"])
    out = []
    for i in range(len(picks)):
        t = int(batch["lengths"][i])
        out.append(
            PanelSequence(
                label=f"{batch['subjects'][i]} {batch['types'][i]} {batch['views'][i]}",
                frames=batch["frames"][i, :t],
                features=select_sequence(features, i, length=t),
                silhouettes=batch["silhouettes"][i, :t] if "silhouettes" in batch else None,
                ratios=batch["ratios"][i, :t],
            )
        )
    return out


@torch.no_grad()
def rank1_heatmaps(
    model: torch.nn.Module,
    shards: str | Path,
    *,
    split: str = "test",
    protocol: str = "ccpg",
    max_sequences: int | None = None,
    max_frames: int = 8,
    batch_size: int = 8,
    label: str = "",
) -> list[Figure]:
    """Evaluate `model` on (the first `max_sequences` sequences of) a split, on the first `max_frames` frames of
    each, and draw one rank-1 heatmap per condition. A quick look: `make eval` gives the reported numbers.
    """
    from biggait.evaluation.metric import GaitRetrievalMetric
    from biggait.evaluation.report import rank1_heatmap

    records = read_sequences(shards, split=split, limit=max_sequences, max_frames=max_frames)
    metric = GaitRetrievalMetric(protocol)
    model.eval()
    for start in range(0, len(records), batch_size):
        batch = records_to_batch(records[start : start + batch_size])
        features = model.forward_features(batch["frames"], batch["ratios"])
        out = model.forward_head(features, lengths=batch["lengths"])
        metric.update(out["embeddings"].float(), batch["subjects"], batch["types"], batch["views"])
    result = metric.compute()
    return [
        rank1_heatmap(matrix, probe_views, gallery_views, title=f"{condition} rank-1 (%) {label}".strip())
        for condition, (probe_views, gallery_views, matrix) in result.matrices.items()
    ]
