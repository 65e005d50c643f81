"""File side of the visualisation: shard reading and atomic PNG writes (plots stay pure); models load with
`biggait.load_model`."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from biggait.data import SequenceRecord, normalize_frames, read_manifest
from biggait.data.pipeline import (
    decode_frames,
    decode_silhouettes,
    iter_shard,
    pad_sequences,
    parse_sample,
    select_frames,
)
from biggait.errors import CorruptDataError
from biggait.io import figure_png, save_png  # re-exported: viz's public API
from biggait.viz.maps import VizInputError

__all__ = ["figure_png", "read_labels", "read_sequences", "records_to_batch", "save_png"]

_META_LIMIT = 1 << 20  # a meta.json holds a label and one ratio per frame: kilobytes; more is not ours


def _samples(root: str | Path, split: str) -> Iterator[Any]:
    """The samples of `<root>/<split>` in manifest order, undecoded (frames are decoded only when asked)."""
    split_dir = Path(root) / split
    manifest = read_manifest(split_dir)
    for shard in manifest["shards"]:
        path = str(split_dir / shard["name"])
        for key, fields in iter_shard(path):
            yield parse_sample(key, fields, path, silhouettes=True)


def read_labels(root: str | Path, *, split: str = "test") -> list[tuple[str, str, str]]:
    """(subject, type, view) of every sequence of `<root>/<split>`, in manifest order.

    Only the tar headers and each sample's `meta.json` are read; the frames are seeked over, so listing a
    real test split costs seconds, not a pass over its gigabytes.
    """
    split_dir = Path(root) / split
    labels: list[tuple[str, str, str]] = []
    for shard in read_manifest(split_dir)["shards"]:
        path = split_dir / shard["name"]
        found = _shard_labels(path)
        if len(found) != int(shard["n_samples"]):
            raise CorruptDataError(
                f"shard {path} holds {len(found)} samples with a meta.json, its manifest says "
                f"{shard['n_samples']}: rebuild the split with `make data`"
            )
        labels += found
    return labels


def _shard_labels(path: Path) -> list[tuple[str, str, str]]:
    out = []
    try:
        with tarfile.open(path, "r:") as tar:  # uncompressed, random access: member data is skipped
            for member in tar:
                if member.isfile() and member.name.endswith(".meta.json"):
                    if member.size > _META_LIMIT:
                        raise ValueError(f"{member.name} is {member.size} bytes, over {_META_LIMIT}")
                    meta = json.loads(tar.extractfile(member).read())
                    out.append((str(meta["subject"]), str(meta["type"]), str(meta["view"])))
    except (OSError, tarfile.TarError, ValueError, KeyError, TypeError) as exc:
        raise CorruptDataError(
            f"shard {path} cannot be read ({type(exc).__name__}: {exc}): rebuild the split with `make data`"
        ) from None
    return out


def read_sequences(
    root: str | Path,
    *,
    split: str = "test",
    limit: int | None = None,
    max_frames: int | None = None,
    where: Callable[[str, str, str], bool] | None = None,
) -> list[SequenceRecord]:
    """Whole sequences (first `max_frames` frames) from `<root>/<split>` shards in manifest order.

    `where(subject, seq_type, view)` filters before anything is decoded; reading stops after `limit` matches.
    Silhouettes are included when the shards have them.
    """
    out: list[SequenceRecord] = []
    for sample in _samples(root, split):
        if where is not None and not where(sample.subject, sample.seq_type, sample.view):
            continue
        if max_frames is not None:
            sample = select_frames(sample, np.arange(min(max_frames, len(sample.frames))))
        out.append(
            SequenceRecord(
                subject=sample.subject,
                seq_type=sample.seq_type,
                view=sample.view,
                frames=decode_frames(sample),
                ratios=sample.ratios,
                silhouettes=None if sample.silhouettes is None else decode_silhouettes(sample),
            )
        )
        if limit is not None and len(out) >= limit:
            break
    return out


def records_to_batch(records: Sequence[SequenceRecord]) -> dict[str, Any]:
    """Records -> an evaluation-style batch: normalised `frames` [n, S, 3, H, W] zero-padded to the longest,
    `ratios`, `lengths`, labels and `silhouettes` (when every record has them)."""
    if not records:
        raise VizInputError("records_to_batch got no sequences; check the shard directory and the filter")
    with_silhouettes = all(r.silhouettes is not None for r in records)
    batch: dict[str, Any] = pad_sequences(
        [r.frames for r in records],
        [r.ratios for r in records],
        [r.silhouettes for r in records] if with_silhouettes else None,
    )
    batch["frames"] = normalize_frames(batch["frames"], batch["lengths"])
    batch.update(
        subjects=[r.subject for r in records],
        types=[r.seq_type for r in records],
        views=[r.view for r in records],
    )
    return batch
