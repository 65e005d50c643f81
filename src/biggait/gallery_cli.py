"""Maintain a gallery file: `biggait gallery enrol|remove|list|merge`.

    biggait gallery enrol GALLERY.npz MODEL INPUT [INPUT ...] --identity NAME   (or --tree: <identity>/... folders)
    biggait gallery remove GALLERY.npz IDENTITY [IDENTITY ...] [--label LABEL ...]
    biggait gallery list GALLERY.npz [--json]
    biggait gallery merge OUT.npz GALLERY.npz [GALLERY.npz ...]

Every change rewrites the file under an exclusive lock (`fcntl.flock` on `.<name>.lock` next to it), streaming
the old rows chunk by chunk into a new file that replaces it atomically: memory is set by the chunk size (and
the number of identities), not by the gallery's size; two processes enrolling at once both land, and a killed
enrol leaves the previous gallery. The slow part of `enrol` (embedding) runs before the lock is taken. An identity
may hold many templates (views, outfits); identify names the identity of the nearest template (biggait.ranking).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from biggait.errors import ConfigError, exit_on_error
from biggait.gallery import Gallery, GalleryError, GalleryRows, read_gallery_meta, write_gallery
from biggait.io import atomic_write_json

__all__ = ["append", "locked", "main", "merge", "remove", "summary", "update_meta"]


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of gallery `path` (a `.<name>.lock` file beside it; released if the holder dies)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_compatible(base: GalleryRows, other: GalleryRows) -> None:
    """Embeddings of two different models (or shapes) are not comparable."""
    if base.model != other.model:
        raise GalleryError(
            f"{base.name} was embedded by model {base.model[:12]} and {other.name} by model "
            f"{other.model[:12]}: embeddings of different models cannot be compared; embed both with one model"
        )
    if tuple(base.row_shape) != tuple(other.row_shape):
        raise GalleryError(
            f"{base.name} embeddings {tuple(base.row_shape)} and {other.name} {tuple(other.row_shape)} differ"
        )


def _label_hashes(labels: np.ndarray) -> np.ndarray:
    """A 64-bit hash per fixed-width unicode label (equal strings hash equal whatever the array's width)."""
    width = labels.dtype.itemsize // 4
    codes = np.ascontiguousarray(labels).view(np.uint32).reshape(len(labels), width).astype(np.uint64)
    z = (np.arange(1, width + 1, dtype=np.uint64)) * np.uint64(0x9E3779B97F4A7C15)  # splitmix64 weights
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (codes * (z | np.uint64(1))).sum(axis=1, dtype=np.uint64)  # wraps modulo 2**64


def _shared_label(parts: Sequence[GalleryRows]) -> tuple[str, GalleryRows, GalleryRows] | None:
    """A template label that two of `parts` both hold, with the two; None if there is none. Holds 8 bytes per
    template (a hash of its label), not the labels: equal hashes are confirmed on the strings."""
    seen = np.empty(0, np.uint64)
    for i, part in enumerate(parts):
        hashes = [_label_hashes(c) for c in part.chunks("labels")]
        mine = np.concatenate(hashes) if hashes else seen[:0]
        if i and np.isin(mine, seen).any():
            suspects = np.unique(
                np.concatenate([c[np.isin(_label_hashes(c), seen)] for c in part.chunks("labels")])
            )
            for earlier in parts[:i]:
                for chunk in earlier.chunks("labels"):
                    hit = chunk[np.isin(chunk, suspects)]
                    if len(hit):
                        return str(hit[0]), earlier, part
        seen = np.union1d(seen, mine)
    return None


def _stamp(meta: dict[str, Any], identities: Sequence[str], when: str) -> None:
    dates = meta.setdefault("enrolled", {})
    for name in sorted(set(identities)):
        first = dates.get(name, {}).get("first", when)
        dates[name] = {"first": min(first, when), "last": max(dates.get(name, {}).get("last", when), when)}


def _join(parts: Sequence[GalleryRows]) -> None:
    """Refuse parts of different models or with a template label in common."""
    for other in parts[1:]:
        _check_compatible(parts[0], other)
    shared = _shared_label(parts)
    if shared:
        label, first, second = shared
        raise GalleryError(
            f"{second.name} has template {label!r} that {first.name} already holds: remove it first "
            "(biggait gallery remove --label) or enrol under another name"
        )


def append(path: str | Path, new: Gallery) -> dict[str, Any]:
    """Add the templates of `new` to the gallery file `path` (created if absent), under its lock, streaming the
    file's rows into the new one; returns the gallery's `summary`."""
    path = Path(path)
    with locked(path):
        parts = [GalleryRows(new)]
        meta: dict[str, Any] = {}
        if path.exists():
            parts.insert(0, GalleryRows(path))
            meta = read_gallery_meta(path)
            _join(parts)
        _stamp(meta, new.identities, _now())
        write_gallery(path, parts, model=new.model, meta=meta)
        return summary(path)


def _found(
    rows: GalleryRows, identities: np.ndarray, labels: np.ndarray
) -> tuple[set[str], set[str], set[str]]:
    """(the named identities present, the named labels present, the identities that keep a template)."""
    ids, labs, left = set(), set(), set()
    for lab, idc in zip(rows.chunks("labels"), rows.chunks("identities"), strict=True):
        drop = np.isin(idc, identities) | np.isin(lab, labels)
        ids.update(np.intersect1d(idc, identities).tolist())
        labs.update(np.intersect1d(lab, labels).tolist())
        left.update(np.unique(idc[~drop]).tolist())
    return ids, labs, left


def remove(path: str | Path, identities: Sequence[str] = (), labels: Sequence[str] = ()) -> dict[str, Any]:
    """Drop every template of `identities` and the templates `labels`; naming an absent one is an error."""
    path = Path(path)
    ids, labs = np.asarray(list(identities), dtype=np.str_), np.asarray(list(labels), dtype=np.str_)
    with locked(path):
        rows = GalleryRows(path)
        meta = read_gallery_meta(path)
        found_ids, found_labs, left = _found(rows, ids, labs)
        missing = sorted(set(identities) - found_ids) + sorted(set(labels) - found_labs)
        if missing:
            raise GalleryError(
                f"gallery {path} holds no identity or template {missing[0]!r}; see `biggait gallery list`"
            )
        meta["enrolled"] = {k: v for k, v in meta.get("enrolled", {}).items() if k in left}
        kept = GalleryRows(path, keep=lambda lab, idc: ~(np.isin(idc, ids) | np.isin(lab, labs)))
        write_gallery(path, [kept], model=rows.model, meta=meta)
        return summary(path)


def merge(out: str | Path, inputs: Sequence[str | Path]) -> dict[str, Any]:
    """One gallery of the templates of all `inputs` (one model, no shared label), streamed; enrolment dates are
    kept, a calibration is not (it was measured on another gallery: run `biggait calibrate` again)."""
    if not inputs:
        raise ConfigError("merge needs at least one input gallery")
    with locked(out):
        parts = [GalleryRows(path) for path in inputs]
        _join(parts)
        meta: dict[str, Any] = {"enrolled": {}}
        for path in inputs:
            for name, dates in read_gallery_meta(path).get("enrolled", {}).items():
                _stamp(meta, [name], dates["first"])
                _stamp(meta, [name], dates["last"])
        write_gallery(out, parts, model=parts[0].model, meta=meta)
        return summary(out)


def update_meta(path: str | Path, change: Callable[[dict[str, Any], GalleryRows], None]) -> None:
    """Let `change(meta, rows)` edit the metadata of a gallery file, under its lock (the rows are streamed into
    the new file; an enrolment running at the same time is not lost)."""
    with locked(path):
        rows = GalleryRows(path)
        meta = read_gallery_meta(path)
        change(meta, rows)
        write_gallery(path, [rows], model=rows.model, meta=meta)


def summary(gallery: str | Path) -> dict[str, Any]:
    """What `list` prints: model, sizes, calibration and, per identity, templates and enrolment dates; the
    identities are counted chunk by chunk (memory grows with the number of people, not of templates)."""
    rows = GalleryRows(gallery)
    meta = read_gallery_meta(gallery)
    counts = rows.identity_counts()
    dates = meta.get("enrolled", {})
    return {
        "model": rows.model,
        "templates": len(rows),
        "identities": [
            {"identity": n, "templates": c, **dates.get(n, {"first": "-", "last": "-"})}
            for n, c in sorted(counts.items())
        ],
        "embedding": list(rows.row_shape),
        "openset": meta.get("openset"),
    }


def _print_summary(info: dict[str, Any], path: Path) -> None:
    print(f"gallery {path}: {info['templates']} templates of {len(info['identities'])} identities, "
          f"embeddings {'x'.join(map(str, info['embedding']))}, model {info['model'][:12]}")  # fmt: skip
    cal = info["openset"]
    if cal:
        print(f"open-set: threshold D = {cal['threshold']:.4g}, margin M = {cal['margin']:.4g} (FAR {cal['FAR']:.2f} % "
              f"on {cal['calibrated_on']}, {cal['identities_enrolled']} identities enrolled then)")  # fmt: skip
    width = max([len("identity")] + [len(e["identity"]) for e in info["identities"]])
    print(f"{'identity':<{width}}  templates  first enrolled              last enrolled")
    for e in info["identities"]:
        print(f"{e['identity']:<{width}}  {e['templates']:>9}  {e['first']:<26}  {e['last']}")


def _enrol(args: argparse.Namespace) -> int:
    from biggait.checkpoint import load_model
    from biggait.embed import embed_inputs

    if (args.identity is None) == (not args.tree):
        raise ConfigError(
            "enrol needs --identity NAME (every INPUT is that person) or --tree (INPUT holds <identity>/... "
            "folders); a folder's own name is never taken as a person's name"
        )
    model = load_model(args.model)
    new = embed_inputs(
        model, args.inputs, tracks=args.tracks, identity=args.identity, device=args.device,
        precision=args.precision, max_frames=args.max_frames, batch_frames=args.batch_frames,
    )  # fmt: skip
    if args.identity is not None:  # templates of a named person are labelled under the name: `ann/walk1`
        new.labels = [f"{args.identity}/{label}" for label in new.labels]
    info = append(args.gallery, new)
    people = sorted(set(new.identities))
    print(f"enrolled {len(new)} templates of {', '.join(people[:5])}{' ...' if len(people) > 5 else ''} into "
          f"{args.gallery}: now {info['templates']} templates of {len(info['identities'])} identities")  # fmt: skip
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biggait gallery", description=__doc__.strip().splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="options: enrol --identity NAME | --tree, --tracks, --max-frames, --batch-frames, --device,\n"
        "  --precision; remove --label; list --json (biggait gallery ACTION --help). See docs/inference.md.",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="action", required=True)
    enrol = sub.add_parser("enrol", help="embed footage and add it to the gallery under a name")
    enrol.add_argument("gallery", type=Path, help="gallery .npz (created when absent)")
    enrol.add_argument(
        "model", type=Path, help="model file (.ckpt or official .pt); must be the gallery's model"
    )
    enrol.add_argument(
        "inputs", type=Path, nargs="+", metavar="INPUT", help="frames folder, tree of them, or video"
    )
    who = enrol.add_mutually_exclusive_group()
    who.add_argument("--identity", help="the person every INPUT shows")
    who.add_argument(
        "--tree", action="store_true", help="identity = first folder below INPUT (<id>/<type>/<view>)"
    )
    enrol.add_argument("--tracks", type=Path, help="MOTChallenge tracks of the (one) video INPUT")
    enrol.add_argument("--max-frames", type=int, default=None, help="embed only the first N frames of each")
    enrol.add_argument("--batch-frames", type=int, default=256, help="frames per forward pass (default 256)")
    enrol.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    enrol.add_argument("--precision", default="32", help="as for `biggait embed` (default 32)")
    rm = sub.add_parser("remove", help="remove identities (all their templates) or single templates")
    rm.add_argument("gallery", type=Path)
    rm.add_argument("identities", nargs="*", metavar="IDENTITY")
    rm.add_argument("--label", action="append", default=[], help="remove only this template (repeatable)")
    ls = sub.add_parser("list", help="identities, templates per identity, model fingerprint, dates")
    ls.add_argument("gallery", type=Path)
    ls.add_argument("--json", type=Path, default=None, help="also write the listing as JSON here")
    mg = sub.add_parser("merge", help="merge galleries of one model into OUT")
    mg.add_argument("out", type=Path)
    mg.add_argument("inputs", type=Path, nargs="+", metavar="GALLERY")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with exit_on_error():
        if args.action == "enrol":
            return _enrol(args)
        if args.action == "remove":
            if not args.identities and not args.label:
                raise ConfigError("remove needs an IDENTITY or --label LABEL")
            kept = remove(args.gallery, args.identities, args.label)
            print(
                f"{args.gallery}: {kept['templates']} templates of {len(kept['identities'])} identities left"
            )
        elif args.action == "merge":
            merged = merge(args.out, args.inputs)
            print(
                f"wrote {args.out}: {merged['templates']} templates of {len(merged['identities'])} identities"
            )
        else:
            info = summary(args.gallery)
            if args.json is not None:
                atomic_write_json(args.json, info)
            _print_summary(info, args.gallery)
    return 0


if __name__ == "__main__":
    sys.exit(main())
