"""Matplotlib figures of BiggerGait's maps: the frozen mask branch's foreground and one PCA row per layer group
(pure: `PanelSequence`s in, `Figure` out, nothing saved or shown)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from biggait.evaluation.foreground import foreground_iou, silhouettes_to_map
from biggait.viz.maps import VizInputError, denormalize_frames, fit_pca, pca_rgb
from biggait.viz.panels import BIGGERGAIT_MAP_KEYS, PanelSequence, _foreground_overlay, _show, frame_indices

__all__ = ["group_maps", "group_panel"]


def group_maps(humanspace: torch.Tensor, num_groups: int) -> list[torch.Tensor]:
    """Masked HumanSpace maps [T, G*U, h, w] -> per layer group [T, U, h, w] (`BiggerGait.group_maps`, per frame)."""
    if humanspace.dim() != 4 or num_groups < 1 or humanspace.shape[1] % num_groups:
        raise VizInputError(
            f"humanspace must be [T, G*U, h, w] with G={num_groups} groups, got shape {tuple(humanspace.shape)}"
        )
    return list(humanspace.split(humanspace.shape[1] // num_groups, dim=1))


def _check(seq: PanelSequence) -> None:
    missing = [k for k in BIGGERGAIT_MAP_KEYS if k not in seq.features]
    if missing:
        raise VizInputError(
            f"{seq.label}: features lack {missing}: pass what BiggerGait.forward_features returns "
            "(select_sequence(features, i)); BigGait's maps go to sequence_panel / comparison_panel"
        )


def _rows(seq: PanelSequence, bases: list, num_groups: int) -> tuple[dict[str, np.ndarray], float | None]:
    f = seq.features
    fg = torch.as_tensor(f["foreground"]).float()
    rows = {"input frame": denormalize_frames(seq.frames)}
    # the mask branch's p(foreground) on the patch grid, shown at the map size
    probs = torch.as_tensor(f["mask_probs"])[:, 1:2].float()
    rows["mask branch\np(foreground)"] = F.interpolate(probs, size=tuple(fg.shape[-2:]))[:, 0].numpy()
    gt, iou = None, None
    if seq.silhouettes is not None:  # frames are stretched: silhouettes are resized plainly, no ratios
        gt = silhouettes_to_map(seq.silhouettes, tuple(fg.shape[-2:]))[:, 0].numpy()
        iou = foreground_iou(fg, seq.silhouettes)
    rows["foreground"] = _foreground_overlay(fg[:, 0].numpy() > 0.5, gt)
    for g, maps in enumerate(group_maps(torch.as_tensor(f["humanspace"]).float(), num_groups)):
        rows[f"group {g}\nPCA"] = pca_rgb(maps, fg, basis=bases[g])
    return rows, iou


def group_panel(
    sequences: Sequence[PanelSequence],
    *,
    num_groups: int,
    frames_per_sequence: int = 8,
    title: str | None = None,
) -> Figure:
    """BiggerGait's maps of one or more sequences side by side: input, mask-branch probability, foreground (with
    the ground truth and its IoU when the sequence has silhouettes), then one row per layer group: the PCA
    colours of its HumanSpace maps over the foreground, fitted per group over every frame of every sequence (so
    a colour means the same feature across frames and people, and the rows show what each depth adds).
    """
    if not sequences:
        raise VizInputError("group_panel needs at least one sequence")
    for seq in sequences:
        _check(seq)
    per_group = [group_maps(torch.as_tensor(s.features["humanspace"]).float(), num_groups) for s in sequences]
    masks = torch.cat([torch.as_tensor(s.features["foreground"]).float() for s in sequences])
    bases = [fit_pca(torch.cat([maps[g] for maps in per_group]), masks) for g in range(num_groups)]
    built = [_rows(seq, bases, num_groups) for seq in sequences]
    picks = [frame_indices(seq.frames.shape[0], frames_per_sequence) for seq in sequences]
    names = list(built[0][0])
    n_cols = sum(len(p) for p in picks)
    fig = Figure(figsize=(1.2 + 1.05 * n_cols, 1.6 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), n_cols, squeeze=False)
    col = 0
    for seq, (images, iou), pick in zip(sequences, built, picks, strict=True):
        for j, t in enumerate(pick):
            for r, name in enumerate(names):
                _show(axes[r, col], images[name][t])
            label = seq.label if iou is None else f"{seq.label}\nIoU {100 * iou:.0f}%"
            axes[0, col].set_title(label if j == 0 else f"t={t}", fontsize=8)
            col += 1
    for r, name in enumerate(names):
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(title or f"BiggerGait maps: mask branch and {num_groups} layer groups", fontsize=9)
    return fig
