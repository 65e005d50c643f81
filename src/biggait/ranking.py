"""Rank gallery *identities* for every probe, and score the ranking as the evaluator does.

An identity may hold several templates (views, outfits, days). Its distance to a probe is the distance of its
nearest template ("nearest template" rule): a person is recognised when the walk matches any one of the
conditions they were enrolled under, and an identity with many varied templates is not penalised for the ones
that show other conditions (a mean over templates would be). The gallery is read in chunks and only the running
k nearest distinct identities are kept, so memory is bounded whatever the gallery's size; the result is exact
(an identity among the k nearest has its nearest template in some chunk, where fewer than k identities beat it).

A gallery is a `Gallery`, the path of a gallery `.npz`, or a memory-mapped gallery folder (`MappedGallery`,
biggait.index): streamed exactly like a file, or, with `candidates`, searched approximately: its FAISS index
proposes `candidates` rows per probe, which are re-ranked by the exact part-wise distance. When those rows hold
fewer than k distinct identities, the search is widened (twice the candidates; twice the cells searched once
the searched cells run out) until k are found or the whole gallery was searched: never silently fewer.
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
    GalleryRows,
    iter_gallery_embeddings,
    read_gallery_model,
    read_gallery_rows,
)
from biggait.index import MappedGallery, open_index

__all__ = ["Ranking", "rank_identities", "score"]

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


def _file_identities(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(identity names, int32 code of every row) of a gallery file, read chunk by chunk: 4 bytes per template
    and the names of the people, never the templates' strings."""
    rows = GalleryRows(path)
    names = rows.identity_names()
    codes = [np.searchsorted(names, c).astype(np.int32) for c in rows.chunks("identities")]
    return names, np.concatenate(codes) if codes else np.empty(0, np.int32)


def _labels_at(gallery: AnyGallery, labels: np.ndarray | None, rows: set[int]) -> dict[int, str]:
    """The template labels of some gallery rows: from `labels`, or streamed from the gallery file."""
    if labels is not None:
        return {r: str(labels[r]) for r in rows}
    return read_gallery_rows(gallery, "labels", rows)


AnyGallery = Gallery | MappedGallery | str | Path


def _check_model(gallery: AnyGallery, probes: Gallery) -> None:
    model = gallery.model if isinstance(gallery, (Gallery, MappedGallery)) else read_gallery_model(gallery)
    if model != probes.model:
        raise GalleryError(
            f"the gallery was embedded by model {model[:12]} and the probes by model {probes.model[:12]}: "
            "embeddings of different models cannot be compared; embed both with one model"
        )


def distance_chunks(gallery: AnyGallery, probes: Gallery, budget: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, [P, r] part-wise distances) over the gallery in chunks of at most `budget` distances, after
    checking that one model embedded both; the gallery file or memory map is read chunk by chunk, never whole."""
    _check_model(gallery, probes)
    q = torch.from_numpy(probes.embeddings)
    row_bytes = 4 * int(np.prod(probes.embeddings.shape[1:]))
    rows = max(1, min(_CHUNK_BYTES // row_bytes, budget // max(1, len(probes))))
    if isinstance(gallery, Gallery):
        source = ((s, gallery.embeddings[s : s + rows]) for s in range(0, len(gallery), rows))
    elif isinstance(gallery, MappedGallery):
        source = gallery.chunks(rows)
    else:
        source = iter_gallery_embeddings(gallery, rows=rows)
    for start, chunk in source:
        if tuple(chunk.shape[1:]) != tuple(q.shape[1:]):
            raise GalleryError(
                f"gallery embeddings {tuple(chunk.shape[1:])} and probes {tuple(q.shape[1:])} differ"
            )
        yield start, part_euclidean(q, torch.as_tensor(chunk))


def _templates(gallery: AnyGallery) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(template labels, identity names, identity code of every row): a mapped folder's own arrays (memory
    maps), a `Gallery`'s strings, or for a gallery file the codes alone (labels None: `_labels_at` streams the
    few that a ranking names)."""
    if isinstance(gallery, MappedGallery):
        if gallery.labels is None:
            raise GalleryError(
                f"mapped gallery {gallery.folder} has no labels.npy (written before identify could read folders): "
                "write it again with `biggait index GALLERY.npz FOLDER`"
            )
        return gallery.labels, np.asarray(gallery.names, np.str_), np.asarray(gallery.codes)
    if isinstance(gallery, Gallery):
        names, codes = np.unique(np.asarray(gallery.identities, dtype=np.str_), return_inverse=True)
        return np.asarray(gallery.labels, dtype=np.str_), names, codes
    return None, *_file_identities(gallery)


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


