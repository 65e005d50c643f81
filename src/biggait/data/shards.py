"""Shard writer and manifest reader: one webdataset tar sample per gait sequence."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import pickle
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import webdataset as wds
from tqdm.auto import tqdm

from biggait.data.records import SequenceRecord
from biggait.errors import ConfigError, CorruptDataError, DatasetNotFoundError
from biggait.image_header import image_size
from biggait.io import atomic_open, atomic_write_json, remove_stale_temporaries

__all__ = [
    "FORMAT_VERSION",
    "IMAGE_FORMATS",
    "encode_record",
    "frame_field",
    "parse_manifest",
    "read_manifest",
    "sample_key",
    "shard_name",
    "silhouette_field",
    "write_shards",
]

FORMAT_VERSION = 1
# Chosen by bench/bench_image_formats.py (docs/1_data.md, "Image format"): PNG is lossless (bit-exact with the official
# uint8 pickles, OpenGait `datasets/pretreatment_rgb.py`) and decodes fast enough; JPEG q95 is 3x smaller and 2x faster to decode.
IMAGE_FORMATS = ("png", "jpg")
MANIFEST = "manifest.json"
SKIP_REPORT = "skipped.json"
_PNG_LEVEL = 3


def shard_name(dataset: str, split: str, index: int) -> str:
    return f"{dataset}-{split}-{index:06d}.tar"


def frame_field(index: int, image_format: str) -> str:
    return f"f{index:04d}.{image_format}"


def silhouette_field(index: int) -> str:
    return f"s{index:04d}.png"


def sample_key(index: int, record: SequenceRecord) -> str:
    """Tar key without dots (webdataset splits the key at the first dot)."""
    raw = f"{index:08d}_{record.subject}_{record.seq_type}_{record.view}"
    return re.sub(r"[^A-Za-z0-9_-]", "-", raw)


def _encode_image(image: np.ndarray, image_format: str, jpeg_quality: int) -> bytes:
    if image.ndim == 3:
        image = image[..., ::-1]  # RGB -> BGR for cv2
    if image_format == "png":
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, _PNG_LEVEL])
    else:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise CorruptDataError(f"cv2 could not encode a {image.shape} image as {image_format}")
    return buf.tobytes()


def encode_record(
    record: SequenceRecord, key: str, *, image_format: str = "png", jpeg_quality: int = 95
) -> dict[str, Any]:
    """A webdataset sample: `meta.json`, frames `fNNNN.<fmt>`, silhouettes `sNNNN.png` (always lossless)."""
    meta = {
        "subject": record.subject,
        "type": record.seq_type,
        "view": record.view,
        "n_frames": record.n_frames,
        "ratios": [float(r) for r in record.ratios],
        "frame_size": list(record.frame_size),
        "image_format": image_format,
        "silhouettes": record.silhouettes is not None,
    }
    sample: dict[str, Any] = {"__key__": key, "meta.json": json.dumps(meta).encode()}
    for t in range(record.n_frames):
        sample[frame_field(t, image_format)] = _encode_image(record.frames[t], image_format, jpeg_quality)
        if record.silhouettes is not None:
            sample[silhouette_field(t)] = _encode_image(record.silhouettes[t], "png", jpeg_quality)
    return sample


def _fingerprint(items: Sequence[tuple[int, Any]], options: dict[str, Any]) -> str:
    # repr of the specs: a descriptor with an address in its repr just makes the shard rebuild every time.
    text = repr((sorted(options.items()), [(i, repr(spec)) for i, spec in items]))
    return hashlib.sha1(text.encode()).hexdigest()


def _load_checked(
    load: Callable[[Any], SequenceRecord | None], spec: Any
) -> tuple[SequenceRecord | None, str]:
    try:
        record = load(spec)
    except Exception as exc:  # one bad sequence must not kill a multi-hour conversion
        return None, f"load raised {type(exc).__name__}: {exc}"
    if record is None:
        return None, "load returned None"
    if not isinstance(record, SequenceRecord):
        return None, f"load returned {type(record).__name__}, expected SequenceRecord"
    try:
        record.validate()
    except CorruptDataError as exc:
        return None, str(exc)
    return record, ""


def _write_samples(
    writer: wds.TarWriter, items: list, load: Callable, options: dict[str, Any]
) -> dict[str, Any]:
    subjects: Counter[str] = Counter()
    sizes: set[tuple[int, int]] = set()
    skipped, n_samples, n_frames, n_sils = [], 0, 0, 0
    for index, spec in items:
        record, reason = _load_checked(load, spec)
        if record is not None and options["frame_size"] and record.frame_size != tuple(options["frame_size"]):
            record, reason = (
                None,
                f"frame size {list(record.frame_size)} != frame_size {options['frame_size']}",
            )
        if record is None:
            skipped.append({"spec": repr(spec), "reason": reason})
            continue
        sample = encode_record(
            record,
            sample_key(index, record),
            image_format=options["image_format"],
            jpeg_quality=options["jpeg_quality"],
        )
        writer.write(sample)
        subjects[record.subject] += 1
        sizes.add(record.frame_size)
        n_samples += 1
        n_frames += record.n_frames
        n_sils += record.silhouettes is not None
    return {
        "n_samples": n_samples,
        "n_frames": n_frames,
        "n_silhouettes": n_sils,
        "subjects": dict(sorted(subjects.items())),
        "frame_sizes": sorted(list(s) for s in sizes),
        "skipped": skipped,
    }


def _write_one_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Write (or reuse) one shard; returns its index entry, also stored in a sidecar JSON."""
    path, sidecar = Path(task["path"]), Path(task["sidecar"])
    if path.exists() and sidecar.exists():
        try:
            entry = json.loads(sidecar.read_text())
            if entry.get("fingerprint") == task["fingerprint"]:
                return entry | {"reused": True}
        except (OSError, json.JSONDecodeError):
            pass  # unreadable sidecar: rebuild the shard
    with atomic_open(path) as stream:  # a kill or Ctrl-C never leaves a partial shard behind
        writer = wds.TarWriter(stream, encoder=False, mtime=0)  # mtime 0: byte-identical re-runs
        try:
            stats = _write_samples(writer, task["items"], task["load"], task["options"])
        finally:
            writer.close()
    entry = {"name": path.name, **stats, "fingerprint": task["fingerprint"]}
    atomic_write_json(sidecar, entry)  # written last: tar + matching sidecar = complete shard
    return entry | {"reused": False}


