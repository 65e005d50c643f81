"""Embed footage with a trained BigGait into a gallery file.

    python -m biggait.embed MODEL INPUT [INPUT ...] --out GALLERY.npz [--tracks MOT.txt] [--identity NAME]

MODEL: our Lightning .ckpt, a converted one, or an official OpenGait .pt. INPUT: a folder of frames (one
sequence, labelled with the folder's name), a tree of such folders (labels = paths relative to INPUT, e.g.
`023/U0_D0/1_1`), a video of one cropped person (its stem) or, with --tracks, a video and its MOTChallenge
tracks (`<video stem>/<track id>`, the source recording the track and its frame span). A label's identity is its
first path component (a frames tree), "unknown" for tracks of a scene video, unless --identity is given.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from biggait.checkpoint import load_model, model_fingerprint
from biggait.errors import ConfigError, exit_on_error
from biggait.gallery import Gallery
from biggait.inference import PRECISIONS, SequencePooler, resolve_device
from biggait.io import check_writable
from biggait.precision import describe_precision_on
from biggait.preprocess import prepare_crops
from biggait.sources import InputError, RawSequence, discover_inputs, frame_count
from biggait.windows import windowed

__all__ = ["check_embed_options", "embed_inputs", "main"]


def _events(
    found: Sequence[RawSequence], max_frames: int | None
) -> Iterator[tuple[int, int, np.ndarray | None]]:
    """(sequence index, frame number, crop) for every crop of `found`, read one at a time, `max_frames` per
    sequence at most (decoding stops there), then (index, last frame, None) when a sequence is complete. The
    tracks of one video come from one decoding pass (`biggait.tracks.TrackedVideo.stream`)."""
    i = 0
    while i < len(found):
        group = found[i].group
        if group is not None:
            first = i
            while i < len(found) and found[i].group is group:
                i += 1
            for k, frame, crop in group.stream(max_frames):
                yield first + k, frame, crop
            continue
        count = 0
        for count, crop in enumerate(itertools.islice(found[i].crops(), max_frames), 1):
            yield i, count, crop
        yield i, count, None
        i += 1


class _Embedder:
    """Prepared frames of many sequences -> their embeddings, through one `SequencePooler` (a bounded queue of
    frames): memory does not grow with the footage's length, only with the sequences open at once."""

    def __init__(
        self, model, found: Sequence[RawSequence], *, batch_frames: int, device, precision: str
    ) -> None:
        dev = resolve_device(device)
        self.model, self.found = model.to(dev).eval(), found
        self.pooler = SequencePooler(self.model, batch_frames=batch_frames, device=dev, precision=precision)
        self.embeddings: dict[int, np.ndarray] = {}
        self.spans: dict[int, list[int]] = {}

    def frame(self, index: int, number: int, crop: np.ndarray) -> None:
        frames, ratios = prepare_crops([crop], self.model.frame_size)
        span = self.spans.setdefault(index, [number, number, 0])
        span[1], span[2] = number, span[2] + 1
        self._collect(self.pooler.extend(index, frames, ratios))

    def close(self, index: int) -> None:
        seq = self.found[index]
        if index not in self.spans:
            lost = "; ".join(why for _, why in (seq.group.lost if seq.group is not None else seq.lost)[:1])
            raise InputError(
                f"sequence {seq.label} ({seq.source}) has no frames" + (f": {lost}" if lost else "")
            )
        self._collect(self.pooler.close(index))

    def finish(self) -> None:
        self._collect(self.pooler.finish())

    def _collect(self, done: list) -> None:
        for index, emb in done:
            emb = emb.cpu().numpy()
            if not np.isfinite(emb).all():
                raise ConfigError(
                    f"the embedding of {self.found[index].label} holds NaN or inf: the model (or --precision "
                    "16-mixed overflowing) gives non-finite embeddings; nothing was written"
                )
            self.embeddings[index] = emb


def check_embed_options(batch_frames: int, max_frames: int | None) -> None:
    if batch_frames < 1:
        raise ConfigError(f"--batch-frames must be >= 1, got {batch_frames}")
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"--max-frames must be >= 1, got {max_frames}")


