"""Tracks of walking people from a static camera without any downloaded weights: OpenCV's MOG2 background
subtraction finds the moving blobs (OpenCV 5's wheels have no HOG people detector), and motpy's Kalman-filter
multi-object tracker (PyPI `motpy`, the `demo` extra) links them into tracks, written as a MOTChallenge file
for `biggait embed --tracks`, `biggait gallery enrol --tracks` and `biggait annotate`.

    biggait track VIDEO --out TRACKS.txt [--min-length 16] [--min-area 600]

A blob is kept as a person when its box is taller than wide (height / width in [1.2, 5]) and large enough;
people walking close together merge into one blob, which is what a background-subtraction detector gives.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from biggait.errors import ConfigError, exit_on_error
from biggait.io import atomic_write_bytes
from biggait.sources import video_frames

__all__ = ["detect_moving_people", "main", "track_video"]


def detect_moving_people(
    mask: np.ndarray, *, min_area: int = 600, aspect: tuple[float, float] = (1.2, 5.0)
) -> list[tuple[int, int, int, int]]:
    """Person-shaped boxes (x0, y0, x1, y1) of the foreground blobs of a MOG2 mask (shadows, 127, dropped)."""
    fg = (mask > 200).astype(np.uint8) * 255
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    fg = cv2.dilate(fg, np.ones((9, 5), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(fg)
    boxes = []
    for x, y, w, h, area in stats[1:n]:
        if area >= min_area and aspect[0] <= h / max(w, 1) <= aspect[1]:
            boxes.append((int(x), int(y), int(x + w), int(y + h)))
    return boxes


def track_video(
    video: str | Path, *, min_length: int = 16, min_area: int = 600, fps: float = 10.0
) -> tuple[list[tuple[int, int, int, int, int, int]], int]:
    """MOTChallenge rows (frame, track id, x, y, w, h) of the people walking in `video`, numbered 1, 2, ... in
    order of appearance, only tracks of at least `min_length` frames; and the number of frames."""
    try:
        from motpy import Detection, MultiObjectTracker
    except ImportError:
        raise ConfigError("tracking needs motpy: pip install 'biggait[demo]'") from None
    subtractor = cv2.createBackgroundSubtractorMOG2(history=300, varThreshold=25, detectShadows=True)
    tracker = MultiObjectTracker(dt=1 / fps, tracker_kwargs={"max_staleness": 4},
                                 active_tracks_kwargs={"min_steps_alive": 3, "max_staleness": 1})  # fmt: skip
    rows: dict[str, list[tuple[int, int, int, int, int]]] = {}
    frames = 0
    for frames, rgb in enumerate(video_frames(Path(video)), 1):
        h_img, w_img = rgb.shape[:2]
        mask = subtractor.apply(np.ascontiguousarray(rgb[..., ::-1]))
        detections = [
            Detection(box=np.array(b, float), score=1.0)
            for b in detect_moving_people(mask, min_area=min_area)
        ]
        tracker.step(detections)
        for t in tracker.active_tracks():
            x0, y0, x1, y1 = np.clip(np.round(t.box), 0, [w_img, h_img, w_img, h_img]).astype(int)
            if x1 - x0 >= 4 and y1 - y0 >= 8:
                rows.setdefault(t.id, []).append((frames, int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
    kept = sorted((r for r in rows.values() if len(r) >= min_length), key=lambda r: r[0][0])
    out = [(f, tid, x, y, w, h) for tid, r in enumerate(kept, 1) for f, x, y, w, h in r]
    return sorted(out), frames


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="biggait track", description=__doc__.strip().splitlines()[0],
                                     epilog="See docs/inference.md.")  # fmt: skip
    parser.add_argument("video", type=Path, help="video of a static camera")
    parser.add_argument("--out", type=Path, required=True, help="MOTChallenge tracks file to write")
    parser.add_argument("--min-length", type=int, default=16, help="drop tracks shorter than this (frames)")
    parser.add_argument("--min-area", type=int, default=600, help="smallest blob taken for a person (pixels)")
    args = parser.parse_args(argv)
    with exit_on_error():
        start = time.perf_counter()
        rows, frames = track_video(args.video, min_length=args.min_length, min_area=args.min_area)
        if not rows:
            raise ConfigError(
                f"no track of {args.min_length} frames or more in {args.video}: lower --min-length"
            )
        atomic_write_bytes(
            args.out, "".join(f"{f},{i},{x},{y},{w},{h},1,-1,-1,-1\n" for f, i, x, y, w, h in rows).encode()
        )
    seconds = time.perf_counter() - start
    print(f"wrote {args.out}: {len({r[1] for r in rows})} tracks, {len(rows)} boxes over {frames} frames "
          f"({frames / seconds:.0f} frames/s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
