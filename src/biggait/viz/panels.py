"""Matplotlib figures of BigGait's feature maps (pure: arrays in, `Figure` out, nothing saved or shown)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from biggait.evaluation.foreground import foreground_iou, silhouettes_to_map
from biggait.viz.maps import (
    VizInputError,
    denormalize_frames,
    fit_pca,
    part_colors,
    pca_rgb,
)

__all__ = [
    "BIGGERGAIT_MAP_KEYS",
    "MAP_KEYS",
    "PanelSequence",
    "comparison_panel",
    "frame_indices",
    "panel_sequences",
    "select_sequence",
    "sequence_panel",
]

# The per-frame maps of `BigGait.forward_features` that the panels read (docs/8_design.md).
MAP_KEYS = ("f_last", "f_mid4", "foreground_prob", "foreground", "denoising", "appearance")

# Row name -> one-line explanation, shown as the y label (and reused by the notebook's text).
SEQUENCE_ROWS = {
    "input": "input frame",
    "f_last": "f_last PCA\n(fg pixels)",
    "f_mid4": "f_mid4 PCA\n(fg pixels)",
    "mask": "mask branch\np(foreground)",
    "foreground": "foreground",
    "parts": "denoising\nargmax parts",
    "denoising": "denoising\nPCA",
    "appearance": "appearance\nPCA",
}


@dataclass
class PanelSequence:
    """One sequence for a panel: display label, frames [T, 3, H, W] and its per-frame feature maps."""

    label: str
    frames: torch.Tensor | np.ndarray
    features: Mapping[str, torch.Tensor]
    silhouettes: torch.Tensor | np.ndarray | None = None
    ratios: torch.Tensor | np.ndarray | None = None


# The per-frame maps of `BiggerGait.forward_features` (biggait.viz.groups draws them).
BIGGERGAIT_MAP_KEYS = ("mask_probs", "foreground", "humanspace")


def select_sequence(
    features: Mapping[str, torch.Tensor], index: int, *, length: int | None = None
) -> dict[str, torch.Tensor]:
    """Sequence `index` of a batched `forward_features` dict ([n, s, C, h, w] maps) -> [T, C, h, w] on the CPU:
    BigGait's `MAP_KEYS`, or BiggerGait's maps when the dict is a BiggerGait's (it has "humanspace")."""
    out = {}
    for key in BIGGERGAIT_MAP_KEYS if "humanspace" in features else MAP_KEYS:
        if key not in features:
            raise VizInputError(f"features lack {key!r}: pass the dict returned by BigGait.forward_features")
        value = features[key]
        if value.dim() != 5:
            raise VizInputError(f"features[{key!r}] must be [n, s, C, h, w], got shape {tuple(value.shape)}")
        out[key] = value[index, :length].detach().float().cpu()
    return out


def panel_sequences(batch: Mapping[str, Any], features: Mapping[str, torch.Tensor]) -> list[PanelSequence]:
    """An evaluation-style batch (frames, ratios, optional lengths / silhouettes / subjects, types, views) and its
    `forward_features` output -> one `PanelSequence` per sequence, labelled "subject type view" (CPU tensors)."""
    out = []
    for i in range(batch["frames"].shape[0]):
        t = int(batch["lengths"][i]) if "lengths" in batch else batch["frames"].shape[1]
        label = " ".join(str(batch[k][i]) for k in ("subjects", "types", "views") if k in batch)
        out.append(
            PanelSequence(
                label=label or f"sequence {i}",
                frames=batch["frames"][i, :t],
                features=select_sequence(features, i, length=t),
                silhouettes=batch["silhouettes"][i, :t] if "silhouettes" in batch else None,
                ratios=batch["ratios"][i, :t],
            )
        )
    return out


def frame_indices(num_frames: int, max_frames: int) -> list[int]:
    """`max_frames` evenly spaced frame indices (all frames when there are fewer)."""
    if num_frames <= max_frames:
        return list(range(num_frames))
    return np.linspace(0, num_frames - 1, max_frames).round().astype(int).tolist()


def _check_sequence(seq: PanelSequence) -> None:
    missing = [k for k in MAP_KEYS if k not in seq.features]
    if missing:
        raise VizInputError(
            f"{seq.label}: features lack {missing}; use select_sequence(forward_features(...), i)"
        )
    t = seq.features["foreground"].shape[0]
    for key in MAP_KEYS:
        if seq.features[key].dim() != 4 or seq.features[key].shape[0] != t:
            raise VizInputError(
                f"{seq.label}: features[{key!r}] must be [T={t}, C, h, w], got {tuple(seq.features[key].shape)}"
            )
    if seq.frames.shape[0] != t:
        raise VizInputError(f"{seq.label}: {seq.frames.shape[0]} frames but feature maps for {t} frames")


