"""SUSTech1K released pickles `<id>/<seq>-<covariate>/<view>/` (RGB_raw 64x64 HWC + Ratios-HW) -> shards."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from biggait.data_prep.layout import build_parser, discover, prepare_dataset, read_partition, run_main
from biggait.data_prep.opengait import (
    PickleModalities,
    find_partition,
    layout_for,
    load_sequence,
    split_from_partition,
)

__all__ = ["LAYOUT", "MODALITIES", "N_TRAIN", "main", "prepare"]

N_TRAIN = 250  # official partition: 250 train / 800 test ids (OpenGait `opengait/data/dataset.py`)
# OpenGait `configs/biggait/BigGait_SUSTech1K.yaml`, PR #307: `05-...-Camera-RGB_raw.pkl` (HWC) and `04-...-Camera-Ratios-HW.pkl` ((H, W) -> stored as w/h).
MODALITIES = PickleModalities(
    frames="Camera-RGB_raw", ratios="Camera-Ratios-HW", frames_layout="hwc", ratio_kind="hw"
)
LAYOUT = layout_for(
    MODALITIES,
    name="SUSTech1K",
    description="<id 0000-1049>/<seq>-<covariate>/<view 000.. | 000-far ..>/ with 04-<view>-Camera-Ratios-HW.pkl [T,2] "
    "and 05-<view>-Camera-RGB_raw.pkl [T,64,64,3]",
    example="0000/00-nm/000/05-000-Camera-RGB_raw.pkl",
    id_pattern=r"\d{3,4}",
    type_pattern=r"\d{2}-.+",
    view_pattern=r"\d{3}(-.+)?",  # e.g. 000, 000-far
)


def rule_split(subject: str, *, train: frozenset[str]) -> str:
    return "train" if subject in train else "test"


def prepare(
    raw: str | os.PathLike,
    out: str | os.PathLike,
    *,
    partition: str | os.PathLike | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Convert SUSTech1K; the split is `SUSTech1K.json` (in RAW or `partition`), else the first 250 sorted ids."""
    specs, ignored = discover(raw, LAYOUT)
    part = find_partition(Path(raw), partition)
    if part is not None:
        train, test = read_partition(part)
        split = functools.partial(split_from_partition, train=frozenset(train), test=frozenset(test))
    else:
        ids = sorted({s.subject for s in specs})
        warnings.warn(
            f"no SUSTech1K.json partition in {raw} (pass --partition FILE); using the documented rule: "
            f"the first {N_TRAIN} sorted ids train, the rest test",
            stacklevel=2,
        )
        split = functools.partial(rule_split, train=frozenset(ids[:N_TRAIN]))
    load = functools.partial(load_sequence, modalities=MODALITIES)
    return prepare_dataset(specs, load, out, dataset="sustech1k", split_of=split, ignored=ignored, **options)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("sustech1k", __doc__)
    parser.add_argument("--partition", default=None, help="SUSTech1K.json (TRAIN_SET / TEST_SET)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run_main(args, prepare, partition=args.partition)
