"""Maintain a gallery file: `biggait gallery enrol|remove|list|merge`.

    biggait gallery enrol GALLERY.npz MODEL INPUT [INPUT ...] --identity NAME   (or --tree: <identity>/... folders)
    biggait gallery remove GALLERY.npz IDENTITY [IDENTITY ...] [--label LABEL ...]
    biggait gallery list GALLERY.npz [--json]
    biggait gallery merge OUT.npz GALLERY.npz [GALLERY.npz ...]

Every change is a read-modify-write of the whole file under an exclusive lock (`fcntl.flock` on
`.<name>.lock` next to it), written atomically: two processes enrolling at once both land, and a killed enrol
leaves the previous gallery. The slow part of `enrol` (embedding) runs before the lock is taken. An identity
may hold many templates (views, outfits); identify names the identity of the nearest template (biggait.ranking).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from biggait.errors import ConfigError, exit_on_error
from biggait.gallery import Gallery, GalleryError, load_gallery
from biggait.io import atomic_write_json

__all__ = ["append", "locked", "main", "merge", "remove", "summary"]


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


def _concat(base: Gallery, new: Gallery, *, names: tuple[str, str]) -> Gallery:
    """`base` + `new` after checking they come from one model and share no template label."""
    base.check_same_model(new, names=names)
    clash = sorted(set(base.labels) & set(new.labels))
    if clash:
        raise GalleryError(
            f"{names[1]} has template {clash[0]!r} that {names[0]} already holds: remove it first "
            "(biggait gallery remove --label) or enrol under another name"
        )
    return Gallery(
        np.concatenate([base.embeddings, new.embeddings]),
        base.labels + new.labels,
        base.identities + new.identities,
        base.sources + new.sources,
        base.model,
        dict(base.meta),
    )


def _stamp(meta: dict[str, Any], identities: Sequence[str], when: str) -> None:
    dates = meta.setdefault("enrolled", {})
    for name in sorted(set(identities)):
        first = dates.get(name, {}).get("first", when)
        dates[name] = {"first": min(first, when), "last": max(dates.get(name, {}).get("last", when), when)}


def append(path: str | Path, new: Gallery) -> Gallery:
    """Add the templates of `new` to the gallery file `path` (created if absent), under its lock; returns it."""
    path = Path(path)
    with locked(path):
        if path.exists():
            gallery = _concat(load_gallery(path), new, names=(f"gallery {path}", "the new footage"))
        else:
            gallery = Gallery(new.embeddings, new.labels, new.identities, new.sources, new.model, {})
        _stamp(gallery.meta, new.identities, _now())
        gallery.save(path)
    return gallery


def remove(path: str | Path, identities: Sequence[str] = (), labels: Sequence[str] = ()) -> Gallery:
    """Drop every template of `identities` and the templates `labels`; naming an absent one is an error."""
    path = Path(path)
    with locked(path):
        gallery = load_gallery(path)
        missing = sorted(set(identities) - set(gallery.identities)) + sorted(
            set(labels) - set(gallery.labels)
        )
        if missing:
            raise GalleryError(
                f"gallery {path} holds no identity or template {missing[0]!r}; see `biggait gallery list`"
            )
        drop = np.isin(gallery.identities, list(identities)) | np.isin(gallery.labels, list(labels))
        kept = gallery.select(~drop)
        kept.meta = dict(gallery.meta)
        left = set(kept.identities)
        kept.meta["enrolled"] = {k: v for k, v in gallery.meta.get("enrolled", {}).items() if k in left}
        kept.save(path)
    return kept


def merge(out: str | Path, inputs: Sequence[str | Path]) -> Gallery:
    """One gallery of the templates of all `inputs` (one model, no shared label); enrolment dates are kept, a
    calibration is not (it was measured on another gallery: run `biggait calibrate` again)."""
    if not inputs:
        raise ConfigError("merge needs at least one input gallery")
    with locked(out):
        merged = load_gallery(inputs[0])
        merged.meta = {"enrolled": dict(merged.meta.get("enrolled", {}))}
        for path in inputs[1:]:
            other = load_gallery(path)
            merged = _concat(
                merged, other, names=(f"gallery {inputs[0]} (and those merged so far)", f"gallery {path}")
            )
            for name, dates in other.meta.get("enrolled", {}).items():
                _stamp(merged.meta, [name], dates["first"])
                _stamp(merged.meta, [name], dates["last"])
        merged.save(out)
    return merged


def summary(gallery: Gallery) -> dict[str, Any]:
    """What `list` prints: model, sizes, calibration and, per identity, templates and enrolment dates."""
    names, counts = np.unique(np.asarray(gallery.identities, dtype=np.str_), return_counts=True)
    dates = gallery.meta.get("enrolled", {})
    return {
        "model": gallery.model,
        "templates": len(gallery),
        "identities": [
            {"identity": str(n), "templates": int(c), **dates.get(str(n), {"first": "-", "last": "-"})}
            for n, c in zip(names, counts)
        ],
        "embedding": list(gallery.embeddings.shape[1:]),
        "openset": gallery.meta.get("openset"),
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
    gallery = append(args.gallery, new)
    people = sorted(set(new.identities))
    print(f"enrolled {len(new)} templates of {', '.join(people[:5])}{' ...' if len(people) > 5 else ''} into "
          f"{args.gallery}: now {len(gallery)} templates of {len(set(gallery.identities))} identities")  # fmt: skip
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
            print(f"{args.gallery}: {len(kept)} templates of {len(set(kept.identities))} identities left")
        elif args.action == "merge":
            merged = merge(args.out, args.inputs)
            print(f"wrote {args.out}: {len(merged)} templates of {len(set(merged.identities))} identities")
        else:
            info = summary(load_gallery(args.gallery))
            if args.json is not None:
                atomic_write_json(args.json, info)
            _print_summary(info, args.gallery)
    return 0


if __name__ == "__main__":
    sys.exit(main())
