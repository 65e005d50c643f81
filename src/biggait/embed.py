"""Embed footage with a trained BigGait into a gallery file.

    python -m biggait.embed MODEL INPUT [INPUT ...] --out GALLERY.npz [--tracks MOT.txt] [--identity NAME]

MODEL: our Lightning .ckpt, a converted one, or an official OpenGait .pt. INPUT: a folder of frames (one
sequence, labelled with the folder's name), a tree of such folders (labels = paths relative to INPUT, e.g.
`023/U0_D0/1_1`), a video of one cropped person (its stem) or, with --tracks, a video and its MOTChallenge
tracks (`<video stem>/<track id>`). A label's identity is its first path component unless --identity is given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from biggait.checkpoint import load_model, model_fingerprint
from biggait.errors import ConfigError, exit_on_error
from biggait.gallery import Gallery
from biggait.inference import PRECISIONS, embed_sequences, resolve_device
from biggait.precision import describe_precision_on
from biggait.preprocess import prepare_crops
from biggait.sources import InputError, RawSequence, discover_inputs
from biggait.windows import windowed

__all__ = ["embed_inputs", "main"]


def embed_inputs(
    model,
    inputs: Sequence[str | Path],
    *,
    tracks: str | Path | None = None,
    identity: str | None = None,
    batch_frames: int = 256,
    device: str = "auto",
    precision: str = "32",
    max_frames: int | None = None,
    window: int | None = None,
    stride: int | None = None,
) -> Gallery:
    """Every sequence found under `inputs` embedded by `model` (a `BigGait`), as a `Gallery`; `max_frames` keeps
    the first frames of each, as the evaluation does (`data.eval_frames_limit`)."""
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"--max-frames must be >= 1, got {max_frames}")
    if tracks is not None and len(inputs) != 1:
        raise ConfigError(f"--tracks belongs to one video, but {len(inputs)} inputs were given")
    found: list[RawSequence] = [seq for path in inputs for seq in discover_inputs(path, tracks=tracks)]
    if stride is not None and window is None:
        raise ConfigError("--stride goes with --window N (one embedding per N frames)")
    if window is not None:  # one embedding per window of every sequence (biggait.windows)
        found = windowed(found, window, stride if stride is not None else window)
    labels = [s.label for s in found]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise ConfigError(
            f"two inputs give the same sequence label {duplicates[0]!r}: embed them in separate runs"
        )

    def prepared() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for seq in found:
            crops = seq.read()[:max_frames]
            if not crops:
                raise InputError(f"sequence {seq.label} ({seq.source}) has no frames")
            yield prepare_crops(crops, model.frame_size)

    embeddings = list(
        embed_sequences(model, prepared(), batch_frames=batch_frames, device=device, precision=precision)
    )
    return Gallery(
        np.stack(embeddings),
        labels,
        [identity if identity is not None else label.split("/")[0] for label in labels],
        [s.source for s in found],
        model_fingerprint(model),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m biggait.embed",
        description=__doc__.strip().splitlines()[0],
        epilog="See docs/inference.md.",
    )
    parser.add_argument(
        "model", type=Path, help="model file: .ckpt (ours / converted) or official OpenGait .pt"
    )
    parser.add_argument(
        "inputs", type=Path, nargs="+", metavar="INPUT", help="frames folder, tree of them, or video"
    )
    parser.add_argument("--out", type=Path, required=True, help="gallery file to write (.npz)")
    parser.add_argument(
        "--tracks", type=Path, default=None, help="MOTChallenge tracks of the (one) video INPUT"
    )
    parser.add_argument("--identity", default=None, help="identity of every sequence of this run")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file (to add to a gallery: biggait gallery enrol)",
    )
    parser.add_argument(
        "--window", type=int, default=None, help="one embedding per N frames of each sequence"
    )
    parser.add_argument(
        "--stride", type=int, default=None, help="frames between window starts (default: --window)"
    )
    parser.add_argument("--batch-frames", type=int, default=256, help="frames per forward pass (default 256)")
    parser.add_argument(
        "--max-frames",
        type=int,
        default=None,
        help="embed only the first N frames of each sequence (the evaluation's eval_frames_limit; default: all)",
    )
    parser.add_argument("--device", default="auto", help="auto (a GPU when present), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--precision",
        default="32",
        choices=PRECISIONS,
        help="default 32 (float32); auto: bf16 on CPUs with AVX-512 BF16 / AMX and on GPUs that have it, "
        "fp16 on older GPUs (docs/performance.md)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with exit_on_error():
        if args.out.exists() and not args.overwrite:
            raise ConfigError(
                f"{args.out} exists: embed never replaces a file silently; add to a gallery with "
                f"`biggait gallery enrol {args.out} MODEL INPUT --identity NAME`, or pass --overwrite"
            )
        model = load_model(args.model)
        if args.precision == "auto":
            choice = describe_precision_on("auto", resolve_device(args.device))
            print(f"precision auto -> {choice}", file=sys.stderr)
        gallery = embed_inputs(
            model,
            args.inputs,
            tracks=args.tracks,
            identity=args.identity,
            batch_frames=args.batch_frames,
            device=args.device,
            precision=args.precision,
            max_frames=args.max_frames,
            window=args.window,
            stride=args.stride,
        )
        gallery.save(args.out)
    print(f"wrote {args.out}: {len(gallery)} sequences of {len(set(gallery.identities))} identities")
    return 0


if __name__ == "__main__":
    sys.exit(main())
