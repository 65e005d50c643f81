"""Rank gallery *identities* for every probe, and score the ranking as the evaluator does.

An identity may hold several templates (views, outfits, days). Its distance to a probe is the distance of its
nearest template ("nearest template" rule): a person is recognised when the walk matches any one of the
conditions they were enrolled under, and an identity with many varied templates is not penalised for the ones
that show other conditions (a mean over templates would be). The gallery is read in chunks and only the running
k nearest distinct identities are kept, so memory is bounded whatever the gallery's size; the result is exact
(an identity among the k nearest has its nearest template in some chunk, where fewer than k identities beat it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from biggait.errors import ConfigError
from biggait.evaluation.distance import part_euclidean
from biggait.gallery import (
    Gallery,
    GalleryError,
    iter_gallery_embeddings,
    read_gallery_model,
    read_gallery_strings,
)

__all__ = ["Ranking", "gallery_strings", "rank_identities", "score"]

_BUDGET = 1 << 24  # distance-matrix elements per gallery chunk ([probes, rows] float32): 64 MiB
_CHUNK_BYTES = 64 << 20  # gallery embeddings read per chunk
_INF = float("inf")


@dataclass
class Ranking:
    """Per probe, the nearest distinct gallery identities: names, distances (nearest template) and the label of
    that template, nearest first; `enrolled` is every identity of the gallery."""

    probes: list[str]
    probe_identities: list[str]
    identities: list[list[str]]
    distances: list[list[float]]
    templates: list[list[str]]
    enrolled: set[str]


def gallery_strings(gallery: Gallery | str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, identities) of a gallery as unicode arrays (a million are not held as Python strings)."""
    if isinstance(gallery, Gallery):
        return np.asarray(gallery.labels, dtype=np.str_), np.asarray(gallery.identities, dtype=np.str_)
    fields = read_gallery_strings(gallery, "labels", "identities")
    return fields["labels"], fields["identities"]


def distance_chunks(
    gallery: Gallery | str | Path, probes: Gallery, budget: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, [P, r] part-wise distances) over the gallery in chunks of at most `budget` distances, after
    checking that one model embedded both; the gallery file is read chunk by chunk, never whole."""
    model = gallery.model if isinstance(gallery, Gallery) else read_gallery_model(gallery)
    if model != probes.model:
        raise GalleryError(
            f"the gallery was embedded by model {model[:12]} and the probes by model {probes.model[:12]}: "
            "embeddings of different models cannot be compared; embed both with one model"
        )
    q = torch.from_numpy(probes.embeddings)
    row_bytes = 4 * int(np.prod(probes.embeddings.shape[1:]))
    rows = max(1, min(_CHUNK_BYTES // row_bytes, budget // max(1, len(probes))))
    if isinstance(gallery, Gallery):
        source = ((s, gallery.embeddings[s : s + rows]) for s in range(0, len(gallery), rows))
    else:
        source = iter_gallery_embeddings(gallery, rows=rows)
    for start, chunk in source:
        if tuple(chunk.shape[1:]) != tuple(q.shape[1:]):
            raise GalleryError(
                f"gallery embeddings {tuple(chunk.shape[1:])} and probes {tuple(q.shape[1:])} differ"
            )
        yield start, part_euclidean(q, torch.as_tensor(chunk))


def _distinct_topk(
    d: torch.Tensor, rows: torch.Tensor, codes: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[P, n] distances, gallery rows and identity codes -> the k nearest *distinct* identities per probe
    (distance of the identity's nearest row, that row, the code), inf-padded where fewer exist."""
    order = torch.argsort(d, dim=1, stable=True)
    d, rows, codes = d.gather(1, order), rows.gather(1, order), codes.gather(1, order)
    group = torch.argsort(codes, dim=1, stable=True)  # by identity, nearest first inside each
    grouped = codes.gather(1, group)
    first = torch.ones_like(grouped, dtype=torch.bool)
    first[:, 1:] = grouped[:, 1:] != grouped[:, :-1]
    best = d.gather(1, group).masked_fill(~first, _INF)
    best, pos = best.topk(min(k, best.shape[1]), dim=1, largest=False, sorted=True)
    idx = group.gather(1, pos)
    return best, rows.gather(1, idx), codes.gather(1, idx)


