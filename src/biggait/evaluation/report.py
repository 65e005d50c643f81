"""Evaluation outputs: a markdown table, results.json and rank-1 heatmaps (pure figure builders)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

# Figures are built with the object API (no pyplot), so no GUI backend is ever chosen or needed.
from biggait.evaluation.protocols import EvaluationResult
from biggait.io import atomic_write_bytes, save_png

__all__ = ["partial_banner", "rank1_heatmap", "results_markdown", "save_figure", "write_results_json"]


def write_results_json(
    path: str | Path, metrics: dict[str, float], extra: dict[str, Any] | None = None
) -> None:
    """results.json = {"metrics": {...}, **extra}, written atomically."""
    payload = {**(extra or {}), "metrics": {k: float(v) for k, v in metrics.items()}}
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def partial_banner(result: EvaluationResult) -> str:
    """One line saying that (and why) an evaluation covers only part of the test set; "" when it is whole."""
    if not result.partial:
        return ""
    unscored = f"; not scored: {', '.join(result.unscored)}" if result.unscored else ""
    return f"PARTIAL EVALUATION ({'; '.join(result.partial)}{unscored}): not comparable with full results"


def results_markdown(
    metrics: dict[str, float], protocol: str, *, counts: dict[str, Any] | None = None
) -> str:
    """A markdown table: conditions as columns; rows rank-1 (and rank-5 / include / ReID when present), then
    the probe, gallery and identity counts of each condition when `counts` (`EvaluationResult.counts`) is given."""
    per_condition = (counts or {}).get("conditions", {})
    conditions = [k for k in metrics if "/" not in k] or list(per_condition)
    rows: list[tuple[str, list[str]]] = [("rank-1 (%)", conditions)]
    if any(k.startswith("rank5/") for k in metrics):
        rows.append(("rank-5 (%)", [f"rank5/{c}" for c in conditions]))
    if any(k.startswith("include/") for k in metrics):
        rows.append(("rank-1 incl. same view", [f"include/{c}" for c in conditions]))
    for name in ("rank1", "mAP", "mINP"):
        if any(k.endswith(f"/{name}") and k.startswith("reid/") for k in metrics):
            rows.append((f"ReID {name}", [f"reid/{c}/{name}" for c in conditions]))
    scored = [metrics[c] for c in conditions if c in metrics]
    mean = float(np.mean(scored)) if scored else float("nan")
    header = f"| {protocol} | " + " | ".join(conditions) + " | mean |"
    lines = [header, "|" + "---|" * (len(conditions) + 2)]
    for label, keys in rows:
        values = [metrics.get(k) for k in keys]
        cells = ["-" if v is None else f"{v:.2f}" for v in values]
        row_mean = f"{mean:.2f}" if label == "rank-1 (%)" else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {row_mean} |")
    for name in ("probes", "gallery", "identities") if per_condition else ():
        cells = [str(per_condition.get(c, {}).get(name, "-")) for c in conditions]
        lines.append(f"| {name} | " + " | ".join(cells) + " | |")
    if counts:
        expected = counts.get("sequences_expected")
        of = f" of {expected} in the test set" if expected is not None else ""
        lines.append(
            f"\n{counts['sequences']} sequences{of} evaluated ({counts['identities']} identities), "
            f"{counts.get('sequences_skipped', 0)} skipped as bad data"
        )
    return "\n".join(lines)


def rank1_heatmap(
    matrix: np.ndarray, probe_views: Sequence[str], gallery_views: Sequence[str], *, title: str
) -> Figure:
    """View-by-view rank-1 heatmap (probe views as rows), annotated; the diagonal is framed (excluded)."""
    matrix = np.asarray(matrix, dtype=float)
    size = max(3.0, 0.55 * len(gallery_views) + 1.5)
    fig = Figure(figsize=(size + 1.0, max(2.5, 0.5 * len(probe_views) + 1.5)))
    ax = fig.subplots()
    im = ax.imshow(matrix, vmin=0, vmax=100, cmap="viridis")
    ax.set_xticks(range(len(gallery_views)), labels=list(gallery_views), rotation=45, ha="right")
    ax.set_yticks(range(len(probe_views)), labels=list(probe_views))
    ax.set_xlabel("gallery view")
    ax.set_ylabel("probe view")
    ax.set_title(title)
    small = len(gallery_views) <= 14
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if small and np.isfinite(matrix[i, j]):
                color = "white" if matrix[i, j] < 60 else "black"
                ax.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", fontsize=7, color=color)
            if probe_views[i] == gallery_views[j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 110) -> None:
    """Render `fig` to PNG atomically (`biggait.io.save_png` at the heatmaps' resolution)."""
    save_png(fig, path, dpi=dpi)
