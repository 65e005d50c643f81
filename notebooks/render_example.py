"""Render the README's feature-map panel (docs/feature_maps_example.png) with the project's own code.

    python notebooks/render_example.py --checkpoint outputs/<run>/checkpoints/last.ckpt --shards data/synthetic

Without --checkpoint it uses the tiny random model (the picture then only shows the layout).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from biggait import load_model
from biggait.viz import save_png, sequence_panel
from biggait.viz.demo import comparison_sequences, make_demo_shards, tiny_random_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="training .ckpt (default: tiny random model)")
    parser.add_argument("--shards", default="data/synthetic", help="shard root (generated if missing)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", default="docs/feature_maps_example.png")
    parser.add_argument("--max-frames", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    shards = Path(args.shards)
    if not (shards / args.split / "manifest.json").is_file():
        shards = Path(tempfile.mkdtemp(prefix="biggait-demo-")) / "synthetic"
        print(f"no shards at {args.shards}: generating a tiny synthetic set in {shards}", file=sys.stderr)
        make_demo_shards(shards, seed=args.seed)
    model = load_model(args.checkpoint) if args.checkpoint else tiny_random_model(seed=args.seed)
    seq = comparison_sequences(model, shards, split=args.split, max_frames=args.max_frames)[0]
    source = Path(args.checkpoint).name if args.checkpoint else "tiny random model, untrained"
    fig = sequence_panel(
        seq.frames, seq.features, seq.silhouettes, ratios=seq.ratios, max_frames=args.max_frames,
        title=f"{seq.label} ({source})",
    )  # fmt: skip
    print(save_png(fig, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
