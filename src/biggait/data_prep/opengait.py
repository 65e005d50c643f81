"""OpenGait pickle trees `<id>/<type>/<view>/*.pkl` (OpenGait `opengait/data/dataset.py`) -> shards, modalities chosen by name.

Modalities are picked by name, never by sorted position: sorting put `ratios` before `rgbs` and swapped the
model inputs in a known failed reproduction (OpenGait issue #248). A file's modality name is its stem without the
leading `NN-` index and `<view>-` prefix: `000-rgbs.pkl` -> `rgbs`, `04-000-Camera-Ratios-HW.pkl` ->
`Camera-Ratios-HW`, `2_1-aligned-rgbs.pkl` -> `aligned-rgbs`. Every pickle goes through the restricted unpickler.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biggait.data.records import SequenceRecord
from biggait.data_prep.layout import (
    RawLayout,
    SeqSpec,
    build_parser,
    discover,
    prepare_dataset,
    read_partition,
    run_main,
)
from biggait.data_prep.safe_pickle import load_pickle
from biggait.errors import ConfigError, CorruptDataError

__all__ = ["PickleModalities", "load_sequence", "main", "modality_files", "modality_name", "prepare"]


@dataclass(frozen=True)
class PickleModalities:
    """Which pickle holds what, by modality name, and how its arrays are laid out."""

    frames: str  # e.g. "rgbs", "aligned-rgbs", "Camera-RGB_raw"
    ratios: str  # e.g. "ratios", "Camera-Ratios-HW"
    frames_layout: str = "chw"  # "chw": [T,3,H,W] (OpenGait rgbs), "hwc": [T,H,W,3]
    ratio_kind: str = "wh"  # "wh": one w/h per frame, "hw": (H, W) per frame (SUSTech1K, OpenGait `RatioHW`, `opengait/data/transform.py`)
    silhouettes: str | None = None  # e.g. "sils" ([T,H,W], same H, W as the frames)

    def __post_init__(self) -> None:
        if self.frames_layout not in ("chw", "hwc") or self.ratio_kind not in ("wh", "hw"):
            raise ConfigError(
                f"frames_layout must be 'chw' or 'hwc' and ratio_kind 'wh' or 'hw', "
                f"got {self.frames_layout!r}, {self.ratio_kind!r}"
            )

    def names(self) -> list[str]:
        return [n for n in (self.frames, self.ratios, self.silhouettes) if n]


def modality_name(filename: str, view: str) -> str:
    """`04-000-Camera-Ratios-HW.pkl` (view 000) -> `Camera-Ratios-HW`; `000-rgbs.pkl` -> `rgbs`."""
    stem = filename[: -len(".pkl")] if filename.endswith(".pkl") else filename
    stem = re.sub(r"^\d+-(?=.)", "", stem) if not stem.startswith(f"{view}-") else stem
    if stem.startswith(f"{view}-"):
        stem = stem[len(view) + 1 :]
    return stem


def modality_files(view_dir: Path, view: str) -> dict[str, Path]:
    """Modality name (lower case) -> pickle file of one sequence folder."""
    return {modality_name(p.name, view).lower(): p for p in sorted(view_dir.glob("*.pkl"))}


def _has_modalities(view_dir: Path, *, names: tuple[str, ...]) -> bool:
    found = modality_files(view_dir, view_dir.name)
    return all(n.lower() in found for n in names)


def layout_for(modalities: PickleModalities, **fields: Any) -> RawLayout:
    """A pickle-tree `RawLayout` requiring the named modalities in each sequence folder."""
    return RawLayout(has_data=functools.partial(_has_modalities, names=tuple(modalities.names())), **fields)


def _array(obj: Any, path: Path) -> np.ndarray:
    if isinstance(obj, list | tuple):  # some releases pickle a list of per-frame arrays
        obj = np.stack([np.asarray(o) for o in obj]) if len(obj) else np.zeros((0,))
    if not isinstance(obj, np.ndarray):
        raise CorruptDataError(
            f"{path}: expected a numpy array (or list of frames), got {type(obj).__name__}"
        )
    return obj


def _to_uint8(x: np.ndarray, path: Path) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating) and x.size and float(np.nanmax(x)) <= 1.0:
        x = x * 255.0  # [0, 1] floats
    if x.size and (float(np.nanmin(x)) < 0 or float(np.nanmax(x)) > 255):
        raise CorruptDataError(f"{path}: values outside [0, 255] ({x.dtype}); cannot store as uint8")
    return np.rint(x).astype(np.uint8)


def load_sequence(spec: SeqSpec, *, modalities: PickleModalities) -> SequenceRecord:
    """Load one sequence folder; a wrong shape raises (the writer skips it and reports why)."""
    files = modality_files(Path(spec.path), spec.view)
    path = files[modalities.frames.lower()]
    frames = _to_uint8(_array(load_pickle(path), path), path)
    if modalities.frames_layout == "chw":
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise CorruptDataError(f"{path}: expected frames [T,3,H,W] (chw), got {list(frames.shape)}")
        frames = frames.transpose(0, 2, 3, 1)
    elif frames.ndim != 4 or frames.shape[3] != 3:
        raise CorruptDataError(f"{path}: expected frames [T,H,W,3] (hwc), got {list(frames.shape)}")
    rpath = files[modalities.ratios.lower()]
    ratios = _array(load_pickle(rpath), rpath).astype(np.float64)
    if modalities.ratio_kind == "hw":
        if ratios.ndim != 2 or ratios.shape[1] != 2:
            raise CorruptDataError(f"{rpath}: expected (H, W) per frame [T, 2], got {list(ratios.shape)}")
        ratios = ratios[:, 1] / ratios[:, 0]  # store w/h (OpenGait `RatioHW`, `opengait/data/transform.py`)
    ratios = ratios.reshape(-1).astype(np.float32)
    if len(ratios) != len(frames):
        raise CorruptDataError(f"{spec.path}: {len(frames)} frames but {len(ratios)} ratios")
    sils = None
    if modalities.silhouettes:
        spath = files[modalities.silhouettes.lower()]
        raw = _array(load_pickle(spath), spath)
        if raw.shape != frames.shape[:3]:
            raise CorruptDataError(
                f"{spath}: silhouettes {list(raw.shape)} != frames {list(frames.shape[:3])}"
            )
        cut = 0 if raw.max(initial=0) <= 1 else 127  # 0/1 or 0/255 (possibly soft) -> 0/255
        sils = np.where(raw > cut, 255, 0).astype(np.uint8)
    return SequenceRecord(spec.subject, spec.seq_type, spec.view, np.ascontiguousarray(frames), ratios, sils)


def find_partition(raw: Path, explicit: str | os.PathLike | None) -> Path | None:
    """`--partition` if given, else a `*.json` holding TRAIN_SET in RAW or its parent."""
    if explicit:
        return Path(explicit)
    for folder in (raw, raw.parent):
        for p in sorted(folder.glob("*.json")):
            try:
                if "TRAIN_SET" in p.read_text(errors="replace")[:200_000]:
                    return p
            except OSError:
                continue
    return None


def split_from_partition(subject: str, *, train: frozenset[str], test: frozenset[str]) -> str | None:
    return "train" if subject in train else "test" if subject in test else None


def prepare(
    raw: str | os.PathLike,
    out: str | os.PathLike,
    *,
    modalities: PickleModalities,
    partition: str | os.PathLike | None = None,
    dataset: str = "opengait",
    **options: Any,
) -> dict[str, Any]:
    """Convert any OpenGait pickle tree; the split comes from a partition JSON (TRAIN_SET / TEST_SET)."""
    layout = layout_for(
        modalities,
        name="OpenGait pickle",
        description=f"<id>/<type>/<view>/ with pickles named *-{{{', '.join(modalities.names())}}}.pkl",
        example=f"001/nm-01/000/000-{modalities.frames}.pkl",
        id_pattern=r"[^.].*",
        type_pattern=r".+",
    )
    specs, ignored = discover(raw, layout)
    part = find_partition(Path(raw), partition)
    if part is None:
        raise ConfigError(f"no partition JSON (TRAIN_SET / TEST_SET) in {raw}; pass --partition FILE")
    train, test = read_partition(part)
    split = functools.partial(split_from_partition, train=frozenset(train), test=frozenset(test))
    load = functools.partial(load_sequence, modalities=modalities)
    return prepare_dataset(specs, load, out, dataset=dataset, split_of=split, ignored=ignored, **options)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("opengait", __doc__)
    parser.add_argument("--dataset-name", default="opengait", help="names the shard files")
    parser.add_argument("--frames", required=True, help="modality name of the RGB pickle, e.g. rgbs")
    parser.add_argument("--frames-layout", choices=("chw", "hwc"), default="chw")
    parser.add_argument("--ratios", required=True, help="modality name of the ratio pickle, e.g. ratios")
    parser.add_argument("--ratio-kind", choices=("wh", "hw"), default="wh")
    parser.add_argument("--silhouettes", default=None, help="modality name of [T,H,W] silhouettes (optional)")
    parser.add_argument("--partition", default=None, help="OpenGait partition JSON (TRAIN_SET / TEST_SET)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    modalities = PickleModalities(
        frames=args.frames,
        ratios=args.ratios,
        frames_layout=args.frames_layout,
        ratio_kind=args.ratio_kind,
        silhouettes=args.silhouettes,
    )
    return run_main(args, prepare, modalities=modalities, partition=args.partition, dataset=args.dataset_name)