def _foreground_overlay(fg: np.ndarray, gt: np.ndarray | None) -> np.ndarray:
    # white = both, red = predicted only, cyan = ground truth only; grey when there is no ground truth.
    fg = fg.astype(bool)
    if gt is None:
        return np.repeat(fg[..., None].astype(np.float32) * 0.9, 3, axis=-1)
    gt = gt.astype(bool)
    rgb = np.zeros((*fg.shape, 3), dtype=np.float32)
    rgb[fg & gt] = (1.0, 1.0, 1.0)
    rgb[fg & ~gt] = (0.9, 0.15, 0.15)
    rgb[~fg & gt] = (0.1, 0.8, 0.9)
    return rgb


def _sequence_rows(
    seq: PanelSequence, bases: Mapping[str, object] | None
) -> tuple[dict[str, np.ndarray], float | None]:
    f = seq.features
    fg = f["foreground"]
    rows: dict[str, np.ndarray] = {"input": denormalize_frames(seq.frames)}
    for key in ("f_last", "f_mid4"):
        rows[key] = pca_rgb(f[key], fg, basis=None if bases is None else bases[key])
    rows["mask"] = f["foreground_prob"][:, 0].numpy()
    gt, iou = None, None
    if seq.silhouettes is not None:
        gt = silhouettes_to_map(seq.silhouettes, tuple(fg.shape[-2:]), ratios=seq.ratios)[:, 0].numpy()
        iou = foreground_iou(fg, seq.silhouettes, ratios=seq.ratios)
    rows["foreground"] = _foreground_overlay(fg[:, 0].numpy() > 0.5, gt)
    rows["parts"] = part_colors(f["denoising"], fg)
    rows["denoising"] = pca_rgb(f["denoising"], fg, basis=None if bases is None else bases["denoising"])
    rows["appearance"] = pca_rgb(f["appearance"], fg, basis=None if bases is None else bases["appearance"])
    return rows, iou


