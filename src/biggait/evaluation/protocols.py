"""The gait evaluation protocols of OpenGait's evaluator (OpenGait `opengait/evaluation/evaluator.py`), vectorised and memory-bounded."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from biggait.errors import BiggaitError
from biggait.evaluation.distance import iter_distance_rows

__all__ = ["PROTOCOLS", "EvaluationResult", "Protocol", "ProtocolError", "evaluate", "evaluate_detailed"]


class ProtocolError(BiggaitError, ValueError):
    """Evaluation inputs that a protocol cannot score (unknown protocol, empty condition, bad shapes)."""


@dataclass(frozen=True)
class Protocol:
    """Probe/gallery conditions of one dataset's test protocol."""

    name: str
    conditions: dict[
        str, tuple[tuple[str, ...], tuple[str, ...]]
    ]  # condition -> (probe types, gallery types)
    substring_types: bool = False  # SUSTech1K matches types by substring (OpenGait `evaluate_indoor_dataset`)
    view_prefix: bool = False  # CCPG: view = folder name before the first "_" (OpenGait `evaluate_CCPG`)
    ranks: int = 1  # cumulative ranks reported (SUSTech1K: rank-1 and rank-5)
    reid: bool = False  # CCPG also reports the ReID protocol (OpenGait `evaluate_CCPG`)


# The CCPG types the protocol reads (U = upper outfit state, D = lower, _BG = carrying a bag), in the order
# the synthetic world and the demo walkers enumerate them (their seeds depend on it): the one copy.
CCPG_TYPES = ("U0_D0", "U0_D0_BG", "U1_D0", "U1_D1", "U2_D2", "U3_D3", "U0_D3")

_CCPG = Protocol(
    name="ccpg",
    conditions={
        "CL": (("U0_D0_BG", "U0_D0"), ("U1_D1", "U2_D2", "U3_D3")),
        "UP": (("U3_D3",), ("U0_D3",)),
        "DN": (("U1_D0",), ("U1_D1",)),
        "BG": (("U0_D0_BG",), ("U0_D0",)),
    },
    view_prefix=True,
    reid=True,
)
_CASIAB_GALLERY = ("nm-01", "nm-02", "nm-03", "nm-04")
_SUSTECH_GALLERY = ("00-nm",)
PROTOCOLS: dict[str, Protocol] = {
    "ccpg": _CCPG,
    "synthetic": _CCPG,  # the synthetic world follows CCPG's naming and protocol
    "casiab": Protocol(
        name="casiab",
        conditions={
            "NM": (("nm-05", "nm-06"), _CASIAB_GALLERY),
            "BG": (("bg-01", "bg-02"), _CASIAB_GALLERY),
            "CL": (("cl-01", "cl-02"), _CASIAB_GALLERY),
        },
    ),
    "sustech1k": Protocol(
        name="sustech1k",
        conditions={
            "Normal": (("01-nm",), _SUSTECH_GALLERY),
            "Bag": (("bg",), _SUSTECH_GALLERY),
            "Clothing": (("cl",), _SUSTECH_GALLERY),
            "Carrying": (("cr",), _SUSTECH_GALLERY),
            "Umbrella": (("ub",), _SUSTECH_GALLERY),
            "Uniform": (("uf",), _SUSTECH_GALLERY),
            "Occlusion": (("oc",), _SUSTECH_GALLERY),
            "Night": (("nt",), _SUSTECH_GALLERY),
            "Overall": (("01", "02", "03", "04"), _SUSTECH_GALLERY),
        },
        substring_types=True,
        ranks=5,
    ),
}