def _exact_topk(
    gallery: AnyGallery, probes: Gallery, codes: np.ndarray, top_k: int, budget: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k nearest distinct identities of every probe over the whole gallery, streamed in chunks."""
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
    return best_d, best_r, best_c


def _rerank(
    gallery: MappedGallery, probe: np.ndarray, rows: np.ndarray, top_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One probe's candidate rows re-ranked by the exact part-wise distance: its k nearest distinct identities."""
    rows = np.unique(rows[rows >= 0])
    emb = gallery.rows(rows)  # checked finite
    d = part_euclidean(torch.from_numpy(probe[None]), torch.from_numpy(emb))
    rows_t = torch.from_numpy(rows.astype(np.int64))[None]
    codes = torch.from_numpy(np.asarray(gallery.codes[rows], np.int64))[None]
    return _distinct_topk(d, rows_t, codes, top_k)


def _approximate_topk(
    gallery: MappedGallery, probes: Gallery, top_k: int, candidates: int, nprobe: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k nearest distinct identities among the index's candidates, re-ranked exactly; a probe whose
    candidates hold fewer is searched again wider (module docstring)."""
    _check_model(gallery, probes)
    if tuple(gallery.embeddings.shape[1:]) != tuple(probes.embeddings.shape[1:]):
        raise GalleryError(f"gallery embeddings {gallery.embeddings.shape[1:]} and probes "
                           f"{probes.embeddings.shape[1:]} differ")  # fmt: skip
    index, want = open_index(gallery), min(top_k, len(gallery.names))
    q = np.ascontiguousarray(probes.embeddings, np.float32)
    flat, base = q.reshape(len(q), -1), min(nprobe, index.nlist)
    index.nprobe = base
    cand = index.search(flat, min(candidates, len(gallery)))[1]
    out_d, (out_r, out_c) = (
        torch.full((len(q), top_k), _INF),
        torch.zeros((2, len(q), top_k), dtype=torch.int64),
    )
    for p in range(len(q)):
        rows, c, n = cand[p], min(candidates, len(gallery)), base
        found = _rerank(gallery, q[p], rows, top_k)
        while int(torch.isfinite(found[0]).sum()) < want:
            exhausted = int((rows >= 0).sum()) < c  # the searched cells hold fewer rows: search more cells
            wider = (c, min(2 * n, index.nlist)) if exhausted else (min(2 * c, len(gallery)), n)
            if wider == (c, n):
                break  # the whole gallery was searched
            (c, n), index.nprobe = wider, wider[1]
            rows = index.search(flat[p : p + 1], c)[1][0]
            found = _rerank(gallery, q[p], rows, top_k)
        index.nprobe = base
        k = found[0].shape[1]
        out_d[p, :k], out_r[p, :k], out_c[p, :k] = found[0][0], found[1][0], found[2][0]
    return out_d, out_r, out_c


def rank_identities(
    gallery: AnyGallery, probes: Gallery, *, top_k: int = 5, budget: int = _BUDGET,
    candidates: int | None = None, nprobe: int = 16,
) -> Ranking:  # fmt: skip
    """The `top_k` nearest distinct identities of every probe (nearest-template rule, the evaluation's
    part-wise distance); `gallery` is a `Gallery`, the path of a gallery file or a `MappedGallery`, read in
    chunks; with `candidates` (a mapped gallery with its index) the FAISS candidates are re-ranked instead."""
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    labels, names, codes = _templates(gallery)
    if candidates is not None and isinstance(gallery, MappedGallery):
        if candidates < 1 or nprobe < 1:
            raise ConfigError(f"--candidates and --nprobe must be >= 1, got {candidates} and {nprobe}")
        best_d, best_r, best_c = _approximate_topk(gallery, probes, top_k, candidates, nprobe)
    else:
        best_d, best_r, best_c = _exact_topk(gallery, probes, codes, top_k, budget)
    finite = torch.isfinite(best_d)
    labels = _labels_at(gallery, labels, set(best_r[finite].tolist()))
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
    gallery: AnyGallery,
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


def score(gallery: AnyGallery, probes: Gallery, *, ranks: int = 5, budget: int = _BUDGET) -> dict[str, float]:
    """Closed-set scores of the probes whose identity is enrolled, as the evaluator computes them over gallery
    *entries* (biggait.evaluation: rank-k = the probe's identity among its k nearest entries; mAP over every
    entry of that identity, OpenGait's `compute_ACC_mAP`), in percent; plus `probes` and `unknown` counts."""
    _, names, g_codes = _templates(gallery)  # a mapped gallery is scored exactly, streaming its memory map
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