def write_shards(
    specs: Sequence[Any],
    load: Callable[[Any], SequenceRecord | None],
    out_dir: str | os.PathLike,
    *,
    dataset: str,
    split: str,
    shard_size: int = 64,
    shuffle_seed: int | None = None,
    workers: int = 1,
    frame_size: tuple[int, int] | None = None,
    progress: bool = True,
    image_format: str = "png",
    jpeg_quality: int = 95,
) -> dict[str, Any]:
    """Write `specs` as tar shards `<out_dir>/<split>/<dataset>-<split>-%06d.tar` plus `manifest.json`.

    `load(spec)` materialises one `SequenceRecord` (None or an exception = skipped and reported in
    `skipped.json`). Shard i holds `specs[i*shard_size:(i+1)*shard_size]` after an optional seeded shuffle, so
    a re-run is deterministic and reuses every complete shard. `load` must be picklable when `workers > 1`.
    Returns the manifest.
    """
    _check_write_options(
        specs,
        load,
        dataset=dataset,
        split=split,
        shard_size=shard_size,
        workers=workers,
        image_format=image_format,
    )
    order = list(range(len(specs)))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(specs)).tolist()
    split_dir = Path(out_dir) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(split_dir)  # what a killed earlier build left (`.<shard>.tar.tmp-<pid>...`)
    options = {
        "image_format": image_format,
        "jpeg_quality": jpeg_quality if image_format == "jpg" else None,
        "frame_size": list(frame_size) if frame_size else None,
        "format_version": FORMAT_VERSION,
    }
    tasks = _shard_tasks(
        specs, order, load, split_dir, dataset=dataset, split=split, shard_size=shard_size, options=options
    )
    entries = _run_shard_tasks(tasks, workers=workers, progress=progress, desc=f"{dataset}/{split} shards")
    entries.sort(key=lambda e: e["name"])
    _remove_stale_shards(split_dir, dataset, split, keep={e["name"] for e in entries})
    return _write_manifest(
        split_dir,
        entries,
        dataset=dataset,
        split=split,
        shard_size=shard_size,
        shuffle_seed=shuffle_seed,
        options=options,
    )


def _check_write_options(
    specs: Sequence[Any],
    load: Callable[[Any], SequenceRecord | None],
    *,
    dataset: str,
    split: str,
    shard_size: int,
    workers: int,
    image_format: str,
) -> None:
    """Refuse, before any work, what `write_shards` cannot do (one ConfigError naming the option)."""
    for name, value in (("dataset", dataset), ("split", split)):
        if not value or not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise ConfigError(
                f"{name}={value!r}: use letters, digits, '_' or '-' only (it names the shard files)"
            )
    if shard_size < 1 or workers < 1:
        raise ConfigError(f"shard_size ({shard_size}) and workers ({workers}) must be >= 1")
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"image_format={image_format!r}: choose one of {IMAGE_FORMATS}")
    if len(specs) == 0:
        raise ConfigError(f"write_shards({dataset}/{split}): no sequences to write (the spec list is empty)")
    if workers > 1:
        try:
            pickle.dumps(load)
        except Exception as exc:
            raise ConfigError(
                f"load={load!r} cannot be pickled for workers={workers}; use a module-level function or "
                f"functools.partial ({type(exc).__name__}: {exc})"
            ) from exc


