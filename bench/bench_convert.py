"""Conversion time per 1,000 sequences of each raw-dataset converter, on generated fake trees.

Writes a fake raw tree per dataset (realistic frame sizes and file kinds, person-like frames), converts it
with the real converter and prints seconds per 1,000 sequences (and per 1,000 frames, since time scales with
the frame count). Run: ``python bench/bench_convert.py [--sequences 24] [--workers 2] [--datasets ccpg casiab]``.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image_formats import person_frames  # noqa: E402
from biggait.data_prep import casiab, ccpg, sustech1k  # noqa: E402

# Assumed typical sequence lengths and raw frame sizes (H, W).
SHAPES = {"ccpg": (60, (360, 150)), "casiab": (90, (128, 128)), "sustech1k": (60, (64, 64))}


def _dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=4))


def fake_tree(name: str, raw: Path, n_seqs: int) -> None:
    """`n_seqs` sequences split over a few subjects, frames copied from one generated person clip."""
    t, (h, w) = SHAPES[name]
    frames, sils = person_frames(t, h, w, seed=0)
    ratios = np.full(t, 0.4, np.float32)
    for i in range(n_seqs):
        subject = i % 6
        if name == "ccpg":
            folder = raw / f"{subject * 40:03d}" / "U0_D0" / f"{i}_1"
            folder.mkdir(parents=True)
            for j, frame in enumerate(frames):
                cv2.imwrite(str(folder / f"{j:05d}.jpg"), frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        elif name == "casiab":
            folder = raw / f"{1 + subject * 20:03d}" / "nm-01" / f"{i:03d}"
            _dump(folder / f"{i:03d}-rgbs.pkl", frames.transpose(0, 3, 1, 2).copy())
            _dump(folder / f"{i:03d}-ratios.pkl", ratios)
            _dump(folder / f"{i:03d}-sils.pkl", sils)
        else:
            folder = raw / f"{subject:04d}" / "00-nm" / f"{i:03d}"
            _dump(folder / f"04-{i:03d}-Camera-Ratios-HW.pkl", np.tile([[250.0, 100.0]], (t, 1)))
            _dump(folder / f"05-{i:03d}-Camera-RGB_raw.pkl", frames)
    if name == "sustech1k":
        (raw / "SUSTech1K.json").write_text(
            '{"TRAIN_SET": ["0000", "0001", "0002"], "TEST_SET": ["0003", "0004", "0005"]}'
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequences", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--datasets", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args()
    modules = {"ccpg": ccpg, "casiab": casiab, "sustech1k": sustech1k}
    print(
        f"{'dataset':10s} {'frames/seq':>10s} {'raw HxW':>9s} {'s / 1000 seq':>13s} {'s / 1000 frames':>16s}"
    )
    for name in args.datasets:
        with tempfile.TemporaryDirectory() as tmp:
            raw, out = Path(tmp) / "raw", Path(tmp) / "out"
            fake_tree(name, raw, args.sequences)
            t0 = time.perf_counter()
            modules[name].prepare(raw, out, workers=args.workers, shard_size=4, progress=False)
            dt = time.perf_counter() - t0
        t, (h, w) = SHAPES[name]
        per_seq = dt / args.sequences * 1000
        print(f"{name:10s} {t:10d} {f'{h}x{w}':>9s} {per_seq:13.0f} {per_seq / t:16.1f}")
    print(f"({args.sequences} sequences per dataset, workers={args.workers}, png shards)")


if __name__ == "__main__":
    main()