@dataclass
class EvaluationResult:
    """Flat metrics (percent), the per-condition rank-1 view-by-view matrices and the counts behind them."""

    metrics: dict[str, float]
    # condition -> (probe views, gallery views, rank-1 matrix in percent, NaN where a cell is empty)
    matrices: dict[str, tuple[list[str], list[str], np.ndarray]] = field(default_factory=dict)
    # what the numbers were computed on: {"sequences", "identities", "conditions": {c: {"probes", "gallery",
    # "identities"}}}, plus "sequences_expected" / "sequences_skipped" when the caller knows them
    counts: dict[str, Any] = field(default_factory=dict)
    # why the evaluation does not cover the whole test set (empty when it does)
    partial: list[str] = field(default_factory=list)
    # conditions that could not be scored on a partial evaluation (empty probe or gallery set, one view)
    unscored: list[str] = field(default_factory=list)


def _type_mask(types: np.ndarray, wanted: Sequence[str], substring: bool) -> np.ndarray:
    if substring:
        return np.any([np.char.find(types, w) >= 0 for w in wanted], axis=0)
    return np.isin(types, list(wanted))


def _de_diag(acc: np.ndarray, filled: np.ndarray) -> float:
    # OpenGait's de_diag: per probe view (row_sum - diag) / (V - 1), then the mean over probe views.
    # Empty cells (no probe or no gallery of that view) are left out; with none empty this is exact.
    off = filled & ~np.eye(acc.shape[0], dtype=bool)
    rows = [acc[i, off[i]].mean() for i in range(acc.shape[0]) if off[i].any()]
    return float(np.mean(rows))


