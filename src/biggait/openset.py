"""Open-set decisions: name a probe only when its nearest identity is near enough *and* clearly nearer than the
runner-up; otherwise "unknown". Calibration picks the distance threshold D and the margin M on a labelled split
for a target false-accept rate (FAR).

Decision (as GaitGuard's): accept the nearest identity when `d1 <= D` and `d2 - d1 >= M`, where d1, d2 are the
distances of the nearest and the second-nearest *identity* (nearest-template rule, biggait.ranking); with one
identity enrolled d2 is infinite. The margin rejects walks that sit between two enrolled people.

Attempts on a labelled split: a probe whose identity is enrolled is a *genuine* attempt (rejected = a false
reject; accepted under another name = misnamed). Every probe is also an *impostor* attempt: an unenrolled
identity as it is, an enrolled one with its own identity left out of the ranking (as if that person had never
been enrolled), so a split without held-out people still measures false accepts. FAR = accepted impostor
attempts / impostor attempts; FRR = genuine attempts not accepted / genuine attempts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biggait.errors import ConfigError
from biggait.ranking import Ranking

__all__ = [
    "UNKNOWN",
    "Attempts",
    "attempts",
    "calibrate",
    "decide",
    "det_plot",
    "operating_point",
    "validate_threshold",
]

UNKNOWN = "unknown"


def validate_threshold(threshold: float | None, margin: float | None) -> None:
    """A threshold must be a finite distance >= 0 and a margin a finite number >= 0."""
    for name, value in (("--threshold", threshold), ("--margin", margin)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name} must be a finite distance >= 0, got {value}")


def _accept(d1: np.ndarray, d2: np.ndarray, threshold: float | None, margin: float | None) -> np.ndarray:
    ok = np.isfinite(d1)
    if threshold is not None:
        ok &= d1 <= threshold
    if margin is not None:
        ok &= (d2 - d1) >= margin
    return ok


def _nearest_two(distances: list[float]) -> tuple[float, float]:
    return (
        distances[0] if distances else math.inf,
        distances[1] if len(distances) > 1 else math.inf,
    )


def decide(ranking: Ranking, *, threshold: float | None = None, margin: float | None = None) -> list[str]:
    """Per probe: the nearest identity, or "unknown" unless it is within `threshold` and beats the runner-up
    identity by `margin` (None: that test is off; both None: closed set)."""
    validate_threshold(threshold, margin)
    out = []
    for ids, ds in zip(ranking.identities, ranking.distances):
        d1, d2 = _nearest_two(ds)
        ok = bool(_accept(np.array([d1]), np.array([d2]), threshold, margin)[0])
        out.append(ids[0] if ok and ids else UNKNOWN)
    return out


@dataclass
class Attempts:
    """Genuine attempts (d1, d2, nearest identity is right) and impostor attempts (d1, d2) of a labelled split."""

    genuine: np.ndarray  # [n, 3] float64: d1, d2, correct (1.0 / 0.0)
    impostor: np.ndarray  # [m, 2] float64: d1, d2


def attempts(ranking: Ranking) -> Attempts:
    """The genuine and impostor attempts of a ranking with top_k >= 3 (module docstring)."""
    genuine, impostor = [], []
    for truth, ids, ds in zip(ranking.probe_identities, ranking.identities, ranking.distances):
        if truth in ranking.enrolled:
            genuine.append((*_nearest_two(ds), float(bool(ids) and ids[0] == truth)))
        impostor.append(_nearest_two([d for i, d in zip(ids, ds) if i != truth]))
    if not genuine or not impostor:
        raise ConfigError("calibration needs probes of enrolled identities (their labels): none was found")
    return Attempts(np.asarray(genuine, np.float64), np.asarray(impostor, np.float64))


def operating_point(a: Attempts, threshold: float | None, margin: float | None) -> dict[str, float]:
    """FAR, FRR, misnamed (genuine accepted under another name) and closed-set rank-1 of the known, in percent."""
    g_ok = _accept(a.genuine[:, 0], a.genuine[:, 1], threshold, margin)
    i_ok = _accept(a.impostor[:, 0], a.impostor[:, 1], threshold, margin)
    correct = a.genuine[:, 2] > 0
    return {
        "FAR": 100 * float(i_ok.mean()),
        "FRR": 100 * float((~g_ok).mean()),
        "misnamed": 100 * float((g_ok & ~correct).mean()),
        "identified": 100 * float((g_ok & correct).mean()),
        "rank1_known": 100 * float(correct.mean()),
        "genuine": float(len(a.genuine)),
        "impostor": float(len(a.impostor)),
    }


def _threshold_for(a: Attempts, far: float, margin: float) -> float:
    """The largest D whose FAR at `margin` stays <= `far`: just below the first impostor that must be refused."""
    passing = np.sort(a.impostor[(a.impostor[:, 1] - a.impostor[:, 0]) >= margin, 0])
    allowed = int(math.floor(far * len(a.impostor) + 1e-9))
    if allowed >= len(passing):
        finite = np.concatenate([a.genuine[:, 0], a.impostor[:, 0]])
        return float(finite[np.isfinite(finite)].max())
    return float(np.nextafter(passing[allowed], -np.inf))


def calibrate(a: Attempts, *, far: float = 0.01, margins: int = 20) -> dict[str, Any]:
    """D and M with FAR <= `far` and the lowest FRR (then the smallest M), searched over M = 0 and quantiles of
    the impostors' margins; returns {"threshold", "margin", "far_target", **operating point}."""
    if not 0 <= far < 1:
        raise ConfigError(f"--far must be a rate in [0, 1), got {far}")
    gaps = a.impostor[:, 1] - a.impostor[:, 0]
    gaps = gaps[np.isfinite(gaps)]
    candidates = [0.0] + (
        np.unique(np.quantile(gaps, np.linspace(0, 0.95, margins))).tolist() if len(gaps) else []
    )
    best: dict[str, Any] | None = None
    for m in candidates:
        d = _threshold_for(a, far, m)
        point = operating_point(a, d, m)
        if best is None or point["FRR"] < best["FRR"] - 1e-12:
            best = {"threshold": d, "margin": float(m), "far_target": 100 * far, **point}
    assert best is not None
    return best


def _curve(a: Attempts, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """FAR and FRR (percent) over every threshold that changes them, at a fixed margin."""
    cuts = np.unique(np.concatenate([a.genuine[:, 0], a.impostor[:, 0]]))
    cuts = cuts[np.isfinite(cuts)]
    points = [operating_point(a, float(c), margin) for c in cuts]
    return np.array([p["FAR"] for p in points]), np.array([p["FRR"] for p in points])


def det_plot(a: Attempts, chosen: dict[str, Any], path: str | Path) -> Path:
    """A DET plot (FRR against FAR, log-scaled FAR) at M = 0 and at the chosen margin, the chosen point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from biggait.io import save_png

    fig, ax = plt.subplots(figsize=(5, 4))
    margins = [(0.0, "--")] if chosen["margin"] > 0 else []
    for m, style in [*margins, (chosen["margin"], "-")]:
        far, frr = _curve(a, m)
        ax.step(np.maximum(far, 1e-2), frr, style, where="post", label=f"margin M = {m:.3g}")
    ax.plot(max(chosen["FAR"], 1e-2), chosen["FRR"], "o", color="black",
            label=f"calibrated: D = {chosen['threshold']:.3g}, M = {chosen['margin']:.3g}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("false accepts of unknown people, FAR (%)")
    ax.set_ylabel("false rejects of enrolled people, FRR (%)")
    ax.set_title("open-set identification (DET)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        return save_png(fig, path)
    finally:
        plt.close(fig)
