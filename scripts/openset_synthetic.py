"""Open-set numbers of a checkpoint on the synthetic test split (docs/inference.md, "Open set").

    python scripts/openset_synthetic.py CKPT [--data data/synthetic] [--out-dir outputs/openset] [--far 0.01]

The 16 test identities are split in two: the first 8 are enrolled (their U0_D0 walks, every view: 4 templates
each), the other 8 are never enrolled. Calibration split: the other walks of views 1-2 of the enrolled people
and every walk of views 1-2 of unknown people 1-4; test split: views 3-4 of the enrolled people and of unknown
people 5-8. `biggait calibrate` picks D and M on the first for the target FAR and `biggait identify --score` reports
FAR / FRR / rank-1 on the second, at that point. Embeddings use the evaluator's first 40 frames.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from biggait.calibrate import main as calibrate_main
from biggait.checkpoint import load_model, model_fingerprint
from biggait.gallery import Gallery
from biggait.identify import main as identify_main
from biggait.inference import embed_sequences
from biggait.viz import read_sequences


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", type=Path)
    p.add_argument("--data", type=Path, default=Path("data/synthetic"))
    p.add_argument("--out-dir", type=Path, default=Path("outputs/openset"))
    p.add_argument("--far", type=float, default=0.01)
    p.add_argument("--frames", type=int, default=40, help="first frames of each walk (the evaluator's limit)")
    args = p.parse_args()
    model = load_model(args.ckpt)
    records = read_sequences(args.data, split="test")
    embeddings = np.stack(list(embed_sequences(
        model, [(r.frames[: args.frames], r.ratios[: args.frames]) for r in records], device="cpu"
    )))  # fmt: skip
    ids = sorted({r.subject for r in records})
    enrolled, unknown = set(ids[:8]), ids[8:]
    cam = [int(r.view.split("_")[0]) for r in records]
    everything = Gallery(embeddings, [f"{r.subject}/{r.seq_type}/{r.view}" for r in records],
                         [r.subject for r in records], [str(args.data)] * len(records), model_fingerprint(model))  # fmt: skip

    def part(keep) -> Gallery:
        return everything.select(np.array([bool(keep(r, c)) for r, c in zip(records, cam)]))

    args.out_dir.mkdir(parents=True, exist_ok=True)
    gallery = part(lambda r, c: r.subject in enrolled and r.seq_type == "U0_D0").save(
        args.out_dir / "gallery.npz"
    )
    calib = part(
        lambda r, c: c <= 2
        and ((r.subject in enrolled and r.seq_type != "U0_D0") or r.subject in unknown[:4])
    )
    test = part(
        lambda r, c: c >= 3
        and ((r.subject in enrolled and r.seq_type != "U0_D0") or r.subject in unknown[4:])
    )
    calib.save(args.out_dir / "calibration.npz")
    test.save(args.out_dir / "test.npz")
    print(
        f"gallery: {len(enrolled)} people x 4 templates; calibration {len(calib)} walks, test {len(test)} walks"
    )
    calibrate_main([str(gallery), str(args.out_dir / "calibration.npz"), "--far", str(args.far),
                    "--plot", str(args.out_dir / "det.png"), "--json", str(args.out_dir / "calibration.json")])  # fmt: skip
    identify_main([str(gallery), str(args.out_dir / "test.npz"), "--score", "--quiet"])


if __name__ == "__main__":
    main()
