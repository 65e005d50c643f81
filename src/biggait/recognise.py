"""`biggait identify`: who is walking, and how sure. Probes against a gallery of identities (several templates
each), top-k distinct people per probe, an open-set decision ("unknown" unless near enough and clearly ahead
of the runner-up: biggait.openset), a summary, a per-track summary for windowed probes (biggait.windows) and,
with --score, the evaluator's rank-1 / rank-5 / mAP where the probes carry their identities.

    biggait identify GALLERY.npz PROBES.npz [--top-k K] [--threshold D] [--margin M] [--score] [--json OUT]
    biggait identify FOLDER PROBES.npz [--candidates C] [--nprobe P] [--exact] ...

The gallery may be a mapped gallery folder written by `biggait index` (docs/index.md): its FAISS index proposes
candidates that are re-ranked by the exact part-wise distance (biggait.ranking), or, with --exact or without an
index, its memory map is streamed exactly. --score always scores exactly, streaming the memory map.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from biggait.errors import ConfigError, exit_on_error
from biggait.gallery import Gallery, GalleryError, load_gallery, read_gallery_meta, read_gallery_model
from biggait.index import MappedGallery
from biggait.io import atomic_write_json, check_writable
from biggait.openset import UNKNOWN, attempts, decide, operating_point, validate_threshold
from biggait.ranking import Ranking, rank_identities, score
from biggait.windows import split_window_label, track_summary

__all__ = ["format_probes", "main", "recognise", "resolve_openset"]


def resolve_openset(
    gallery: Gallery | MappedGallery | str | Path,
    threshold: float | None,
    margin: float | None,
    *,
    closed_set: bool = False,
) -> tuple[float | None, float | None, str]:
    """The threshold and margin to apply: the options, else the gallery's calibration (biggait calibrate), else
    none (closed set); and where they came from."""
    validate_threshold(threshold, margin)
    if closed_set or threshold is not None or margin is not None:
        return threshold, margin, "closed set" if closed_set else "options"
    if isinstance(gallery, Gallery):
        meta = gallery.meta
    else:
        meta = gallery.gallery_meta if isinstance(gallery, MappedGallery) else read_gallery_meta(gallery)
    cal = meta.get("openset")
    if not cal:
        return None, None, "closed set (no calibration in the gallery: biggait calibrate)"
    try:
        threshold, margin = float(cal["threshold"]), float(cal["margin"])
        validate_threshold(threshold, margin)
    except (TypeError, KeyError, ValueError):
        raise GalleryError(
            f"the calibration in gallery {getattr(gallery, 'folder', gallery)} is not a threshold and margin: "
            "calibrate it again (biggait calibrate)"
        ) from None
    return threshold, margin, "the gallery's calibration"


def recognise(
    gallery: Gallery | MappedGallery | str | Path,
    probes: Gallery,
    *,
    top_k: int = 5,
    threshold: float | None = None,
    margin: float | None = None,
    candidates: int | None = None,
    nprobe: int = 16,
) -> tuple[Ranking, list[dict[str, Any]]]:
    """The ranking (at least 3 identities deep, for the margin and the open-set metrics) and one record per
    probe: {"probe", "probe_identity", "decision", "matches": [{"identity", "label", "distance"}, ...]};
    `candidates` searches a mapped gallery's index (biggait.ranking)."""
    ranking = rank_identities(gallery, probes, top_k=max(top_k, 3), candidates=candidates, nprobe=nprobe)
    decisions = decide(ranking, threshold=threshold, margin=margin)
    records = [
        {
            "probe": label,
            "probe_identity": truth,
            "decision": decision,
            "matches": [
                {"identity": i, "label": t, "distance": d}
                for i, t, d in list(zip(ids, templates, ds))[:top_k]
            ],
        }
        for label, truth, decision, ids, templates, ds in zip(
            ranking.probes, ranking.probe_identities, decisions, ranking.identities, ranking.templates,
            ranking.distances,
        )
    ]  # fmt: skip
    return ranking, records


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def format_probes(records: Sequence[dict[str, Any]]) -> str:
    """One line per probe: its label and identity, the decision, its distance and nearest template, then the
    top-k people."""
    rows = [
        ("probe", "probe identity", "decision", "distance", "nearest template", "nearest people (distance)")
    ]
    for r in records:
        top = r["matches"][0] if r["matches"] else {"distance": None, "label": "-"}
        best = f"{top['distance']:.4f}" if top["distance"] is not None else "-"
        people = ", ".join(f"{m['identity']} ({m['distance']:.3f})" for m in r["matches"])
        rows.append((r["probe"], r["probe_identity"], r["decision"], best, top["label"], people))
    return _table(rows)


def format_tracks(summaries: Sequence[dict[str, Any]]) -> str:
    """One line per track of windowed probes."""
    rows = [("track", "windows", "identity (majority)", "votes", "mean distance", "switches", "timeline")]
    for s in summaries:
        rows.append((s["track"], str(s["windows"]), s["identity"], str(s["votes"]), f"{s['mean_distance']:.4f}",
                     str(s["switches"]), s["timeline"]))  # fmt: skip
    return _table(rows)


def _rule(threshold: float | None, margin: float | None) -> str:
    return ", ".join(
        f"{name} = {value:.4g}" for name, value in (("D", threshold), ("M", margin)) if value is not None
    )