def _shard_tasks(
    specs: Sequence[Any],
    order: list[int],
    load: Callable[[Any], SequenceRecord | None],
    split_dir: Path,
    *,
    dataset: str,
    split: str,
    shard_size: int,
    options: dict[str, Any],
) -> list[dict[str, Any]]:
    """One picklable task per shard: its path, sidecar, (index, spec) items and their fingerprint."""
    tasks = []
    for i, start in enumerate(range(0, len(order), shard_size)):
        items = [(j, specs[j]) for j in order[start : start + shard_size]]
        name = shard_name(dataset, split, i)
        tasks.append(
            {
                "path": str(split_dir / name),
                "sidecar": str(split_dir / (name[: -len(".tar")] + ".json")),
                "items": items,
                "load": load,
                "options": options,
                "fingerprint": _fingerprint(items, options),
            }
        )
    return tasks


def _run_shard_tasks(
    tasks: list[dict[str, Any]], *, workers: int, progress: bool, desc: str
) -> list[dict[str, Any]]:
    """Write every shard (in `workers` processes when > 1) behind one progress bar; their manifest entries."""
    bar = tqdm(total=len(tasks), desc=desc, unit="shard", disable=not progress)
    entries: list[dict[str, Any]] = []
    if workers == 1:
        for task in tasks:
            entries.append(_write_one_shard(task))
            bar.update()
    else:
        with multiprocessing.Pool(min(workers, len(tasks))) as pool:
            for entry in pool.imap_unordered(_write_one_shard, tasks):
                entries.append(entry)
                bar.update()
    bar.close()
    return entries


def _remove_stale_shards(split_dir: Path, dataset: str, split: str, keep: set[str]) -> None:
    """Shards of an earlier, larger build of this split would otherwise sit next to the manifest unused."""
    for tar in split_dir.glob(f"{dataset}-{split}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        if tar.name not in keep:
            tar.unlink(missing_ok=True)
            tar.with_suffix(".json").unlink(missing_ok=True)


def _write_manifest(split_dir: Path, entries: list[dict[str, Any]], **info: Any) -> dict[str, Any]:
    options = info.pop("options")
    subjects: Counter[str] = Counter()
    sizes = {tuple(s) for e in entries for s in e["frame_sizes"]}
    for e in entries:
        subjects.update(e["subjects"])
    skipped = [s | {"shard": e["name"]} for e in entries for s in e["skipped"]]
    atomic_write_json(split_dir / SKIP_REPORT, {"n_skipped": len(skipped), "skipped": skipped})
    if len(sizes) > 1:
        raise CorruptDataError(
            f"{split_dir}: sequences have different frame sizes {sorted(sizes)}; resize them in the builder "
            "or pass frame_size=(H, W) to skip the odd ones"
        )
    if not subjects:
        raise CorruptDataError(f"{split_dir}: every sequence was skipped; see {split_dir / SKIP_REPORT}")
    n_samples = sum(e["n_samples"] for e in entries)
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": info["dataset"],
        "split": info["split"],
        "image_format": options["image_format"],
        "frame_size": list(sizes.pop()),
        "n_sequences": n_samples,
        "n_frames": sum(e["n_frames"] for e in entries),
        "has_silhouettes": n_samples > 0 and all(e["n_silhouettes"] == e["n_samples"] for e in entries),
        "n_subjects": len(subjects),
        "sequences_per_subject": dict(sorted(subjects.items())),
        "shard_size": info["shard_size"],
        "shuffle_seed": info["shuffle_seed"],
        "shards": [
            {"name": e["name"], "n_samples": e["n_samples"], "n_frames": e["n_frames"]} for e in entries
        ],
        "n_skipped": len(skipped),
        "skip_report": SKIP_REPORT,
    }
    atomic_write_json(split_dir / MANIFEST, manifest)
    return manifest


_REQUIRED = (
    "format_version",
    "dataset",
    "split",
    "frame_size",
    "sequences_per_subject",
    "shards",
    "image_format",
)


