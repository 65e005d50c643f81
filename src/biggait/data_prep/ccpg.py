"""CCPG raw RGB person crops `<id>/<type>/<view>/*.jpg|png` -> 256x128 pad-and-resized shards (OpenGait `datasets/pretreatment_rgb.py`)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from biggait.data.records import SequenceRecord
from biggait.data_prep.layout import (
    RawLayout,
    SeqSpec,
    build_parser,
    discover,
    note_skipped_frames,
    prepare_dataset,
    run_main,
)
from biggait.preprocess import crop_ratio, pad_and_resize

__all__ = ["LAYOUT", "load_sequence", "main", "prepare", "split_of"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FRAME_SIZE = (256, 128)


def _has_images(view_dir: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in view_dir.iterdir())


LAYOUT = RawLayout(
    name="CCPG",
    description="<id 000-199>/<type U{0-3}_D{0-3}[_BG]>/<view <cam>_...>/<frame>.jpg|png (RGB person crops)",
    example="000/U0_D0_BG/1_1/00001.jpg",
    id_pattern=r"\d{3}",
    type_pattern=r"U[0-3]_D[0-3](_BG)?",
    view_pattern=r"[^_]+_.*",
    has_data=_has_images,
)


def split_of(subject: str) -> str | None:
    """Train ids 000-099, test 100-199 (OpenGait `opengait/evaluation/evaluator.py`, `opengait/data/dataset.py`)."""
    i = int(subject)
    return "train" if i < 100 else "test" if i < 200 else None


def load_sequence(spec: SeqSpec, *, notes: str | None = None) -> SequenceRecord | None:
    """Read, pad-and-resize every frame; unreadable frames are skipped and noted (None if none is left)."""
    frames, ratios, skipped = [], [], []
    for path in sorted(Path(spec.path).iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape[0] == 0 or bgr.shape[1] == 0:
            skipped.append(path.name)
            continue
        rgb = bgr[..., ::-1]  # per-channel resize: converting before or after gives the same bytes
        frames.append(pad_and_resize(rgb, FRAME_SIZE))
        ratios.append(crop_ratio(rgb))  # w/h of the original crop
    note_skipped_frames(spec, notes, skipped)
    if not frames:
        return None
    return SequenceRecord(
        spec.subject, spec.seq_type, spec.view, np.stack(frames), np.asarray(ratios, np.float32)
    )


def prepare(raw: str | os.PathLike, out: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Convert a raw CCPG tree into train / test shards under `out`; returns the conversion report."""
    specs, ignored = discover(raw, LAYOUT)
    load = functools.partial(load_sequence, notes=str(out))
    return prepare_dataset(
        specs, load, out, dataset="ccpg", split_of=split_of, ignored=ignored, frame_size=FRAME_SIZE, **options
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser("ccpg", __doc__).parse_args(sys.argv[1:] if argv is None else argv)
    return run_main(args, prepare)
