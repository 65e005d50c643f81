"""What the notebook and `notebooks/render_example.py` fall back to: a tiny random model, a tiny synthetic set,
and a quick rank-1 evaluation for the heatmaps."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from biggait.data import SequenceRecord, write_shards
from biggait.evaluation.protocols import CCPG_TYPES
from biggait.viz.io import read_labels, read_sequences, records_to_batch
from biggait.viz.panels import PanelSequence, comparison_indices, select_sequence

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


# CCPG naming (OpenGait `evaluate_CCPG`), so the CCPG protocol and the comparison trio (two outfits of one person) work.
DEMO_TYPES = CCPG_TYPES
DEMO_VIEWS = ("1_0", "2_90")


def _walker(
    spec: tuple[int, str, str], *, frames: int = 8, size: tuple[int, int] = (128, 64)
) -> SequenceRecord:
    # A stick-figure walker: body proportions and gait speed follow the subject, upper / lower clothing
    # colours follow the outfit code U<k>_D<k>, so "same person, other outfit" is visible in the panels.
    subject, seq_type, view = spec
    h, w = size
    rng = np.random.default_rng([subject, DEMO_TYPES.index(seq_type), DEMO_VIEWS.index(view)])
    palette = np.random.default_rng(7).integers(40, 255, (8, 3))
    up, down = palette[int(seq_type[1])], palette[4 + int(seq_type[4])]
    width, speed = 10 + 2 * (subject % 4), 0.5 + 0.15 * subject
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.zeros((frames, h, w, 3), np.uint8)
    sil = np.zeros((frames, h, w), np.uint8)
    for t in range(frames):
        cx = w / 2 + 2 * np.sin(speed * t)
        head = (yy - 18) ** 2 + (xx - cx) ** 2 < 7**2
        torso = (yy >= 26) & (yy < 66) & (np.abs(xx - cx) < width / 2)
        legs = np.zeros_like(head)
        for side in (-1, 1):  # legs swing in opposite phase
            lx = cx + side * (3 + 8 * np.sin(speed * t) * (yy - 66) / 52)
            legs |= (yy >= 66) & (yy < 118) & (np.abs(xx - lx) < 3)
        rgb[t] = rng.integers(0, 40, (h, w, 3))
        rgb[t][head] = (230, 190, 160)
        rgb[t][torso] = up
        rgb[t][legs] = down
        if seq_type.endswith("_BG"):  # a bag on the side
            bag = (yy >= 40) & (yy < 60) & (xx >= cx + width / 2) & (xx < cx + width / 2 + 8)
            rgb[t][bag] = (120, 80, 30)
            sil[t][bag] = 255
        sil[t][head | torso | legs] = 255
    return SequenceRecord(f"{subject:03d}", seq_type, view, rgb, np.full(frames, 0.45, np.float32), sil)


def make_demo_shards(out: str | Path, *, seed: int = 0, subjects: int = 4) -> Path:
    """A tiny CCPG-style set of stick-figure walkers (`subjects` x 7 outfits x 2 views, 8 frames) in `out`.

    Seconds on a CPU; for the full synthetic world use `make data` (`biggait.data_prep.synthetic`).
    """
    specs = [(seed * 1000 + s, t, v) for s in range(subjects) for t in DEMO_TYPES for v in DEMO_VIEWS]
    for split in ("train", "test"):
        write_shards(specs, _walker, out, dataset="demo", split=split, shard_size=32, progress=False)
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
