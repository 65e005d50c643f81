"""Two non-learned baselines on the synthetic test split, scored with the CCPG protocol (data_prep/README.md).

    python scripts/baselines.py [--root data/synthetic] [--frames 40]

(a) nearest neighbour on colour histograms of the person pixels: sees clothes, not gait;
(b) nearest neighbour on the gait-energy image (mean ground-truth silhouette): sees shape and motion.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from biggait.evaluation import evaluate
from biggait.evaluation.report import results_markdown
from biggait.viz.io import read_sequences


def colour_histogram(
    frames: np.ndarray, silhouettes: np.ndarray, bins: tuple[int, int] = (18, 4)
) -> np.ndarray:
    """Hue x saturation histogram of the person's pixels (ground-truth mask), L1-normalised.

    Hue/saturation ignore the per-sequence brightness jitter; the mask ignores the background. This is the
    strongest clothing-colour matcher we could make cheaply: it should excel when clothes stay (BG).
    """
    import cv2

    hsv = cv2.cvtColor(frames.reshape(-1, frames.shape[2], 3), cv2.COLOR_RGB2HSV).reshape(-1, 3)
    person = hsv[silhouettes.reshape(-1) > 127]
    h = (person[:, 0].astype(np.int64) * bins[0]) // 180
    s = (person[:, 1].astype(np.int64) * bins[1]) // 256
    hist = np.bincount(h * bins[1] + s, minlength=bins[0] * bins[1]).astype(np.float32)
    return hist / max(hist.sum(), 1.0)


def gait_energy_image(silhouettes: np.ndarray, size: tuple[int, int] = (32, 16)) -> np.ndarray:
    """Mean silhouette over the sequence at a small size, flattened."""
    import cv2

    gei = silhouettes.astype(np.float32).mean(0) / 255.0
    return cv2.resize(gei, (size[1], size[0]), interpolation=cv2.INTER_AREA).reshape(-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="data/synthetic")
    p.add_argument("--frames", type=int, default=40, help="first N frames per sequence (as the evaluation)")
    args = p.parse_args()
    t0 = time.perf_counter()
    records = read_sequences(args.root, split="test", max_frames=args.frames)
    subjects = [r.subject for r in records]
    types = [r.seq_type for r in records]
    views = [r.view for r in records]
    print(
        f"{len(records)} test sequences, {len(set(subjects))} identities, chance rank-1 = "
        f"{100 / len(set(subjects)):.1f}%  (read in {time.perf_counter() - t0:.0f}s)"
    )
    for name, feature in (
        ("colour histogram NN", lambda r: colour_histogram(r.frames, r.silhouettes)),
        ("gait-energy image NN", lambda r: gait_energy_image(r.silhouettes)),
    ):
        emb = torch.as_tensor(np.stack([feature(r) for r in records]))[:, :, None]  # [N, C, 1 part]
        metrics = evaluate("ccpg", emb, subjects, types, views)
        print(f"\n{name}\n" + results_markdown({k: v for k, v in metrics.items() if "/" not in k}, "ccpg"))


if __name__ == "__main__":
    main()
