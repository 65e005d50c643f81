"""Windows over long tracks: one embedding, and so one decision, per `window` frames every `stride` frames,
and a per-track summary of the decisions (All-in-One-Gait issue #6 recommends 16-frame windows with stride 8
for continuous identification). A window's label is `<track label>@<first>-<last>` (1-based positions in the
track's frames), so the decisions of one track group back together and a tracker's identity switch shows up as
a change of name along the track.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from biggait.errors import ConfigError
from biggait.sources import RawSequence

__all__ = ["split_window_label", "track_summary", "window_bounds", "windowed"]

_WINDOW = re.compile(r"^(.*)@(\d+)-(\d+)$")


def window_bounds(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """[start, stop) of the windows over n frames: every `stride` frames, the last one flush with the end so the
    tail is covered; a track shorter than `window` is one window."""
    if window < 1 or stride < 1:
        raise ConfigError(f"--window and --stride must be >= 1, got {window} and {stride}")
    if n <= window:
        return [(0, n)]
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] + window < n:
        starts.append(n - window)
    return [(s, s + window) for s in starts]


class _LastRead:
    """Reads a sequence's crops once for all of its windows, keeping only the current sequence in memory."""

    def __init__(self) -> None:
        self.label: str | None = None
        self.crops: list[np.ndarray] = []

    def __call__(self, seq: RawSequence) -> list[np.ndarray]:
        if self.label != seq.label:
            self.label, self.crops = seq.label, seq.read()
        return self.crops


def windowed(found: Sequence[RawSequence], window: int, stride: int) -> list[RawSequence]:
    """The windows of every sequence, as sequences labelled `<label>@<first>-<last>`."""
    reader = _LastRead()
    out = []
    for seq in found:
        n = len(seq.read())
        for start, stop in window_bounds(n, window, stride):
            out.append(
                RawSequence(
                    f"{seq.label}@{start + 1}-{stop}",
                    f"{seq.source}#frames={start + 1}-{stop}",
                    lambda s=seq, a=start, b=stop: iter(reader(s)[a:b]),
                    identity=seq.identity,
                    length=stop - start,
                )
            )
    return out


def split_window_label(label: str) -> tuple[str, int, int] | None:
    """`track@first-last` -> (track, first, last); None for a label that is not a window's."""
    match = _WINDOW.match(label)
    return (match.group(1), int(match.group(2)), int(match.group(3))) if match else None


def _runs(names: Sequence[str]) -> list[tuple[str, int]]:
    runs: list[tuple[str, int]] = []
    for name in names:
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1] + 1)
        else:
            runs.append((name, 1))
    return runs


def track_summary(
    labels: Sequence[str], decisions: Sequence[str], distances: Sequence[float]
) -> list[dict[str, Any]]:
    """Per track (windows grouped by label, in frame order): the majority decision (ties: the smaller mean
    distance), the mean distance of the windows that voted for it, the timeline of runs and how often the
    named identity changes along the track (a tracker's identity switch, or an uncertain stretch)."""
    tracks: dict[str, list[tuple[int, str, float]]] = {}
    for label, name, dist in zip(labels, decisions, distances):
        parsed = split_window_label(label)
        track, first = (parsed[0], parsed[1]) if parsed else (label, 1)
        tracks.setdefault(track, []).append((first, name, dist))
    out = []
    for track, rows in tracks.items():
        rows.sort()
        names = [name for _, name, _ in rows]
        votes = Counter(names)

        def mean_d(name: str, rows: list[tuple[int, str, float]] = rows) -> float:
            return float(np.mean([d for _, n, d in rows if n == name]))

        majority = min(votes, key=lambda n: (-votes[n], mean_d(n)))
        runs = _runs(names)
        named = [n for n, _ in runs if n != "unknown"]
        out.append({
            "track": track, "windows": len(rows), "identity": majority, "votes": votes[majority],
            "mean_distance": mean_d(majority), "switches": sum(a != b for a, b in zip(named, named[1:])),
            "timeline": " ".join(f"{n}x{k}" for n, k in runs),
        })  # fmt: skip
    return out
