"""Footage people have -> person-crop sequences: a folder of frames, a tree of such folders, a video of one
cropped person, or a video plus a MOTChallenge tracks file (`frame,id,x,y,w,h,conf,...`, 1-based frames), one
sequence per track id. Video is decoded with OpenCV. Every bad input is one `InputError` naming it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from biggait.errors import BiggaitError

__all__ = [
    "IMAGE_SUFFIXES",
    "InputError",
    "RawSequence",
    "discover_inputs",
    "read_tracks",
    "video_frames",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class InputError(BiggaitError, ValueError):
    """Footage or a tracks file that cannot be read as person-crop sequences."""


@dataclass
class RawSequence:
    """One sequence of uint8 RGB person crops (any sizes, read when `read()` is called) and where it came from."""

    label: str
    source: str
    read: Callable[[], list[np.ndarray]]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise InputError(f"frame {path} cannot be decoded as an image")
    return np.ascontiguousarray(bgr[..., ::-1])


def _folder(folder: Path, label: str) -> RawSequence:
    return RawSequence(label, str(folder), lambda: [_read_image(p) for p in _images(folder)])


def video_frames(path: Path) -> Iterator[np.ndarray]:
    """RGB frames of a video, in order; an unreadable or empty video is an `InputError`."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise InputError(
                f"video {path} cannot be opened by OpenCV (not a video, or an unsupported codec)"
            )
        n = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            n += 1
            yield np.ascontiguousarray(bgr[..., ::-1])
        if n == 0:
            raise InputError(f"video {path} has no decodable frame")
    finally:
        cap.release()


def read_tracks(path: Path) -> dict[int, dict[int, tuple[float, float, float, float]]]:
    """MOTChallenge tracks -> {track id: {frame (1-based): (x, y, w, h)}}; a bad line is an `InputError`."""
    if not path.is_file():
        raise InputError(f"tracks file {path} does not exist")
    tracks: dict[int, dict[int, tuple[float, float, float, float]]] = {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"tracks file {path} cannot be read as text ({type(exc).__name__})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.replace(" ", "").split(",")
        try:
            if len(fields) < 6:
                raise ValueError("fewer than 6 fields")
            frame, tid = int(float(fields[0])), int(float(fields[1]))
            x, y, w, h = (float(v) for v in fields[2:6])
            if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0 or frame < 1:
                raise ValueError("frame must be >= 1 and the box finite with w, h > 0")
        except ValueError as exc:
            raise InputError(
                f"tracks file {path}, line {n}: {exc}; expected MOTChallenge 'frame,id,x,y,w,h,conf,...', got "
                f"{line[:60]!r}"
            ) from None
        if frame in tracks.setdefault(tid, {}):
            raise InputError(f"tracks file {path}, line {n}: track {tid} has two boxes in frame {frame}")
        tracks[tid][frame] = (x, y, w, h)
    if not tracks:
        raise InputError(f"tracks file {path} holds no track line")
    return tracks


def _track_sequences(video: Path, tracks_path: Path) -> list[RawSequence]:
    tracks = read_tracks(tracks_path)
    by_frame: dict[int, list[tuple[int, tuple[float, float, float, float]]]] = {}
    for tid, boxes in tracks.items():
        for frame, box in boxes.items():
            by_frame.setdefault(frame, []).append((tid, box))
    crops: dict[int, list[np.ndarray]] = {tid: [] for tid in tracks}
    last = 0
    for index, rgb in enumerate(video_frames(video), 1):
        last = index
        h_img, w_img = rgb.shape[:2]
        for tid, (x, y, w, h) in by_frame.get(index, []):
            x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
            x1, y1 = min(w_img, int(round(x + w))), min(h_img, int(round(y + h)))
            if x1 - x0 < 2 or y1 - y0 < 2:
                raise InputError(
                    f"tracks file {tracks_path}: track {tid} frame {index} box ({x}, {y}, {w}, {h}) lies outside "
                    f"the {w_img}x{h_img} frame of {video}"
                )
            crops[tid].append(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
    beyond = sorted(f for f in by_frame if f > last)
    if beyond:
        raise InputError(
            f"tracks file {tracks_path} has boxes in frame {beyond[0]} but video {video} has only {last} frames: "
            "is it the tracks file of this video?"
        )
    return [
        RawSequence(f"{video.stem}/{tid}", f"{video}#track={tid}", lambda c=crops[tid]: c)
        for tid in sorted(tracks)
    ]


def discover_inputs(path: str | Path, *, tracks: str | Path | None = None) -> list[RawSequence]:
    """The sequences of one INPUT, labelled as `python -m biggait.embed` documents: a folder that holds frames
    is one sequence (its own name); otherwise every folder below it that holds frames (path relative to
    INPUT, e.g. `023/U0_D0/1_1`); a video is one sequence (its stem) or, with `tracks`, one per track id
    (`<video stem>/<track id>`)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    if path.is_file():
        if tracks is not None:
            return _track_sequences(path, Path(tracks))
        return [RawSequence(path.stem, str(path), lambda: list(video_frames(path)))]
    if tracks is not None:
        raise InputError(f"--tracks goes with a video, but {path} is a folder")
    if _images(path):
        return [_folder(path, path.name)]
    folders = sorted(p for p in path.rglob("*") if p.is_dir() and _images(p))
    if not folders:
        raise InputError(
            f"input folder {path} holds no frames ({', '.join(IMAGE_SUFFIXES)}) in it or in any sub-folder"
        )
    return [_folder(f, f.relative_to(path).as_posix()) for f in folders]
