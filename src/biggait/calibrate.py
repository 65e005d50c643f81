"""`biggait calibrate`: choose the open-set threshold D and margin M on a labelled split for a target
false-accept rate and write them into the gallery's metadata, where `biggait identify` picks them up.

    biggait calibrate GALLERY.npz PROBES.npz [--far 0.01] [--plot det.png] [--dry-run] [--json OUT.json]

PROBES are labelled walks (their identity is the first folder of their label, or `--identity` at embed time):
those of enrolled people are genuine attempts, and every probe is also an impostor attempt with its own identity
left out (biggait.openset). Calibrate on walks that are not the ones you report numbers on: score another split
with `biggait identify GALLERY PROBES2 --score`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from biggait.errors import exit_on_error
from biggait.gallery import GalleryRows, load_gallery
from biggait.gallery_cli import update_meta
from biggait.io import atomic_write_json
from biggait.openset import attempts, calibrate, det_plot
from biggait.ranking import rank_identities

__all__ = ["main", "write_calibration"]

_TARGETS = (0.001, 0.01, 0.05, 0.1)  # FAR targets of the printed table


def write_calibration(gallery_path: str | Path, chosen: dict[str, Any], probes_path: str | Path) -> None:
    """Store `chosen` as the gallery's `meta["openset"]`, under the gallery's lock (enrolments are not lost)."""

    def change(meta: dict[str, Any], rows: GalleryRows) -> None:
        meta["openset"] = {
            **chosen,
            "calibrated_on": str(probes_path),
            "identities_enrolled": len(rows.identity_counts()),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    update_meta(gallery_path, change)


def _report(table: list[dict[str, Any]], chosen: dict[str, Any]) -> str:
    lines = [
        f"{'FAR target':>10}  {'D':>8}  {'M':>8}  {'FAR':>7}  {'FRR':>7}  {'misnamed':>8}  {'rank-1 known':>12}"
    ]
    for p in table:
        mark = "  <- chosen" if p is chosen else ""
        lines.append(
            f"{p['far_target']:>9.1f}%  {p['threshold']:>8.4f}  {p['margin']:>8.4f}  {p['FAR']:>6.2f}%  "
            f"{p['FRR']:>6.2f}%  {p['misnamed']:>7.2f}%  {p['rank1_known']:>11.2f}%{mark}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="biggait calibrate", description=__doc__.strip().splitlines()[0],
                                     epilog="See docs/inference.md.")  # fmt: skip
    parser.add_argument("gallery", type=Path, help="gallery .npz: the calibration is written into it")
    parser.add_argument("probes", type=Path, help="labelled probes .npz (biggait embed, same model)")
    parser.add_argument(
        "--far", type=float, default=0.01, help="target false-accept rate (default 0.01 = 1 %%)"
    )
    parser.add_argument("--plot", type=Path, default=None, help="write the DET plot (PNG) here")
    parser.add_argument("--dry-run", action="store_true", help="print, but leave the gallery unchanged")
    parser.add_argument("--json", type=Path, default=None, help="also write the chosen point as JSON here")
    args = parser.parse_args(argv)
    with exit_on_error():
        probes = load_gallery(args.probes)
        tries = attempts(rank_identities(args.gallery, probes, top_k=3))
        chosen = calibrate(tries, far=args.far)
        table = [calibrate(tries, far=f) for f in _TARGETS if abs(f - args.far) > 1e-12] + [chosen]
        table.sort(key=lambda p: p["far_target"])
        if args.plot is not None:
            det_plot(tries, chosen, args.plot)
        if args.json is not None:
            atomic_write_json(args.json, chosen)
        if not args.dry_run:
            write_calibration(args.gallery, chosen, args.probes)
    print(
        f"{int(chosen['genuine'])} genuine and {int(chosen['impostor'])} impostor attempts from {args.probes}"
    )
    print(_report(table, chosen))
    where = "not written (--dry-run)" if args.dry_run else f"written into {args.gallery}"
    print(f"threshold D = {chosen['threshold']:.6g}, margin M = {chosen['margin']:.6g}: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
