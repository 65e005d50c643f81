"""CASIA-B* (`casiab-128-end2end`, OpenGait `opengait/data/dataset.py`) `<id>/<type>/<view>/` rgbs [T,3,128,128] + ratios + sils -> shards."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from typing import Any

from biggait.data_prep.layout import build_parser, discover, prepare_dataset, run_main
from biggait.data_prep.opengait import PickleModalities, layout_for, load_sequence

__all__ = ["LAYOUT", "MODALITIES", "main", "prepare", "split_of"]

# Explicit names: the sorted order `ratios < rgbs` is what swapped the inputs in OpenGait issue #248.
MODALITIES = PickleModalities(
    frames="rgbs", ratios="ratios", frames_layout="chw", ratio_kind="wh", silhouettes="sils"
)
LAYOUT = layout_for(
    MODALITIES,
    name="CASIA-B*",
    description="<id 001-124>/<type nm-01..06|bg-01..02|cl-01..02>/<view 000..180>/ with "
    "000-rgbs.pkl [T,3,128,128], 000-ratios.pkl [T] (w/h), 000-sils.pkl [T,128,128]",
    example="001/nm-01/090/090-rgbs.pkl",
    id_pattern=r"\d{3}",
    type_pattern=r"(nm-0[1-6]|bg-0[12]|cl-0[12])",
    view_pattern=r"\d{3}",
)


def split_of(subject: str) -> str | None:
    """Train 001-074, test 075-124 (OpenGait `opengait/evaluation/evaluator.py`, `opengait/data/dataset.py`)."""
    i = int(subject)
    return "train" if 1 <= i <= 74 else "test" if 75 <= i <= 124 else None


def prepare(raw: str | os.PathLike, out: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Convert a CASIA-B* pickle tree into train / test shards under `out`; returns the conversion report."""
    specs, ignored = discover(raw, LAYOUT)
    load = functools.partial(load_sequence, modalities=MODALITIES)
    return prepare_dataset(specs, load, out, dataset="casiab", split_of=split_of, ignored=ignored, **options)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser("casiab", __doc__).parse_args(sys.argv[1:] if argv is None else argv)
    return run_main(args, prepare)