def _summary(records: Sequence[dict[str, Any]], ranking: Ranking, openset: tuple) -> str:
    threshold, margin, origin = openset
    named = Counter(r["decision"] for r in records if r["decision"] != UNKNOWN)
    closed = threshold is None and margin is None
    rule = origin if closed else f"{_rule(threshold, margin)} from {origin}"
    people = ", ".join(f"{n} x{c}" for n, c in named.most_common(8)) + (" ..." if len(named) > 8 else "")
    return (
        f"{len(records)} probes against {len(ranking.enrolled)} gallery identities ({rule}): "
        f"{sum(named.values())} named, {len(records) - sum(named.values())} unknown; {people}"
    )


def _scores(
    gallery: Gallery | MappedGallery | Path, probes: Gallery, ranking: Ranking, openset: tuple
) -> str:
    s = score(gallery, probes)
    known = [i for i, t in enumerate(ranking.probe_identities) if t in ranking.enrolled]
    top5 = 100 * sum(ranking.probe_identities[i] in ranking.identities[i][:5] for i in known) / len(known)
    lines = [
        f"closed set, {int(s['probes'])} probes of enrolled identities ({int(s['unknown'])} of others): "
        f"rank-1 {s['rank1']:.2f} %, rank-5 {s['rank5']:.2f} %, mAP {s['mAP']:.2f} % (the evaluator's, over "
        f"gallery entries); top-5 people {top5:.2f} %"
    ]
    threshold, margin, _ = openset
    if threshold is not None or margin is not None:
        p = operating_point(attempts(ranking), threshold, margin)
        lines.append(
            f"open set at {_rule(threshold, margin)}: FAR {p['FAR']:.2f} % of {int(p['impostor'])} impostor "
            f"attempts, FRR {p['FRR']:.2f} %, misnamed {p['misnamed']:.2f} % of {int(p['genuine'])} genuine"
        )
    return "\n".join(lines)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.strip().splitlines()[0],
                                     epilog="See docs/inference.md.")  # fmt: skip
    parser.add_argument(
        "gallery",
        type=Path,
        help="gallery .npz (biggait gallery enrol, or biggait embed), or a folder of biggait index",
    )
    parser.add_argument("probes", type=Path, help="probes .npz written by `biggait embed` (same model)")
    parser.add_argument("--top-k", type=int, default=5, help="distinct people listed per probe (default 5)")
    parser.add_argument(
        "--threshold", type=float, default=None, help="unknown unless the nearest person is within D"
    )
    parser.add_argument(
        "--margin", type=float, default=None, help="... and nearer than the runner-up person by M"
    )
    parser.add_argument(
        "--closed-set", action="store_true", help="ignore the gallery's calibration: always name"
    )
    parser.add_argument("--score", action="store_true", help="rank-1/5 and mAP from the probes' identities")
    parser.add_argument(
        "--quiet", action="store_true", help="print only the summaries, not one line per probe"
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the per-probe records as JSON here"
    )
    parser.add_argument("--candidates", type=int, default=100,
                        help="folder with an index: rows FAISS proposes per probe, re-ranked exactly (default 100)")  # fmt: skip
    parser.add_argument(
        "--nprobe", type=int, default=16, help="folder with an index: cells searched (default 16)"
    )
    parser.add_argument("--exact", action="store_true", help="folder: stream the memory map, not the index")
    return parser


def _open_gallery(args: argparse.Namespace) -> tuple[MappedGallery | Path, int | None]:
    """The gallery (a mapped folder opened, or the checked path of a file) and the candidates to search, None
    for the exact search; one error line for a broken gallery before any work."""
    if args.candidates < 1 or args.nprobe < 1:
        raise ConfigError(f"--candidates and --nprobe must be >= 1, got {args.candidates} and {args.nprobe}")
    if not args.gallery.is_dir() or not (args.gallery / "meta.json").is_file():
        read_gallery_model(args.gallery)  # a folder without meta.json: "is a directory, not a file"
        return args.gallery, None
    mapped = MappedGallery(args.gallery)  # without labels.npy: biggait.ranking names the fix
    exact = args.exact or not (mapped.folder / "index.faiss").is_file()
    return mapped, None if exact else args.candidates


def main(argv: Sequence[str] | None = None, *, prog: str = "biggait identify") -> int:
    args = _parser(prog).parse_args(argv)
    with exit_on_error():
        if args.top_k < 1:
            raise ConfigError(f"--top-k must be an integer >= 1, got {args.top_k}")
        validate_threshold(args.threshold, args.margin)  # NaN or -1 would make every probe "unknown"
        if args.json is not None:
            check_writable(args.json, "--json")  # before any work
        probes = load_gallery(args.probes, what="probes")
        gallery, candidates = _open_gallery(args)
        openset = resolve_openset(gallery, args.threshold, args.margin, closed_set=args.closed_set)
        ranking, records = recognise(gallery, probes, top_k=args.top_k, threshold=openset[0], margin=openset[1],
                                     candidates=candidates, nprobe=args.nprobe)  # fmt: skip
        windowed = any(split_window_label(r["probe"]) for r in records)
        tracks = track_summary(
            [r["probe"] for r in records], [r["decision"] for r in records],
            [r["matches"][0]["distance"] if r["matches"] else float("inf") for r in records],
        ) if windowed else []  # fmt: skip
        scores = _scores(gallery, probes, ranking, openset) if args.score else None
        if args.json is not None:
            atomic_write_json(args.json, {"probes": records, "tracks": tracks} if windowed else records)
    if not args.quiet:
        print(format_probes(records))
    if tracks:
        print(format_tracks(tracks))
    print(_summary(records, ranking, openset))
    if scores:
        print(scores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
