"""Peak RSS of `python -m biggait.embed` on a long scene video with many tracks vs a short clip (issue #22).

    python bench/bench_embed_memory.py --minutes 10 --fps 25 --tracks 1000 [--workdir /tmp/bench_embed]

Writes (outside the repository, in --workdir) a model checkpoint of the tiny preset, then two mostly static
1920x1080 MPEG-4 scene videos with MOTChallenge tracks: the long one (--minutes, --tracks walkers crossing
the scene one after another, a few at a time) and a 10-second clip (tracks scaled down to its length). Each
is embedded by the real CLI in a fresh child process and the child's peak RSS is read with
`resource.getrusage(RUSAGE_CHILDREN)` inside a small wrapper process (its only child). Prints both peaks and
their ratio; the target is a ratio below 1.5 (embedding streams the footage, so the long video should cost
what the short one does). The videos are cheap to make and small on disk: a static background, low bitrate.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

_WRAPPER = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stderr.write(proc.stderr[-2000:])\n"
    "print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t)\n"
)
SIZE = (1080, 1920)
BOX = (200, 400)  # walker box w x h in pixels


def write_model(path: Path) -> Path:
    """The tiny preset (random weights: memory, not accuracy, is measured), as a Lightning checkpoint."""
    import warnings

    import torch

    from biggait.compat.opengait import export_lightning_checkpoint
    from biggait.models import BigGait

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BigGait(
            "tiny", num_classes=5, image_size=(112, 56), map_size=(32, 16), channels=(8, 16, 32, 64),
            embed_dim=16, fusion_squeeze=4, frame_size=(64, 32), pretrained="random",
        ).eval()  # fmt: skip
    return export_lightning_checkpoint(model, path)


def write_scene(path: Path, *, frames: int, fps: float, tracks: int, track_frames: int) -> tuple[int, int]:
    """A static scene with `tracks` walkers, each crossing for `track_frames` frames, starts spread evenly;
    returns (frames written, track lines)."""
    h, w = SIZE
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise SystemExit(f"OpenCV cannot write mp4v video to {path}")
    y, x = np.mgrid[0:h, 0:w]
    background = np.stack([(x * 255 // w), (y * 255 // h), np.full_like(x, 90)], -1).astype(np.uint8)
    starts = np.linspace(1, max(1, frames - track_frames), tracks).astype(int)
    lines = []
    for k, start in enumerate(starts.tolist(), 1):
        x0 = 40 + (k * 97) % (w - BOX[0] - 80)
        for t in range(start, min(frames, start + track_frames - 1) + 1):
            lines.append(f"{t},{k},{x0 + 4 * (t - start)},{300},{BOX[0]},{BOX[1]},1,-1,-1,-1")
    by_frame: dict[int, list[tuple[int, int]]] = {}
    for line in lines:
        t, _, x0, y0 = (int(v) for v in line.split(",")[:4])
        by_frame.setdefault(t, []).append((x0, y0))
    for t in range(1, frames + 1):
        frame = background.copy()
        for x0, y0 in by_frame.get(t, []):
            frame[y0 + 40 : y0 + BOX[1] - 20, x0 + 60 : x0 + BOX[0] - 60] //= 3  # a dark walker-sized blob
        writer.write(frame)
    writer.release()
    path.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    return frames, len(lines)


def peak_rss(*args: object) -> tuple[int, float, float, str]:
    """(exit status, peak RSS MiB, seconds, stderr tail) of the embed CLI in a fresh child."""
    cmd = [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "biggait.embed", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    code, rss_kib, seconds = proc.stdout.split()[-3:]
    return int(code), int(rss_kib) / 1024, float(seconds), proc.stderr


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of the long video (default 10)")
    p.add_argument("--short-seconds", type=float, default=10.0, help="length of the clip (default 10)")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--tracks", type=int, default=1000, help="tracks in the long video (default 1000)")
    p.add_argument("--track-frames", type=int, default=12, help="boxes per track (default 12)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_embed_memory"))
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    ckpt = write_model(args.workdir / "tiny.ckpt")
    long_frames = int(args.minutes * 60 * args.fps)
    short_frames = int(args.short_seconds * args.fps)
    short_tracks = max(1, round(args.tracks * short_frames / long_frames))
    results = {}
    for name, frames, tracks in (("short", short_frames, short_tracks), ("long", long_frames, args.tracks)):
        video = args.workdir / f"{name}.mp4"
        t = time.perf_counter()
        if not video.exists() or not video.with_suffix(".txt").exists():
            write_scene(video, frames=frames, fps=args.fps, tracks=tracks, track_frames=args.track_frames)
        made = time.perf_counter() - t
        out = args.workdir / f"{name}.npz"
        code, rss, seconds, err = peak_rss(ckpt, video, "--tracks", video.with_suffix(".txt"), "--out", out)
        if code != 0:
            raise SystemExit(f"embed failed on {video}:\n{err}")
        boxes = sum(1 for _ in video.with_suffix(".txt").open())
        results[name] = rss
        print(
            f"{name:>5}: {frames} frames {SIZE[1]}x{SIZE[0]} @ {args.fps:g} fps ({frames / args.fps / 60:.2f} min, "
            f"{video.stat().st_size / 2**20:.1f} MiB, made in {made:.0f} s), {tracks} tracks, {boxes} boxes: "
            f"embed peak RSS {rss:.0f} MiB in {seconds:.0f} s"
        )
    print(f"ratio long / short: {results['long'] / results['short']:.3f} (target < 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
