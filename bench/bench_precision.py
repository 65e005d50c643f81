"""How far low precision moves the embeddings of a trained checkpoint on the synthetic test split.

    python bench/bench_precision.py outputs/train/synthetic/<date>/checkpoints/last.ckpt [--sequences 64]

For each mode (bf16 autocast everywhere = `trainer.precision=bf16-mixed`; the frozen backbone alone in bf16 =
`model.net.backbone_precision=bf16`) it prints the relative difference ||e - e_fp32|| / ||e_fp32|| of the
sequence embeddings (median and max over sequences, and over the whole set) and the fraction of foreground
pixels whose selection flipped. The retrieval numbers themselves come from `python -m biggait.eval` with
`trainer.precision=32-true` and `bf16-mixed` (docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from biggait.checkpoint import load_model
from biggait.data import GaitDataModule


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt")
    p.add_argument("--root", default="data/synthetic")
    p.add_argument("--sequences", type=int, default=64, help="test sequences compared (the first ones)")
    p.add_argument("--frames", type=int, default=40)
    args = p.parse_args()
    model = load_model(args.ckpt)  # eval mode; any checkpoint layout, read with weights_only=True
    dm = GaitDataModule(
        root=args.root, protocol="ccpg", eval_frames_limit=args.frames, eval_batch_size=4, num_workers=0
    )
    dm.set_rank(0, 1)
    modes = {"bf16 autocast": (torch.bfloat16, None), "backbone bf16 only": (None, "bf16")}
    rel: dict[str, list[float]] = {m: [] for m in modes}
    flips: dict[str, list[float]] = {m: [] for m in modes}
    ref_all, low_all = [], {m: [] for m in modes}
    seen = 0
    for batch in dm.test_dataloader():
        batch = dm.on_after_batch_transfer(batch, 0)
        frames, ratios, lengths = batch["frames"], batch["ratios"], batch["lengths"]
        with torch.no_grad():
            model.backbone_precision = None
            f = model.forward_features(frames, ratios)
            ref = model.forward_head(f, lengths)["embeddings"].float()
            ref_all.append(ref)
            for mode, (dtype, backbone) in modes.items():
                model.backbone_precision = backbone
                with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                    g = model.forward_features(frames, ratios)
                    out = model.forward_head(g, lengths)["embeddings"].float()
                low_all[mode].append(out)
                for i in range(out.shape[0]):
                    rel[mode].append(float((out[i] - ref[i]).norm() / ref[i].norm()))
                    t = int(lengths[i])
                    flips[mode].append(
                        float((g["foreground"][i, :t] != f["foreground"][i, :t]).float().mean())
                    )
        seen += frames.shape[0]
        if seen >= args.sequences:
            break
    model.backbone_precision = None
    ref = torch.cat(ref_all)
    print(f"checkpoint {args.ckpt}: {ref.shape[0]} test sequences x <= {args.frames} frames")
    for mode in modes:
        low = torch.cat(low_all[mode])
        print(
            f"{mode:20s} embeddings relative difference: median {statistics.median(rel[mode]):.2e}, "
            f"max {max(rel[mode]):.2e}, whole set {float((low - ref).norm() / ref.norm()):.2e}; "
            f"foreground pixels flipped: {100 * statistics.mean(flips[mode]):.3f} %"
        )


if __name__ == "__main__":
    main()