def _show(ax, image: np.ndarray) -> None:
    if image.ndim == 2:
        ax.imshow(image, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def sequence_panel(
    frames: torch.Tensor | np.ndarray,
    features: Mapping[str, torch.Tensor],
    silhouettes: torch.Tensor | np.ndarray | None = None,
    *,
    ratios: torch.Tensor | np.ndarray | None = None,
    max_frames: int = 8,
    title: str | None = None,
) -> Figure:
    """One sequence, one column per frame: input, f_last / f_mid4 PCA, mask probability, foreground (with the
    ground truth and its IoU when `silhouettes` are given), denoising parts and PCA, appearance PCA.

    `frames` [T, 3, H, W] (ImageNet-normalised or uint8); `features` per-frame maps [T, C, h, w] (see
    `select_sequence`). PCA colours are fitted jointly over all T frames, then `max_frames` are shown.
    """
    seq = PanelSequence(title or "sequence", frames, features, silhouettes, ratios)
    _check_sequence(seq)
    rows, iou = _sequence_rows(seq, None)
    cols = frame_indices(seq.frames.shape[0], max_frames)
    fig = Figure(figsize=(1.0 + 1.05 * len(cols), 1.9 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c, t in enumerate(cols):
            _show(axes[r, c], images[t])
            if r == 0:
                axes[r, c].set_title(f"t={t}", fontsize=8)
        axes[r, 0].set_ylabel(SEQUENCE_ROWS[name], fontsize=8)
    heading = title or "BigGait feature maps"
    if iou is not None:
        heading += f"\nforeground IoU vs ground truth {100 * iou:.1f}%  (white: both, red: model only, cyan: GT only)"
    fig.suptitle(heading, fontsize=9)
    return fig


def _shared_bases(seqs: Sequence[PanelSequence]) -> dict[str, object]:
    # One PCA basis per map over all sequences, so equal colours mean equal features across people / outfits.
    bases = {}
    for key in ("f_last", "f_mid4", "denoising", "appearance"):
        maps = torch.cat([torch.as_tensor(s.features[key]).float() for s in seqs])
        mask = torch.cat([torch.as_tensor(s.features["foreground"]).float() for s in seqs])
        bases[key] = fit_pca(maps, mask)
    return bases


def comparison_panel(
    sequences: Sequence[PanelSequence],
    *,
    frames_per_sequence: int = 2,
    rows: Sequence[str] = ("input", "foreground", "parts", "denoising", "appearance", "f_mid4"),
    title: str | None = None,
) -> Figure:
    """Sequences side by side (e.g. one person in two outfits, then another person) with PCA colours shared
    across all of them, so a reader sees which maps stay with the person and which change with the clothes.
    """
    if len(sequences) < 2:
        raise VizInputError(f"comparison_panel needs at least 2 sequences, got {len(sequences)}")
    unknown = [r for r in rows if r not in SEQUENCE_ROWS]
    if unknown:
        raise VizInputError(f"unknown rows {unknown}; choose from {list(SEQUENCE_ROWS)}")
    for seq in sequences:
        _check_sequence(seq)
    bases = _shared_bases(sequences)
    built = [_sequence_rows(seq, bases) for seq in sequences]
    picks = [frame_indices(seq.frames.shape[0], frames_per_sequence) for seq in sequences]
    n_cols = sum(len(p) for p in picks)
    fig = Figure(figsize=(1.0 + 1.05 * n_cols, 1.9 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    col = 0
    for seq, (images, iou), pick in zip(sequences, built, picks):
        for j, t in enumerate(pick):
            for r, name in enumerate(rows):
                _show(axes[r, col], images[name][t])
            label = seq.label if iou is None else f"{seq.label}\nIoU {100 * iou:.0f}%"
            axes[0, col].set_title(label if j == 0 else f"t={t}", fontsize=8)
            col += 1
    for r, name in enumerate(rows):
        axes[r, 0].set_ylabel(SEQUENCE_ROWS[name], fontsize=8)
    fig.suptitle(title or "Same person, two outfits vs a different person (shared PCA colours)", fontsize=9)
    return fig


_CCPG_OUTFIT = re.compile(r"U(\d+)_D(\d+)")


def outfit_difference(a: str, b: str) -> int:
    """How much the outfits of two sequence types differ: CCPG types `U<k>_D<k>[_BG]` count their upper and
    lower outfit states that differ (0-2; a bag alone changes no outfit); other datasets' types count 1 when
    they differ at all."""
    ma, mb = _CCPG_OUTFIT.match(a), _CCPG_OUTFIT.match(b)
    if ma and mb:
        return sum(x != y for x, y in zip(ma.groups(), mb.groups()))
    return int(a != b)


def comparison_indices(
    subjects: Sequence[str], types: Sequence[str], views: Sequence[str] | None = None
) -> list[int]:
    """Pick [person A outfit 1, person A outfit 2, person B] from a split's (or a batch's) labels.

    Person A is the subject whose two sequences differ most in outfit (`outfit_difference`), preferring two
    sequences in one view; person B is another subject, preferring A's first type and view, so the trio
    contrasts clothes within a person and people within a view. Ties go to the smallest labels, so the
    choice does not depend on the order the sequences come in. Falls back to the first (up to) three
    sequences when no subject has two different types.
    """
    views = list(views) if views is not None else [""] * len(subjects)
    first: dict[tuple[str, str, str], int] = {}  # one index per label (repeats of a label are equal choices)
    for i, label in enumerate(zip(subjects, types, views)):
        first.setdefault(label, i)
    by_subject: dict[str, list[tuple[str, str]]] = {}
    for subject, seq_type, view in sorted(first):
        by_subject.setdefault(subject, []).append((seq_type, view))
    best = None
    for subject, entries in by_subject.items():
        for k, (type_a, view_a) in enumerate(entries):
            for type_b, view_b in entries[k + 1 :]:
                score = outfit_difference(type_a, type_b)
                key = (-score, view_a != view_b, subject, type_a, view_a, type_b, view_b)
                if score > 0 and (best is None or key < best):
                    best = key
    if best is None:
        return list(range(min(3, len(subjects))))
    _, _, subject, type_a, view_a, type_b, view_b = best
    others = [
        (view != view_a, seq_type != type_a, s, seq_type, view) for s, seq_type, view in first if s != subject
    ]
    picks = [first[(subject, type_a, view_a)], first[(subject, type_b, view_b)]]
    if others:
        _, _, s, seq_type, view = min(others)
        picks.append(first[(s, seq_type, view)])
    return picks