def _gait_protocol(
    feats: torch.Tensor,
    subj: np.ndarray,
    views: np.ndarray,
    probe: np.ndarray,
    gallery: np.ndarray,
    ranks: int,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Rank-k accuracy per (probe view, gallery view): [V, V, ranks] in percent, and the filled-cell mask."""
    view_list = sorted(set(views.tolist()))
    v_index = {v: i for i, v in enumerate(view_list)}
    V = len(view_list)
    p_idx, g_idx = np.flatnonzero(probe), np.flatnonzero(gallery)
    p_view = np.array([v_index[v] for v in views[p_idx]])
    g_view = np.array([v_index[v] for v in views[g_idx]])
    _, codes = np.unique(subj, return_inverse=True)
    p_subj = torch.as_tensor(codes[p_idx], device=feats.device)
    g_subj = torch.as_tensor(codes[g_idx], device=feats.device)
    hits = np.zeros((V, V, ranks))
    totals = np.zeros(V)
    np.add.at(totals, p_view, 1)
    g_counts = np.bincount(g_view, minlength=V)
    g_view_t = torch.as_tensor(g_view, device=feats.device)
    for sl, dist in iter_distance_rows(feats[p_idx], feats[g_idx]):
        pv = p_view[sl]
        for gv in range(V):
            if g_counts[gv] == 0:
                continue
            k = min(ranks, int(g_counts[gv]))
            masked = dist.masked_fill(g_view_t != gv, float("inf"))
            nearest = masked.topk(k, dim=1, largest=False).indices  # [q, k]
            correct = (g_subj[nearest] == p_subj[sl, None]).cpu().numpy()
            found = np.cumsum(correct, axis=1) > 0  # hit within the first r+1
            if k < ranks:
                found = np.concatenate([found, np.repeat(found[:, -1:], ranks - k, axis=1)], axis=1)
            np.add.at(hits[:, gv], pv, found)
    filled = (totals[:, None] > 0) & (g_counts[None, :] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.round(hits * 100 / totals[:, None, None], 2)  # OpenGait rounds every cell to 2 decimals
    acc[~filled] = np.nan
    return view_list, acc, filled


def _reid_protocol(
    feats: torch.Tensor, subj: np.ndarray, views: np.ndarray, probe: np.ndarray, gallery: np.ndarray
) -> dict[str, float]:
    """OpenGait's evaluate_many: gallery items of the query's id AND view removed; rank-1, mAP, mINP."""
    p_idx, g_idx = np.flatnonzero(probe), np.flatnonzero(gallery)
    _, s_codes = np.unique(subj, return_inverse=True)
    _, v_codes = np.unique(views, return_inverse=True)
    dev = feats.device
    g_subj = torch.as_tensor(s_codes[g_idx], device=dev)
    g_view = torch.as_tensor(v_codes[g_idx], device=dev)
    rank1, ap, inp = [], [], []
    for sl, dist in iter_distance_rows(feats[p_idx], feats[g_idx]):
        q_subj = torch.as_tensor(s_codes[p_idx[sl]], device=dev)[:, None]
        q_view = torch.as_tensor(v_codes[p_idx[sl]], device=dev)[:, None]
        order = dist.argsort(dim=1)
        match = g_subj[order] == q_subj
        keep = ~(match & (g_view[order] == q_view))
        rel = (match & keep).double()
        # 1-based rank among the kept gallery items (clamped: removed leading items would give 0/0)
        kept_rank = keep.double().cumsum(1).clamp(min=1)
        n_rel = rel.sum(1)
        valid = n_rel > 0  # queries without any match are skipped
        cum = rel.cumsum(1)
        first = torch.where(rel > 0, kept_rank, torch.full_like(kept_rank, float("inf"))).min(1).values
        last = (rel * kept_rank).max(1).values
        rank1.append((first[valid] == 1).double())
        ap.append(((cum / kept_rank) * rel).sum(1)[valid] / n_rel[valid])
        inp.append(n_rel[valid] / last[valid])
    r1, mean_ap, minp = (torch.cat(v) for v in (rank1, ap, inp))
    if r1.numel() == 0:
        raise ProtocolError("ReID protocol: no query has a valid match in the gallery")
    return {
        "rank1": float(r1.mean()) * 100,
        "mAP": float(mean_ap.mean()) * 100,
        "mINP": float(minp.mean()) * 100,
    }


@dataclass
class _Gallery:
    """The evaluated sequences in the canonical order: embeddings [N, C, P] and their labels as arrays."""

    feats: torch.Tensor
    subjects: np.ndarray
    types: np.ndarray
    views: np.ndarray  # the protocol's view names (CCPG: the folder name before the first "_")


def _checked_embeddings(
    embeddings: torch.Tensor | np.ndarray, labels: Sequence[str], types: Sequence[str], views: Sequence[str]
) -> torch.Tensor:
    """The embeddings as a tensor, after checking their shape, their finiteness and the label counts."""
    feats = torch.as_tensor(embeddings)
    n = feats.shape[0] if feats.dim() else 0
    if feats.dim() != 3:
        raise ProtocolError(f"embeddings must be [N, C, parts], got shape {tuple(feats.shape)}")
    if not (len(labels) == len(types) == len(views) == n):
        raise ProtocolError(
            f"lengths differ: {n} embeddings, {len(labels)} labels, {len(types)} types, {len(views)} views"
        )
    if not torch.isfinite(feats).all():
        raise ProtocolError("embeddings contain NaN or inf: the model diverged or the input is corrupt")
    return feats


def _canonical_order(
    spec: Protocol, feats: torch.Tensor, labels: Sequence[str], types: Sequence[str], views: Sequence[str]
) -> _Gallery:
    """Sort by (subject, type, view): ties between equal distances then break the same way whatever order the
    sequences arrived in (data-loader workers, ranks), so results are reproducible."""
    n = feats.shape[0]
    order = sorted(range(n), key=lambda i: (str(labels[i]), str(types[i]), str(views[i])))
    return _Gallery(
        feats=feats[torch.as_tensor(order, dtype=torch.long)] if n else feats,
        subjects=np.asarray([str(labels[i]) for i in order]),
        types=np.asarray([str(types[i]) for i in order]),
        views=np.asarray([str(views[i]).split("_")[0] if spec.view_prefix else str(views[i]) for i in order]),
    )


def _unscorable(
    spec: Protocol, condition: str, data: _Gallery, probe: np.ndarray, gallery: np.ndarray
) -> ProtocolError:
    """The error for a condition whose probe or gallery set is empty (on a whole test set)."""
    which = "probe" if not probe.any() else "gallery"
    probe_types, gallery_types = spec.conditions[condition]
    wanted = probe_types if which == "probe" else gallery_types
    return ProtocolError(
        f"{spec.name} condition {condition}: the {which} set is empty (no sequence of type "
        f"{' / '.join(wanted)} among the {len(data.subjects)} evaluated); types present: "
        f"{sorted(set(data.types))[:12]}"
    )


def _score_condition(
    spec: Protocol,
    condition: str,
    data: _Gallery,
    probe: np.ndarray,
    gallery: np.ndarray,
    result: EvaluationResult,
) -> None:
    """Rank-1 (and rank-5, ReID) of one condition into `result`; on a partial evaluation a condition that
    cannot be scored is listed in `result.unscored` instead of raising."""
    partial = bool(result.partial)
    if not probe.any() or not gallery.any():
        if partial:
            result.unscored.append(condition)
            return
        raise _unscorable(spec, condition, data, probe, gallery)
    view_list, acc, filled = _gait_protocol(data.feats, data.subjects, data.views, probe, gallery, spec.ranks)
    if len(view_list) < 2:
        if partial:
            result.unscored.append(condition)
            return
        raise ProtocolError(f"{spec.name}: identical-view exclusion needs at least 2 views, got {view_list}")
    if not filled.all():
        warnings.warn(
            f"{spec.name} {condition}: {int((~filled).sum())} of {filled.size} view pairs have no probe or "
            "gallery sequence and are left out of the average",
            stacklevel=3,
        )
    result.matrices[condition] = (view_list, view_list, acc[:, :, 0])
    result.metrics[condition] = _de_diag(acc[:, :, 0], filled)
    if spec.ranks >= 5:
        result.metrics[f"rank5/{condition}"] = _de_diag(acc[:, :, 4], filled)
    if spec.reid:
        result.metrics[f"include/{condition}"] = float(np.nanmean(acc[:, :, 0]))
        try:
            reid = _reid_protocol(data.feats, data.subjects, data.views, probe, gallery)
        except ProtocolError:
            if not partial:
                raise
            reid = {}
        for key, value in reid.items():
            result.metrics[f"reid/{condition}/{key}"] = value


def evaluate_detailed(
    protocol: str,
    embeddings: torch.Tensor | np.ndarray,
    labels: Sequence[str],
    types: Sequence[str],
    views: Sequence[str],
    *,
    partial: Sequence[str] = (),
) -> EvaluationResult:
    """Score embeddings [N, C, P] with `protocol`; metrics are percentages, matrices are rank-1 per view pair.

    `partial` lists why the embeddings are not the whole test set (e.g. "limit_test_batches=10"); a condition
    that then has no probe or gallery sequence (or one view) is left unscored and named in `unscored`,
    where on a whole test set it is an error.
    """
    if protocol not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
    spec = replace(PROTOCOLS[protocol], name=protocol)  # errors name the protocol asked for
    data = _canonical_order(spec, _checked_embeddings(embeddings, labels, types, views), labels, types, views)
    result = EvaluationResult(metrics={}, partial=list(partial))
    result.counts = {
        "sequences": len(data.subjects),
        "identities": len(set(data.subjects.tolist())),
        "conditions": {},
    }
    for condition, (probe_types, gallery_types) in spec.conditions.items():
        probe = _type_mask(data.types, probe_types, spec.substring_types)
        gallery = _type_mask(data.types, gallery_types, spec.substring_types)
        result.counts["conditions"][condition] = {
            "probes": int(probe.sum()),
            "gallery": int(gallery.sum()),
            "identities": len(set(data.subjects[probe].tolist())),
        }
        _score_condition(spec, condition, data, probe, gallery, result)
    return result


def evaluate(
    protocol: str,
    embeddings: torch.Tensor | np.ndarray,
    labels: Sequence[str],
    types: Sequence[str],
    views: Sequence[str],
) -> dict[str, float]:
    """Flat dict of percentages, e.g. {"CL": .., "UP": .., "reid/CL/mAP": ..} for CCPG (OpenGait `opengait/evaluation/evaluator.py`)."""
    return evaluate_detailed(protocol, embeddings, labels, types, views).metrics