def _found(inputs: Sequence[str | Path], tracks: str | Path | None) -> list[RawSequence]:
    if tracks is not None and len(inputs) != 1:
        raise ConfigError(f"--tracks belongs to one video, but {len(inputs)} inputs were given")
    found: list[RawSequence] = [seq for path in inputs for seq in discover_inputs(path, tracks=tracks)]
    labels = [s.label for s in found]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise ConfigError(
            f"two inputs give the same sequence label {duplicates[0]!r}: embed them in separate runs"
        )
    return found


def _lost(found: Sequence[RawSequence]) -> list[tuple[int, str]]:
    groups = {id(s.group): s.group for s in found if s.group is not None}
    return [x for s in found for x in s.lost] + [x for g in groups.values() for x in g.lost]


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
    progress: bool | None = False,
    lost: list[tuple[int, str]] | None = None,
    window: int | None = None,
    stride: int | None = None,
) -> Gallery:
    """Every sequence found under `inputs` embedded by `model` (a `BigGait`), as a `Gallery`, streamed: one
    frame decoded at a time, `max_frames` per sequence read at most (the evaluation's `data.eval_frames_limit`).
    A track's source records its frame span; frames that could not be used are appended to `lost` as
    (count, why). `progress=None` shows a bar on a terminal. `window` (and `stride`): one embedding per window
    of N frames of every sequence (`biggait.windows`; a windowed sequence is read whole, one at a time)."""
    check_embed_options(batch_frames, max_frames)
    found = _found(inputs, tracks)
    if stride is not None and window is None:
        raise ConfigError("--stride goes with --window N (one embedding per N frames)")
    if window is not None:
        found = windowed(found, window, stride if stride is not None else window)
    embedder = _Embedder(model, found, batch_frames=batch_frames, device=device, precision=precision)
    counts = [frame_count(s) for s in found]
    total = None if None in counts else sum(min(c, max_frames or c) for c in counts)
    closed = 0
    with tqdm(
        total=total, unit="frame", disable=None if progress is None else not progress, desc="embed"
    ) as bar:
        for index, number, crop in _events(found, max_frames):
            if crop is None:
                embedder.close(index)
                closed += 1
                bar.set_postfix(sequences=f"{closed}/{len(found)}", refresh=False)
            else:
                embedder.frame(index, number, crop)
                bar.update()
        embedder.finish()
    if lost is not None:
        lost.extend(_lost(found))
    sources = [
        f"{s.source}&frames={embedder.spans[i][0]}-{embedder.spans[i][1]}"
        if s.group is not None
        else s.source
        for i, s in enumerate(found)
    ]
    return Gallery(
        np.stack([embedder.embeddings[i] for i in range(len(found))]),
        [s.label for s in found],
        [identity if identity is not None else s.identity or s.label.split("/")[0] for s in found],
        sources,
        model_fingerprint(model),
    )


def _report_lost(lost: list[tuple[int, str]]) -> int:
    """One warning line for the frames that could not be used (so a truncated file never passes silently)."""
    total = sum(n for n, _ in lost)
    if total:
        more = f" (and {len(lost) - 1} more places)" if len(lost) > 1 else ""
        print(
            f"warning: {total} frames could not be used and were skipped: {lost[0][1]}{more}", file=sys.stderr
        )
    return total


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
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
    parser.add_argument(
        "--identity",
        default=None,
        help="identity of every sequence of this run (default: a frames tree's first folder; 'unknown' for tracks)",
    )
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


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m biggait.embed") -> int:
    args = _parser(prog).parse_args(argv)
    lost: list[tuple[int, str]] = []
    with exit_on_error():
        check_writable(args.out, "--out")
        if args.out.exists() and not args.overwrite:
            raise ConfigError(
                f"{args.out} exists: embed never replaces a file silently; add to a gallery with "
                f"`biggait gallery enrol {args.out} MODEL INPUT --identity NAME`, or pass --overwrite"
            )
        check_embed_options(args.batch_frames, args.max_frames)
        device = resolve_device(args.device)  # --device cuda without a GPU: one line, before any work
        model = load_model(args.model)
        if args.precision == "auto":
            choice = describe_precision_on("auto", device)
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
            progress=None,
            lost=lost,
            window=args.window,
            stride=args.stride,
        )
        gallery.save(args.out)
    skipped = _report_lost(lost)
    print(
        f"wrote {args.out}: {len(gallery)} sequences of {len(set(gallery.identities))} identities"
        + (f" ({skipped} unusable frames skipped)" if skipped else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