def rank_identities(
    gallery: Gallery | str | Path, probes: Gallery, *, top_k: int = 5, budget: int = _BUDGET
) -> Ranking:
    """The `top_k` nearest distinct identities of every probe (nearest-template rule, the evaluation's
    part-wise distance); `gallery` is a `Gallery` or the path of a gallery file, read in chunks."""
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    labels, identities = gallery_strings(gallery)
    names, codes = np.unique(identities, return_inverse=True)
    codes_t = torch.from_numpy(codes.astype(np.int64))
    p = len(probes)
    best_d, best_r, best_c = (
        torch.empty(p, 0),
        torch.empty(p, 0, dtype=torch.int64),
        torch.empty(p, 0, dtype=torch.int64),
    )
    seen = 0
    for start, d in distance_chunks(gallery, probes, budget):
        stop = start + d.shape[1]
        if stop > len(codes):
            raise GalleryError(f"gallery {gallery}: more embeddings than the {len(codes)} labels")
        rows = torch.arange(start, stop).expand(p, -1)
        best_d, best_r, best_c = _distinct_topk(
            torch.cat([best_d, d], 1),
            torch.cat([best_r, rows], 1),
            torch.cat([best_c, codes_t[rows]], 1),
            top_k,
        )
        seen = stop
    if seen == 0:
        raise GalleryError("the gallery is empty")
    if seen != len(codes):
        raise GalleryError(f"gallery {gallery}: {seen} embeddings but {len(codes)} labels")
    finite = torch.isfinite(best_d)
    return Ranking(
        probes=list(probes.labels),
        probe_identities=list(probes.identities),
        identities=[
            [str(names[c]) for c, ok in zip(cs, f) if ok] for cs, f in zip(best_c.tolist(), finite.tolist())
        ],
        distances=[[x for x, ok in zip(ds, f) if ok] for ds, f in zip(best_d.tolist(), finite.tolist())],
        templates=[
            [str(labels[r]) for r, ok in zip(rs, f) if ok] for rs, f in zip(best_r.tolist(), finite.tolist())
        ],
        enrolled={str(n) for n in names},
    )


def _positives(
    gallery: Gallery | str | Path,
    probes: Gallery,
    p_codes: torch.Tensor,
    g_codes: torch.Tensor,
    ranks: int,
    budget: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First pass: the distances of every (probe, same-identity entry) pair, and the codes of the `ranks` nearest
    entries of every probe."""
    pairs_p, pairs_d = [], []
    top_d, top_c = torch.empty(len(probes), 0), torch.empty(len(probes), 0, dtype=torch.int64)
    for start, d in distance_chunks(gallery, probes, budget):
        c = g_codes[start : start + d.shape[1]]
        pos = p_codes[:, None] == c[None]
        pi, gi = pos.nonzero(as_tuple=True)
        pairs_p.append(pi)
        pairs_d.append(d[pi, gi])
        top_d, order = torch.cat([top_d, d], 1).topk(
            min(ranks, top_d.shape[1] + d.shape[1]), dim=1, largest=False
        )
        top_c = torch.cat([top_c, c.expand(len(probes), -1)], 1).gather(1, order)
    return torch.cat(pairs_p), torch.cat(pairs_d), top_c


def score(
    gallery: Gallery | str | Path, probes: Gallery, *, ranks: int = 5, budget: int = _BUDGET
) -> dict[str, float]:
    """Closed-set scores of the probes whose identity is enrolled, as the evaluator computes them over gallery
    *entries* (biggait.evaluation: rank-k = the probe's identity among its k nearest entries; mAP over every
    entry of that identity, OpenGait's `compute_ACC_mAP`), in percent; plus `probes` and `unknown` counts."""
    _, g_ident = gallery_strings(gallery)
    names, g_codes = np.unique(g_ident, return_inverse=True)
    lookup = {str(n): i for i, n in enumerate(names)}
    p_codes = torch.tensor([lookup.get(i, -1) for i in probes.identities], dtype=torch.int64)
    g_codes_t = torch.from_numpy(g_codes.astype(np.int64))
    pairs_p, pairs_d, top_c = _positives(gallery, probes, p_codes, g_codes_t, ranks, budget)
    known = p_codes >= 0
    if not known.any():
        raise ConfigError("no probe identity is enrolled in the gallery: there is nothing to score")
    order = torch.argsort(pairs_d, stable=True)
    order = order[torch.argsort(pairs_p[order], stable=True)]  # by probe, nearest first
    pairs_p, pairs_d = pairs_p[order], pairs_d[order]
    counts = torch.bincount(pairs_p, minlength=len(probes))
    width = int(counts.max())
    offsets = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(pairs_p)) - offsets[pairs_p]
    padded = torch.full((len(probes), width), _INF)
    padded[pairs_p, slot] = pairs_d
    below = torch.zeros(len(probes), width, dtype=torch.int64)  # entries of other identities nearer
    for start, d in distance_chunks(gallery, probes, budget):
        c = g_codes_t[start : start + d.shape[1]]
        negatives = d.masked_fill(p_codes[:, None] == c[None], _INF).sort(dim=1).values.contiguous()
        below += torch.searchsorted(negatives, padded.contiguous())
    position = torch.arange(1, width + 1, dtype=torch.float64).expand(len(probes), -1)
    precision = (position / (position + below)).masked_fill(~torch.isfinite(padded), 0.0)
    ap = precision.sum(1) / counts.clamp(min=1)
    hits = (top_c == p_codes[:, None]).cumsum(1) > 0
    out = {
        f"rank{k}": 100 * float(hits[known, min(k, hits.shape[1]) - 1].double().mean()) for k in (1, ranks)
    }
    out.update(
        mAP=100 * float(ap[known].mean()), probes=float(int(known.sum())), unknown=float(int((~known).sum()))
    )
    return out
