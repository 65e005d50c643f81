"""The README's annotated frame: `biggait annotate` on the synthetic scene video.

    python scripts/annotated_example.py CKPT GALLERY.npz [--out docs/annotated_example.png] [--frame 60]

GALLERY is the one scripts/openset_synthetic.py writes (test identities 032-039 enrolled, with its calibration).
The scene shows test identities 032, 033 and 034 walking; 034 is removed from a copy of the gallery first, so the
frame shows two names and one "unknown". Also writes the annotate outputs next to the PNG's folder
(`outputs/annotated_example/`).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np

from biggait.annotate import annotate
from biggait.checkpoint import load_model
from biggait.data_prep.synthetic import write_scene_video
from biggait.gallery_cli import remove
from biggait.io import atomic_write_bytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", type=Path)
    p.add_argument("gallery", type=Path)
    p.add_argument("--out", type=Path, default=Path("docs/annotated_example.png"))
    p.add_argument("--work", type=Path, default=Path("outputs/annotated_example"))
    p.add_argument("--frame", type=int, default=85, help="1-based frame of the scene to keep")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    scene = write_scene_video(args.work / "scene.mkv", walkers=3)
    gallery = args.work / "gallery.npz"
    shutil.copyfile(args.gallery, gallery)
    remove(gallery, [f"{max(scene.walkers):03d}"])  # the last walker is not enrolled
    result = annotate(load_model(args.ckpt), gallery, args.work / "scene.mkv", args.work / "scene.txt",
                      args.work / "out", window=16, stride=8, device="cpu")  # fmt: skip
    for t in result["tracks"]:
        print(t)
    cap = cv2.VideoCapture(result["outputs"]["annotated.mp4"])
    cap.set(cv2.CAP_PROP_POS_FRAMES, args.frame - 1)
    ok, bgr = cap.read()
    if not ok:
        raise SystemExit(f"frame {args.frame} cannot be read")
    ok, png = cv2.imencode(".png", np.ascontiguousarray(bgr))
    atomic_write_bytes(args.out, png.tobytes())
    print(f"wrote {args.out} ({len(png.tobytes()) // 1024} KiB)")


if __name__ == "__main__":
    main()
