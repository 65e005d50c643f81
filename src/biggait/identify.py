"""Identify: probes against a gallery with the evaluation's part-wise distance, top-k, optional threshold.

    python -m biggait.identify GALLERY.npz PROBES.npz [--top-k K] [--threshold D] [--json OUT.json]

The gallery is read in row chunks straight from its file and only the running top-k is kept, so memory stays
bounded by the chunk size whatever the gallery's length (bench/bench_identify.py measures it).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from biggait.errors import ConfigError
from biggait.gallery import Gallery, GalleryError, GalleryRows, read_gallery_rows
from biggait.ranking import distance_chunks
from biggait.recognise import main as recognise_main

__all__ = ["check_ranking_options", "format_table", "identify", "main"]

# distance-matrix elements per gallery chunk ([probes, rows] float32): 64 MiB
_BUDGET = 1 << 24


def check_ranking_options(top_k: int, threshold: float | None) -> None:
    """`--top-k` a positive integer, `--threshold` a finite distance >= 0 (NaN or -1 would label every probe
    "unknown" without a word)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"--top-k must be an integer >= 1, got {top_k}")
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise ConfigError(
            f"--threshold must be a finite distance >= 0, got {threshold}: no probe could match"
        )


def identify(
    gallery: Gallery | str | Path,
    probes: Gallery,
    *,
    top_k: int = 5,
    threshold: float | None = None,
    budget: int = _BUDGET,
) -> list[dict[str, Any]]:
    """One entry per probe: `{"probe": label, "matches": [{"label", "identity", "distance"}, ...]}`, nearest
    first. With `threshold`, matches farther than it are dropped: an empty list means "unknown".

    `gallery` is a `Gallery` or the path of a gallery file (read in chunks, never whole). The distance is the
    evaluation's (`biggait.evaluation.distance.part_euclidean`, OpenGait's per-part Euclidean mean).
    """
    check_ranking_options(top_k, threshold)
    if not isinstance(gallery, Gallery):
        GalleryRows(gallery)  # its fields agree in length (headers only)
    best_d = torch.empty(len(probes), 0)
    best_i = torch.empty(len(probes), 0, dtype=torch.int64)
    n_gallery = 0
    for start, d in distance_chunks(gallery, probes, budget):
        n_gallery = start + d.shape[1]
        idx = torch.arange(start, n_gallery).expand(len(probes), -1)
        d, idx = torch.cat([best_d, d], 1), torch.cat([best_i, idx], 1)
        k = min(top_k, d.shape[1])
        best_d, order = d.topk(k, dim=1, largest=False, sorted=True)
        best_i = idx.gather(1, order)
    if n_gallery == 0:
        raise GalleryError("the gallery is empty")
    # labels are read after the ranking, for its rows only: a million of them are never held
    wanted = set(best_i.flatten().tolist())
    if isinstance(gallery, Gallery):
        labels = {i: gallery.labels[i] for i in wanted}
        identities = {i: gallery.identities[i] for i in wanted}
    else:
        labels, identities = (read_gallery_rows(gallery, name, wanted) for name in ("labels", "identities"))
    results = []
    for p, label in enumerate(probes.labels):
        matches = [
            {"label": str(labels[i]), "identity": str(identities[i]), "distance": float(dist)}
            for dist, i in zip(best_d[p].tolist(), best_i[p].tolist())
            if threshold is None or dist <= threshold
        ]
        results.append({"probe": label, "matches": matches})
    return results


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """A readable table: one row per (probe, rank); 'unknown' where the threshold left no match."""
    rows = [("probe", "rank", "identity", "gallery label", "distance")]
    for entry in results:
        if not entry["matches"]:
            rows.append((entry["probe"], "-", "unknown", "-", "-"))
        for rank, m in enumerate(entry["matches"], 1):
            rows.append(
                (
                    entry["probe"] if rank == 1 else "",
                    str(rank),
                    m["identity"],
                    m["label"],
                    f"{m['distance']:.4f}",
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m biggait.identify") -> int:
    """`python -m biggait.identify` is `biggait identify`: distinct people per probe, open-set decisions, a
    summary and --score (biggait.recognise); `identify()` above stays the entry-level ranking."""
    return recognise_main(argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