def read_manifest(split_dir: str | os.PathLike, *, dataset: str | None = None) -> dict[str, Any]:
    """Read and check `<split_dir>/manifest.json` of a local split directory; a missing or broken one is one
    clear error naming the fix. (A URL root is read by `biggait.data.roots.read_manifest_at`.)"""
    split_dir = Path(split_dir)
    fix = f"build it with `make data DATASET={dataset or '<name>'} OUT={split_dir.parent}`"
    if not split_dir.is_dir():
        raise DatasetNotFoundError(f"dataset split directory {split_dir} does not exist; {fix}")
    path = split_dir / MANIFEST
    if not path.is_file():
        shards = sorted(p.name for p in split_dir.glob("*.tar"))
        detail = (
            f"holds {len(shards)} shard(s) but no {MANIFEST} (an interrupted build?)"
            if shards
            else "holds no shards"
        )
        raise DatasetNotFoundError(f"{split_dir} {detail}; {fix}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorruptDataError(f"{path} cannot be read ({exc}); rebuild: {fix}") from exc
    manifest = parse_manifest(data, where=str(path), fix=fix)
    # Local files only: the sidecars and the shard files themselves (a URL root is checked while read).
    try:
        check_manifest_against_shards(manifest, split_dir)
    except ManifestFieldError as exc:
        raise CorruptDataError(f"{path}: {exc}; rebuild: {fix}") from exc
    absent = [s["name"] for s in manifest["shards"] if not (split_dir / s["name"]).is_file()]
    if absent:
        raise DatasetNotFoundError(
            f"{split_dir}: shards listed in {MANIFEST} are missing: {absent[:5]}; {fix}"
        )
    return manifest


def parse_manifest(data: bytes, *, where: str, fix: str) -> dict[str, Any]:
    """The checked manifest in `data` (read from `where`, a path or URL); one `CorruptDataError` line naming
    `where`, the field and `fix` otherwise."""
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptDataError(f"{where} is not valid JSON ({exc}); rebuild: {fix}") from exc
    if not isinstance(manifest, dict):
        raise CorruptDataError(
            f"{where} holds a JSON {type(manifest).__name__}, not an object; rebuild: {fix}"
        )
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise CorruptDataError(f"{where} lacks {missing}; rebuild: {fix}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise CorruptDataError(
            f"{where} has shard format version {manifest['format_version']}, this code reads {FORMAT_VERSION}; "
            f"rebuild: {fix}"
        )
    try:
        validate_manifest(manifest)
    except ManifestFieldError as exc:
        raise CorruptDataError(f"{where}: {exc}; rebuild: {fix}") from exc
    if not any(s["n_samples"] > 0 for s in manifest["shards"]):
        raise DatasetNotFoundError(f"{where} lists no sequences (every shard is empty); {fix}")
    return manifest


class ManifestFieldError(CorruptDataError):
    """One manifest field has the wrong type, range or count (the message names the field)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field(ok: bool, name: str, value: Any, wanted: str) -> None:
    if not ok:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ManifestFieldError(f"field {name} = {shown} must be {wanted}")


# What `shard_name` writes; nothing else is ever joined to a root (a URL, or a `pipe:` shell command).
_SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.tar")


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Types, ranges and internal consistency of a manifest; raises `ManifestFieldError` naming the field."""
    _check_header_fields(manifest)
    _check_shard_entries(manifest["shards"])
    _check_totals(manifest)


def _check_header_fields(manifest: dict[str, Any]) -> None:
    """dataset, split, image_format, frame_size and sequences_per_subject."""
    for name in ("dataset", "split"):
        _field(
            isinstance(manifest[name], str) and bool(manifest[name]),
            name,
            manifest[name],
            "a non-empty string",
        )
    fmt = manifest["image_format"]
    _field(fmt in IMAGE_FORMATS, "image_format", fmt, f"one of {list(IMAGE_FORMATS)}")
    size = manifest["frame_size"]
    _field(
        isinstance(size, list) and len(size) == 2 and all(_is_int(v) and 0 < v <= 16384 for v in size),
        "frame_size",
        size,
        "[height, width], two integers in 1..16384",
    )
    subjects = manifest["sequences_per_subject"]
    _field(
        isinstance(subjects, dict) and bool(subjects), "sequences_per_subject", subjects, "a non-empty object"
    )
    for subject, count in subjects.items():
        _field(_is_int(count) and count > 0, f"sequences_per_subject[{subject!r}]", count, "an integer > 0")


def _check_shard_entries(shards: Any) -> None:
    """Every shards[i] is {name: a bare .tar file name listed once, n_samples >= 0, n_frames >= n_samples}."""
    _field(
        isinstance(shards, list) and bool(shards), "shards", shards, "a non-empty list of {name, n_samples}"
    )
    names = set()
    for i, shard in enumerate(shards):
        _field(isinstance(shard, dict), f"shards[{i}]", shard, "an object {name, n_samples}")
        name = shard.get("name")
        _field(
            isinstance(name, str) and _SHARD_NAME.fullmatch(name) is not None,
            f"shards[{i}].name",
            name,
            "a .tar file name in the split directory (letters, digits, '_', '-', '.'; no path)",
        )
        _field(name not in names, f"shards[{i}].name", name, "listed once")
        names.add(name)
        n = shard.get("n_samples")
        _field(_is_int(n) and n >= 0, f"shards[{i}].n_samples", n, "an integer >= 0")
        if "n_frames" in shard:
            _field(
                _is_int(shard["n_frames"]) and shard["n_frames"] >= n,
                f"shards[{i}].n_frames",
                shard["n_frames"],
                f"an integer >= its n_samples ({n})",
            )


def _check_totals(manifest: dict[str, Any]) -> None:
    """The per-subject counts, n_sequences and n_subjects agree with the shard entries."""
    shards, subjects = manifest["shards"], manifest["sequences_per_subject"]
    total = sum(s["n_samples"] for s in shards)
    per_subject = sum(subjects.values())
    _field(
        per_subject == total,
        "sequences_per_subject",
        f"{per_subject} sequences in all",
        f"the sum of shards[].n_samples ({total})",
    )
    if "n_sequences" in manifest:
        _field(
            manifest["n_sequences"] == total,
            "n_sequences",
            manifest["n_sequences"],
            f"the sum of shards[].n_samples ({total})",
        )
    if "n_subjects" in manifest:
        _field(
            manifest["n_subjects"] == len(subjects),
            "n_subjects",
            manifest["n_subjects"],
            f"the number of sequences_per_subject entries ({len(subjects)})",
        )
    if "has_silhouettes" in manifest:
        _field(
            isinstance(manifest["has_silhouettes"], bool),
            "has_silhouettes",
            manifest["has_silhouettes"],
            "true or false",
        )


def check_manifest_against_shards(manifest: dict[str, Any], split_dir: Path) -> None:
    """Counts and subjects against each shard's sidecar (`<shard>.json`, written with the shard by the builder).

    A shard without a sidecar is checked while it is read instead (`biggait.data.pipeline`).
    """
    held: Counter[str] = Counter()
    checked = 0
    for i, shard in enumerate(manifest["shards"]):
        sidecar = split_dir / (shard["name"][: -len(".tar")] + ".json")
        try:
            entry = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(entry, dict) or not _is_int(entry.get("n_samples")):
            continue
        _field(
            entry["n_samples"] == shard["n_samples"],
            f"shards[{i}].n_samples",
            shard["n_samples"],
            f"{entry['n_samples']}, what {shard['name']} holds (its {sidecar.name})",
        )
        if isinstance(entry.get("subjects"), dict):
            held.update(entry["subjects"])
            checked += 1
    if checked == len(manifest["shards"]):
        listed = manifest["sequences_per_subject"]
        phantom = sorted(set(listed) - set(held))
        _field(
            not phantom,
            f"sequences_per_subject[{phantom[0]!r}]" if phantom else "",
            "listed",
            "a subject of some sample (no shard holds it)",
        )
        for subject, count in held.items():
            _field(
                listed.get(subject) == count,
                f"sequences_per_subject[{subject!r}]",
                listed.get(subject),
                f"{count}, the sequences the shards hold",
            )


def decode_image(buf: bytes, *, colour: bool, size: tuple[int, int] | None = None) -> np.ndarray:
    """cv2 decode (faster than PIL for every format measured); RGB uint8 [H, W, 3] or grey [H, W].

    With `size=(H, W)` the header is read first and any other size is refused before decoding, so a
    hostile header (e.g. 40000 x 40000 pixels) costs nothing. Every decoder failure is a `CorruptDataError`.
    """
    if size is not None:
        found = image_size(buf)
        if found != tuple(size):
            raise CorruptDataError(f"image header says {found[0]}x{found[1]}, expected {size[0]}x{size[1]}")
    try:
        image = cv2.imdecode(
            np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE
        )
    except cv2.error as exc:
        raise CorruptDataError(f"undecodable image ({str(exc).strip().splitlines()[-1]})") from exc
    if image is None:
        raise CorruptDataError("undecodable image")
    if size is not None and image.shape[:2] != tuple(size):
        raise CorruptDataError(f"image decodes to {image.shape[:2]}, expected {tuple(size)}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if colour else image
