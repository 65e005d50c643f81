"""Shared converter pipeline for raw gait datasets: discover -> validate -> specs -> `write_shards`.

Dataset modules (`ccpg`, `casiab`, `sustech1k`, `opengait`) only describe their layout (`RawLayout`) and how
to load one sequence; everything else (walking `<id>/<type>/<view>/`, the layout check, the split, the
frame-skip report, the command line) lives here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biggait.data.shards import write_shards
from biggait.errors import ConfigError, CorruptDataError, DatasetNotFoundError
from biggait.io import atomic_write_json

__all__ = [
    "REPORT",
    "RawLayout",
    "SeqSpec",
    "build_parser",
    "discover",
    "note_skipped_frames",
    "prepare_dataset",
    "probe",
    "read_partition",
    "run_main",
]

REPORT = "conversion_report.json"
_FRAME_NOTES = ".frame_skips"  # per-sequence notes written by workers, gathered into REPORT


@dataclass(frozen=True)
class SeqSpec:
    """One raw sequence: `<raw>/<subject>/<seq_type>/<view>/` (cheap and picklable)."""

    subject: str
    seq_type: str
    view: str
    path: str


@dataclass(frozen=True)
class RawLayout:
    """What a raw tree must look like: folder-name patterns and the files a sequence folder needs."""

    name: str
    description: str  # the expected layout in words, shown in layout errors
    example: str  # an example sequence path relative to RAW
    id_pattern: str
    type_pattern: str
    view_pattern: str = r".+"
    has_data: Callable[[Path], bool] = field(default=lambda p: True)  # cheap: does a view dir look usable


def _listdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _found(raw: Path) -> str:
    """A short account of what is really under RAW, for layout errors."""
    entries = sorted(
        p.name + ("/" if p.is_dir() else "") for p in raw.iterdir() if not p.name.startswith(".")
    )
    shown = ", ".join(entries[:6]) + (f", ... ({len(entries)} entries)" if len(entries) > 6 else "")
    deep = raw
    for _ in range(4):
        sub = _listdirs(deep)
        if not sub:
            break
        deep = sub[0]
    files = sorted(p.name for p in deep.iterdir())[:3] if deep.is_dir() else []
    example = f"{deep.relative_to(raw)}/{files[0] if files else ''}" if deep != raw else "(no sub-folders)"
    return f"found: {shown or '(empty)'}; e.g. {example}"


def _layout_error(layout: RawLayout, raw: Path, why: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"RAW={raw} does not match the {layout.name} layout ({why}).\n"
        f"  expected: {layout.description}\n"
        f"  e.g.      {raw}/{layout.example}\n"
        f"  {_found(raw)}"
    )


def discover(raw: str | os.PathLike, layout: RawLayout) -> tuple[list[SeqSpec], dict[str, Any]]:
    """Every `<id>/<type>/<view>/` sequence folder matching `layout`, sorted; raises one layout error if none.

    Also returns what was ignored (folders whose names do not match, view folders without data) for the report.
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise DatasetNotFoundError(
            f"RAW={raw} is not a directory; point RAW at your copy of {layout.name} "
            f"(expected: {layout.description})"
        )
    id_re, type_re, view_re = (
        re.compile(p) for p in (layout.id_pattern, layout.type_pattern, layout.view_pattern)
    )
    ignored: dict[str, list[str]] = {"ids": [], "types": [], "views": [], "no_data": []}
    specs: list[SeqSpec] = []
    ids = _listdirs(raw)
    for id_dir in ids:
        if not id_re.fullmatch(id_dir.name):
            ignored["ids"].append(id_dir.name)
            continue
        for type_dir in _listdirs(id_dir):
            if not type_re.fullmatch(type_dir.name):
                ignored["types"].append(f"{id_dir.name}/{type_dir.name}")
                continue
            for view_dir in _listdirs(type_dir):
                rel = f"{id_dir.name}/{type_dir.name}/{view_dir.name}"
                if not view_re.fullmatch(view_dir.name):
                    ignored["views"].append(rel)
                elif not layout.has_data(view_dir):
                    ignored["no_data"].append(rel)
                else:
                    specs.append(SeqSpec(id_dir.name, type_dir.name, view_dir.name, str(view_dir)))
    if not specs:
        if not ids:
            why = "it has no sub-folders"
        elif len(ignored["ids"]) == len(ids):
            why = f"no folder name matches the subject-id pattern {layout.id_pattern}"
        elif ignored["no_data"]:
            why = f"{len(ignored['no_data'])} sequence folder(s) hold none of the expected files"
        else:
            why = "no <id>/<type>/<view>/ folders match the expected names"
        raise _layout_error(layout, raw, why)
    return specs, {k: v for k, v in ignored.items() if v}


