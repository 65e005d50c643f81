"""What the notebook and `notebooks/render_example.py` fall back to: a tiny random model, a tiny synthetic set,
and a quick rank-1 evaluation for the heatmaps."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from matplotlib.figure import Figure

from biggait.data_prep.synthetic import SyntheticConfig, prepare
from biggait.viz.io import read_labels, read_sequences, records_to_batch
from biggait.viz.panels import PanelSequence, comparison_indices, panel_sequences

__all__ = [
    "comparison_sequences",
    "demo_world",
    "make_demo_shards",
    "named_sequence",
    "rank1_heatmaps",
    "tiny_random_model",
]

# The CPU preset of conf/model/biggait_tiny.yaml; num_classes only sizes the classifier, unused here.
TINY_MODEL = {"backbone": "tiny", "num_classes": 8, "image_size": (224, 112), "map_size": (32, 16)}
# conf/model/biggergait_tiny.yaml's BiggerGait options beyond those (4 groups of 1 layer, 2 shared heads)
TINY_BIGGERGAIT = {
    "gait_heads": 2,
    "humanspace_dim": 8,
    "channels": (16, 32, 64, 128),
    "embed_dim": 64,
    "parts": 16,
}


def tiny_random_model(*, seed: int = 0, architecture: str = "biggait") -> torch.nn.Module:
    """The tiny CPU BigGait (or BiggerGait: conf/model/biggergait_tiny.yaml's groups and heads, its mask branch
    random too) with seeded random weights, in eval mode (nothing is trained)."""
    from biggait.models import BigGait, BiggerGait

    if architecture not in ("biggait", "biggergait"):
        raise ValueError(f"architecture must be 'biggait' or 'biggergait', got {architecture!r}")
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # callers say "random" themselves; the no-pretrained warning is expected
        warnings.filterwarnings("ignore", message=".*NO pretrained weights.*")
        if architecture == "biggergait":
            return BiggerGait(
                **TINY_MODEL, pretrained="random", mask_branch="random", **TINY_BIGGERGAIT
            ).eval()
        return BigGait(**TINY_MODEL).eval()


def demo_world(*, seed: int = 0, subjects: int = 4) -> SyntheticConfig:
    """The synthetic world (`biggait.data_prep.synthetic`) at demo size: `subjects` train and `subjects` test
    identities, the 7 CCPG types (so the CCPG protocol and the comparison trio work), 2 views, 8 frames."""
    return SyntheticConfig(
        seed=seed, num_train_ids=subjects, num_test_ids=subjects, views=(0, 90), length=(8, 8)
    )


def make_demo_shards(out: str | Path, *, seed: int = 0, subjects: int = 4) -> Path:
    """Shards of `demo_world` (with ground-truth silhouettes) in `out`: seconds on a CPU; `make data` builds the
    full synthetic world."""
    prepare(out, demo_world(seed=seed, subjects=subjects), workers=1, progress=False)
    return Path(out)


@torch.no_grad()
def comparison_sequences(
    model: torch.nn.Module,
    shards: str | Path,
    *,
    split: str = "test",
    max_frames: int = 8,
) -> list[PanelSequence]:
    """[person A outfit 1, person A outfit 2, person B] chosen from the labels of the whole split
    (`comparison_indices`: real test splits hold dozens of sequences of one subject in a row), run through
    `model.forward_features` in eval mode, as `PanelSequence`s (CPU tensors). Only the three are decoded."""
    labels = read_labels(shards, split=split)
    picks = comparison_indices(*zip(*labels)) if labels else []
    wanted = [labels[i] for i in picks]
    remaining = set(wanted)

    def first_of_each(*label: str) -> bool:  # the first sequence of each wanted label, then stop reading
        if label in remaining:
            remaining.discard(label)
            return True
        return False

    records = read_sequences(
        shards, split=split, max_frames=max_frames, where=first_of_each, limit=len(set(wanted))
    )
    found = {(r.subject, r.seq_type, r.view): r for r in records}
    batch = records_to_batch([found[label] for label in wanted])
    return panel_sequences(batch, model.eval().forward_features(batch["frames"], batch["ratios"]))


@torch.no_grad()
def named_sequence(
    model: torch.nn.Module, shards: str | Path, label: str, *, split: str = "test", max_frames: int = 8
) -> PanelSequence:
    """The sequence `label` ("subject/type/view", as `make embed` and the gallery name sequences) of a split,
    run through `model.forward_features` in eval mode. A label the split lacks is a ValueError naming some it has."""
    parts = tuple(label.split("/"))
    if len(parts) != 3:
        raise ValueError(f"SEQUENCE must be 'subject/type/view', got {label!r}")
    records = read_sequences(shards, split=split, max_frames=max_frames, where=lambda *k: k == parts, limit=1)
    if not records:
        some = ", ".join("/".join(k) for k in read_labels(shards, split=split)[:5])
        raise ValueError(f"no sequence {label!r} in the {split} split of {shards}; it has e.g. {some}")
    batch = records_to_batch(records)
    return panel_sequences(batch, model.eval().forward_features(batch["frames"], batch["ratios"]))[0]


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
