"""`biggait annotate`: a scene video and its tracks -> who is walking, drawn on the video.

    biggait annotate MODEL GALLERY.npz VIDEO --tracks MOT.txt --out-dir DIR [--window 16 --stride 8]
                     [--threshold D --margin M | --closed-set]

Writes into DIR: `<stem>.annotated.mp4` (every track's box, its identity or "unknown" and the distance, one colour
per identity, grey for unknown), `<stem>.identities.txt` (the MOTChallenge lines with two more columns, the
identity and the distance: `frame,id,x,y,w,h,conf,-1,-1,-1,identity,distance`), `<stem>.contact.png` (one row
per track: crops along the track, then the nearest gallery templates where their frames can be read) and
`<stem>.tracks.json` (the per-track summary). With --window, every frame shows the decision of the window
centred nearest to it, so a name can change along a track (biggait.windows).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from biggait.errors import ConfigError, exit_on_error
from biggait.io import atomic_write_bytes, atomic_write_json
from biggait.openset import UNKNOWN
from biggait.recognise import format_tracks, recognise, resolve_openset
from biggait.sources import IMAGE_SUFFIXES, read_tracks, video_frames
from biggait.windows import split_window_label, track_summary

__all__ = ["frame_decisions", "identity_colour", "main", "write_mot"]

Box = tuple[float, float, float, float]


def identity_colour(name: str) -> tuple[int, int, int]:
    """A stable, saturated RGB colour per identity name; grey for unknown."""
    if name == UNKNOWN:
        return (150, 150, 150)
    hue = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=2).digest(), "little") % 180
    hsv = np.array([[[hue, 220, 235]]], np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])  # type: ignore[return-value]


def frame_decisions(
    tracks: dict[int, dict[int, Box]], stem: str, records: Sequence[dict[str, Any]]
) -> dict[int, dict[int, tuple[str, float]]]:
    """{frame: {track id: (name, distance)}}: a track's decision, or with windows the decision of the window
    whose centre is nearest to the frame (window positions index the track's frames in order)."""
    windows: dict[int, list[tuple[float, str, float]]] = {}
    for r in records:
        parsed = split_window_label(r["probe"])
        label, first, last = parsed if parsed else (r["probe"], 1, 1 << 30)
        tid = int(label.rsplit("/", 1)[-1])
        dist = r["matches"][0]["distance"] if r["matches"] else float("inf")
        windows.setdefault(tid, []).append(((first + last) / 2 - 1, r["decision"], dist))
    out: dict[int, dict[int, tuple[str, float]]] = {}
    for tid, boxes in tracks.items():
        if tid not in windows:
            raise ConfigError(
                f"track {tid} of the tracks file has no embedding: was the video {stem} embedded?"
            )
        centres = np.array([c for c, _, _ in windows[tid]])
        for pos, frame in enumerate(sorted(boxes)):
            _, name, dist = windows[tid][int(np.abs(centres - pos).argmin())]
            out.setdefault(frame, {})[tid] = (name, dist)
    return out


def write_mot(
    path: Path, tracks: dict[int, dict[int, Box]], decided: dict[int, dict[int, tuple[str, float]]]
) -> None:
    """The tracks as MOTChallenge lines plus identity and distance columns, frame by frame."""
    lines = [
        f"{frame},{tid},{x:g},{y:g},{w:g},{h:g},1,-1,-1,-1,{name},{dist:.4f}"
        for frame in sorted(decided)
        for tid, (name, dist) in sorted(decided[frame].items())
        for x, y, w, h in [tracks[tid][frame]]
    ]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def _draw(rgb: np.ndarray, boxes: list[tuple[Box, str, float, int]]) -> np.ndarray:
    out = np.ascontiguousarray(rgb[..., ::-1])  # BGR for OpenCV's drawing and writer
    for (x, y, w, h), name, dist, tid in boxes:  # "3: ann 0.41": the track id shows identity switches
        colour = identity_colour(name)[::-1]
        p0, p1 = (int(round(x)), int(round(y))), (int(round(x + w)) - 1, int(round(y + h)) - 1)
        cv2.rectangle(out, p0, p1, colour, 2)
        text = f"{tid}: {name} {dist:.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        top = max(th + 4, p0[1])
        cv2.rectangle(out, (p0[0], top - th - 4), (p0[0] + tw + 2, top), colour, -1)
        cv2.putText(out, text, (p0[0] + 1, top - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def write_video(
    video: Path, out: Path, tracks: dict[int, dict[int, Box]], decided: dict, *, samples: dict[int, list[int]]
) -> tuple[int, dict[int, list[np.ndarray]]]:
    """Draw every frame of `video` into `out` (.mp4 mp4v, .avi MJPG, .mkv FFV1; written beside it, then renamed);
    returns the frame count and the crops of the `samples` {frame: [track ids]}, per track."""
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    cap.release()
    writer, n, crops = None, 0, {}
    try:
        for n, rgb in enumerate(video_frames(video), 1):
            for tid in samples.get(n, []):
                x, y, w, h = (int(round(v)) for v in tracks[tid][n])
                crops.setdefault(tid, []).append(rgb[max(0, y) : y + h, max(0, x) : x + w].copy())
            if writer is None:
                fourcc = {".avi": "MJPG", ".mkv": "FFV1"}.get(out.suffix.lower(), "mp4v")
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, rgb.shape[1::-1])
                if not writer.isOpened():
                    raise ConfigError(f"OpenCV cannot write {out.suffix} video to {out.parent}")
            boxes = [(tracks[tid][n], name, dist, tid) for tid, (name, dist) in decided.get(n, {}).items()]
            writer.write(_draw(rgb, boxes))
        assert writer is not None
        writer.release()
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.release()
        tmp.unlink(missing_ok=True)
    return n, crops


_TILE = (96, 48)  # contact-sheet tile (H, W)


def _tile(crop: np.ndarray | None, caption: str, colour: tuple[int, int, int]) -> np.ndarray:
    """One RGB contact-sheet tile: the crop padded to the tile (or blank) with a caption bar in `colour`."""
    from biggait.preprocess import pad_and_resize

    h, w = _TILE
    tile = np.full((h + 14, w, 3), 255, np.uint8)
    if crop is not None and crop.size:
        tile[:h] = pad_and_resize(np.ascontiguousarray(crop), (h, w))
    tile[h:] = colour
    cv2.putText(tile, caption[:9], (1, h + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.32, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


def _template_crop(source: str) -> np.ndarray | None:
    """The first frame of a gallery template whose source is a frames folder; None otherwise."""
    folder = Path(source)
    if not folder.is_dir():
        return None
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    bgr = cv2.imread(str(frames[0])) if frames else None
    return None if bgr is None else np.ascontiguousarray(bgr[..., ::-1])


def contact_sheet(
    path: Path, summaries: list[dict[str, Any]], crops: dict[int, list[np.ndarray]],
    matches: dict[str, list[dict[str, Any]]], sources: dict[str, str],
) -> None:  # fmt: skip
    """One row per track: its decision, crops along it, then its nearest gallery templates; as a PNG."""
    rows = []
    for s in summaries:
        tid = int(s["track"].rsplit("/", 1)[-1])
        colour = identity_colour(s["identity"])
        tiles = [
            _tile(None, f"track {tid}", (255, 255, 255)),
            *(_tile(c, s["identity"], colour) for c in crops.get(tid, [])),
        ]
        tiles += [_tile(None, "", (255, 255, 255))] * (5 - len(tiles))
        for m in matches.get(s["track"], [])[:3]:
            tiles.append(_tile(_template_crop(sources.get(m["label"], "")), f"{m['identity']} {m['distance']:.2f}",
                               identity_colour(m["identity"])))  # fmt: skip
        rows.append(
            np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1)
        )
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate(
        [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    )
    ok, png = cv2.imencode(".png", np.ascontiguousarray(sheet[..., ::-1]))
    if not ok:
        raise OSError(f"cannot encode the contact sheet {path}")
    atomic_write_bytes(path, png.tobytes())


def _samples(tracks: dict[int, dict[int, Box]], per_track: int = 4) -> dict[int, list[int]]:
    """{frame: [track ids]} of the frames whose crops go on the contact sheet (spread along each track)."""
    out: dict[int, list[int]] = {}
    for tid, boxes in tracks.items():
        frames = sorted(boxes)
        for q in np.linspace(0.1, 0.9, per_track):
            out.setdefault(frames[int(q * (len(frames) - 1))], []).append(tid)
    return out


def _best_matches(
    records: Sequence[dict[str, Any]], summaries: list[dict[str, Any]]
) -> dict[str, list[dict]]:
    """Per track, the matches of its window that is nearest to the track's majority identity."""
    out: dict[str, tuple[float, list[dict]]] = {}
    majority = {s["track"]: s["identity"] for s in summaries}
    for r in records:
        parsed = split_window_label(r["probe"])
        track = parsed[0] if parsed else r["probe"]
        dist = r["matches"][0]["distance"] if r["matches"] else float("inf")
        if r["decision"] == majority[track] and dist < out.get(track, (float("inf"), []))[0]:
            out[track] = (dist, r["matches"])
    return {track: m for track, (_, m) in out.items()}


def annotate(
    model: Any, gallery: Path, video: Path, tracks_path: Path, out_dir: Path, *, window: int | None = None,
    stride: int | None = None, threshold: float | None = None, margin: float | None = None,
    closed_set: bool = False, device: str = "auto", precision: str = "32",
) -> dict[str, Any]:  # fmt: skip
    """Embed every track (or window) of `video`, name it against `gallery` and write the four outputs into
    `out_dir` (module docstring); returns {"tracks": per-track summaries, "outputs", "seconds"}."""
    from biggait.embed import embed_inputs
    from biggait.gallery import read_gallery_strings

    openset = resolve_openset(gallery, threshold, margin, closed_set=closed_set)
    start = time.perf_counter()
    probes = embed_inputs(model, [video], tracks=tracks_path, window=window, stride=stride, device=device,
                          precision=precision)  # fmt: skip
    embedded = time.perf_counter()
    _, records = recognise(gallery, probes, top_k=3, threshold=openset[0], margin=openset[1])
    summaries = track_summary([r["probe"] for r in records], [r["decision"] for r in records],
                              [r["matches"][0]["distance"] if r["matches"] else float("inf") for r in records])  # fmt: skip
    tracks = read_tracks(tracks_path)
    decided = frame_decisions(tracks, video.stem, records)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {
        k: out_dir / f"{video.stem}.{k}"
        for k in ("annotated.mp4", "identities.txt", "contact.png", "tracks.json")
    }
    write_mot(outputs["identities.txt"], tracks, decided)
    frames, crops = write_video(video, outputs["annotated.mp4"], tracks, decided, samples=_samples(tracks))
    matches = _best_matches(records, summaries)
    wanted = {m["label"] for ms in matches.values() for m in ms}
    strings = read_gallery_strings(gallery, "labels", "sources")
    sources = {str(lab): str(src) for lab, src in zip(strings["labels"], strings["sources"]) if lab in wanted}
    contact_sheet(outputs["contact.png"], summaries, crops, matches, sources)
    seconds = {"embed": embedded - start, "total": time.perf_counter() - start, "frames": frames,
               "probes": len(probes)}  # fmt: skip
    result = {"tracks": summaries, "openset": list(openset), "seconds": seconds}
    atomic_write_json(outputs["tracks.json"], result)
    return {**result, "outputs": {k: str(v) for k, v in outputs.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    from biggait.checkpoint import load_model

    parser = argparse.ArgumentParser(prog="biggait annotate", description=__doc__.strip().splitlines()[0],
                                     epilog="See docs/inference.md.")  # fmt: skip
    parser.add_argument("model", type=Path, help="model file (.ckpt or official .pt): the gallery's model")
    parser.add_argument("gallery", type=Path, help="gallery .npz (biggait gallery enrol)")
    parser.add_argument("video", type=Path, help="the scene video")
    parser.add_argument("--tracks", type=Path, required=True, help="its MOTChallenge tracks file")
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for the four outputs")
    parser.add_argument("--window", type=int, default=None, help="one decision per N frames of each track")
    parser.add_argument("--stride", type=int, default=None, help="frames between window starts (default: N)")
    parser.add_argument("--threshold", type=float, default=None, help="unknown unless within D")
    parser.add_argument("--margin", type=float, default=None, help="... and ahead of the runner-up by M")
    parser.add_argument("--closed-set", action="store_true", help="ignore the gallery's calibration")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--precision", default="32", help="as for `biggait embed` (default 32)")
    args = parser.parse_args(argv)
    with exit_on_error():
        result = annotate(
            load_model(args.model), args.gallery, args.video, args.tracks, args.out_dir, window=args.window,
            stride=args.stride, threshold=args.threshold, margin=args.margin, closed_set=args.closed_set,
            device=args.device, precision=args.precision,
        )  # fmt: skip
    print(format_tracks(result["tracks"]))
    t = result["seconds"]
    print(f"{t['frames']} frames, {t['probes']} probes: embedding {t['embed']:.1f} s, total {t['total']:.1f} s; "
          f"wrote {', '.join(result['outputs'].values())}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