def read_partition(path: str | os.PathLike) -> tuple[set[str], set[str]]:
    """`TRAIN_SET` / `TEST_SET` id lists from an OpenGait partition JSON (OpenGait `opengait/data/dataset.py`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return {str(i) for i in data["TRAIN_SET"]}, {str(i) for i in data["TEST_SET"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"partition file {path} must be JSON with TRAIN_SET and TEST_SET id lists ({type(exc).__name__}: {exc})"
        ) from exc


def note_skipped_frames(spec: SeqSpec, out: str | None, skipped: list[str]) -> None:
    """Record frames a loader dropped (missing / unreadable); gathered into the report after writing.

    Workers run in other processes, so each sequence leaves a small JSON note (atomic write) under OUT.
    """
    if out is None:
        return
    notes = Path(out) / _FRAME_NOTES
    name = re.sub(r"[^A-Za-z0-9_-]", "-", f"{spec.subject}_{spec.seq_type}_{spec.view}") + ".json"
    if not skipped:
        (notes / name).unlink(missing_ok=True)  # a note from an earlier run is stale now
        return
    notes.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        notes / name, {"sequence": f"{spec.subject}/{spec.seq_type}/{spec.view}", "frames": skipped}
    )


def _gather_frame_notes(out: Path, names: set[str]) -> list[dict[str, Any]]:
    notes = []
    for p in sorted((out / _FRAME_NOTES).glob("*.json")):
        note = json.loads(p.read_text())
        if note["sequence"] in names:  # notes of sequences no longer converted are stale
            notes.append(note)
    return notes


def probe(specs: Sequence[SeqSpec], load: Callable[[SeqSpec], Any], *, dataset: str, n: int = 3) -> None:
    """Load the first few sequences before the real work: if none loads, one error now, not after hours."""
    reasons = []
    for spec in specs[:n]:
        try:
            if load(spec) is not None:
                return
            reasons.append(f"{spec.path}: no readable frames")
        except Exception as exc:  # the reason is what the user needs, whatever its type
            reasons.append(f"{type(exc).__name__}: {exc}")
    raise CorruptDataError(
        f"{dataset}: none of the first {len(reasons)} sequences could be read, so the RAW files do not have the "
        f"expected content (see docs/1_data.md, 'Real datasets'):\n  " + "\n  ".join(reasons)
    )


def _split_by_subject(
    specs: Sequence[SeqSpec], split_of: Callable[[str], str | None]
) -> tuple[dict[str, list[SeqSpec]], set[str]]:
    """specs per split ("train", "test"), and the subjects `split_of` assigns to neither."""
    splits: dict[str, list[SeqSpec]] = {"train": [], "test": []}
    unassigned: set[str] = set()
    for spec in specs:
        split = split_of(spec.subject)
        if split is None:
            unassigned.add(spec.subject)
        else:
            splits[split].append(spec)
    return splits, unassigned


def _split_report(out: Path, split: str, items: list[SeqSpec], manifest: dict[str, Any]) -> dict[str, Any]:
    """What `conversion_report.json` says about one split: sequences found / written / skipped, frames skipped."""
    names = {f"{s.subject}/{s.seq_type}/{s.view}" for s in items}
    frames = _gather_frame_notes(out, names)
    return {
        "n_sequences_found": len(items),
        "n_sequences_written": manifest["n_sequences"],
        "n_subjects": manifest["n_subjects"],
        "n_frames": manifest["n_frames"],
        "n_sequences_skipped": manifest["n_skipped"],
        "skipped_sequences": f"{split}/{manifest['skip_report']}",
        "n_frames_skipped": sum(len(n["frames"]) for n in frames),
        "skipped_frames": frames,
    }


def prepare_dataset(
    specs: Sequence[SeqSpec],
    load: Callable[[SeqSpec], Any],
    out: str | os.PathLike,
    *,
    dataset: str,
    split_of: Callable[[str], str | None],
    ignored: dict[str, Any] | None = None,
    shard_size: int = 64,
    workers: int = 1,
    shuffle_seed: int = 0,
    frame_size: tuple[int, int] | None = None,
    progress: bool = True,
    image_format: str = "png",
) -> dict[str, Any]:
    """Split `specs` by subject, write each split's shards and `<out>/conversion_report.json`; returns the report.

    Training shards are shuffled (seeded), test shards keep the sorted order (docs/8_design.md).
    """
    out = Path(out)
    probe(specs, load, dataset=dataset)
    splits, unassigned = _split_by_subject(specs, split_of)
    report: dict[str, Any] = {"dataset": dataset, "splits": {}}
    for split, items in splits.items():
        if not items:
            warnings.warn(f"{dataset}: no sequences for the {split} split", stacklevel=2)
            continue
        manifest = write_shards(
            items,
            load,
            out,
            dataset=dataset,
            split=split,
            shard_size=shard_size,
            shuffle_seed=shuffle_seed if split == "train" else None,
            workers=workers,
            frame_size=frame_size,
            progress=progress,
            image_format=image_format,
        )
        report["splits"][split] = _split_report(out, split, items, manifest)
    report["subjects_in_no_split"] = sorted(unassigned)
    report["ignored_folders"] = {k: v[:50] for k, v in (ignored or {}).items()}
    report["n_ignored_folders"] = {k: len(v) for k, v in (ignored or {}).items()}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / REPORT, report)
    return report


def build_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The options every converter takes; dataset modules add their own."""
    parser = argparse.ArgumentParser(prog=f"python -m biggait.data_prep {name}", description=doc)
    parser.add_argument(
        "--raw", required=True, help="your copy of the raw dataset (see docs/1_data.md, 'Real datasets')"
    )
    parser.add_argument("--out", required=True, help="output folder for <split>/*.tar + manifest.json")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--shard-size", type=int, default=64, help="sequences per shard")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed of the training shards")
    parser.add_argument("--image-format", choices=("png", "jpg"), default="png", help="png is lossless")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run_main(args: argparse.Namespace, prepare: Callable[..., dict[str, Any]], **options: Any) -> int:
    """Call `prepare` with the common options, print a one-screen summary."""
    report = prepare(
        args.raw,
        args.out,
        workers=args.workers,
        shard_size=args.shard_size,
        shuffle_seed=args.seed,
        image_format=args.image_format,
        progress=not args.no_progress,
        **options,
    )
    for split, r in report["splits"].items():
        print(
            f"{report['dataset']}/{split}: {r['n_sequences_written']}/{r['n_sequences_found']} sequences "
            f"({r['n_subjects']} subjects, {r['n_frames']} frames); skipped {r['n_sequences_skipped']} "
            f"sequences and {r['n_frames_skipped']} frames"
        )
    print(f"report: {Path(args.out) / REPORT}")
    return 0
