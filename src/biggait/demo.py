"""A real clip end to end: track the people of a static-camera video (biggait.tracking), enrol the first half
of every track under its own name, then identify the second halves and draw them (biggait.annotate).

    python -m biggait.demo MODEL --out-dir DIR [--video /usr/share/doc/opencv-doc/examples/data/vtest.avi]
                                  [--min-length 32] [--window 16 --stride 8]

OpenCV's sample `vtest.avi` (people walking in a hall, 768x576, 795 frames at 10 fps) ships with Debian's
`opencv-doc` package: `make vtest` installs it. With the synthetic stand-in backbone the names mean little;
the demo shows that real footage runs through, how fast, and what the annotated video looks like.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from biggait.errors import ConfigError, exit_on_error
from biggait.io import atomic_write_bytes, atomic_write_json

__all__ = ["VTEST", "main", "run_demo", "split_tracks"]

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")

Row = tuple[int, int, int, int, int, int]


def split_tracks(rows: Sequence[Row]) -> tuple[list[Row], list[Row]]:
    """Every track's first half of frames and its second half."""
    by_track: dict[int, list[Row]] = {}
    for row in sorted(rows):
        by_track.setdefault(row[1], []).append(row)
    first = [r for t in by_track.values() for r in t[: len(t) // 2]]
    second = [r for t in by_track.values() for r in t[len(t) // 2 :]]
    return sorted(first), sorted(second)


def _write(path: Path, rows: Sequence[Row]) -> Path:
    return atomic_write_bytes(
        path, "".join(f"{f},{i},{x},{y},{w},{h},1,-1,-1,-1\n" for f, i, x, y, w, h in rows).encode()
    )


def run_demo(
    model: Any, video: Path, out_dir: Path, *, min_length: int = 32, window: int | None = 16, stride: int | None = 8,
    device: str = "auto",
) -> dict[str, Any]:  # fmt: skip
    """Track, enrol the first halves (`track-<id>`), annotate the second halves; returns the timings, the
    per-track summaries and the share of second halves named after their own track."""
    from biggait.annotate import annotate
    from biggait.embed import embed_inputs
    from biggait.tracking import track_video

    if not video.is_file():
        raise ConfigError(
            f"video {video} does not exist (OpenCV's vtest.avi: `make vtest` installs opencv-doc)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows, frames = track_video(video, min_length=min_length)
    tracked = time.perf_counter()
    first, second = split_tracks(rows)
    enrolled = embed_inputs(model, [video], tracks=_write(out_dir / "first_half.txt", first), device=device)
    enrolled.identities = [f"track-{label.rsplit('/', 1)[1]}" for label in enrolled.labels]
    gallery = enrolled.save(out_dir / "gallery.npz")
    embedded = time.perf_counter()
    result = annotate(model, gallery, video, _write(out_dir / "second_half.txt", second), out_dir, window=window,
                      stride=stride, closed_set=True, device=device)  # fmt: skip
    own = [t["identity"] == f"track-{t['track'].rsplit('/', 1)[1]}" for t in result["tracks"]]
    summary = {
        "video": str(video), "frames": frames, "tracks": len(own), "boxes": len(rows),
        "named_after_own_track": sum(own), "chance": 1 / max(1, len(own)),
        "seconds": {"tracking": tracked - start, "enrol": embedded - tracked, "annotate": result["seconds"]["total"],
                    "annotate_embed": result["seconds"]["embed"]},
        "outputs": result["outputs"], "per_track": result["tracks"],
    }  # fmt: skip
    atomic_write_json(out_dir / "demo.json", summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    from biggait.checkpoint import load_model
    from biggait.recognise import format_tracks

    parser = argparse.ArgumentParser(
        prog="python -m biggait.demo", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument("model", type=Path, help="model file (.ckpt or official .pt)")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--video", type=Path, default=VTEST, help=f"static-camera video (default {VTEST})")
    parser.add_argument(
        "--min-length", type=int, default=32, help="shortest track kept (frames; halves of it)"
    )
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    with exit_on_error():
        s = run_demo(load_model(args.model), args.video, args.out_dir, min_length=args.min_length,
                     window=args.window, stride=args.stride, device=args.device)  # fmt: skip
    print(format_tracks(s["per_track"]))
    t = s["seconds"]
    print(f"{s['frames']} frames, {s['tracks']} tracks: tracking {t['tracking']:.1f} s, enrolling the first halves "
          f"{t['enrol']:.1f} s, identifying + drawing the second halves {t['annotate']:.1f} s; "
          f"{s['named_after_own_track']} of {s['tracks']} second halves named after their own track")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
