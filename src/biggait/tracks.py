"""MOTChallenge tracks of a scene video (`frame,id,x,y,w,h,conf,...`, 1-based frames): parsed strictly into
arrays, and streamed with the video so that every track's crops come out of ONE decoding pass, frame by
frame, and a track is finished as soon as its last box (or `--max-frames`) is reached (issue #22).

Memory: the table is 56 bytes per line (a 2,000,000-line file: 107 MiB), the stream one video frame and the
crops of that frame; nothing grows with the video's length.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from biggait.sources import InputError, RawSequence, open_video, video_frames

__all__ = ["MAX_COORDINATE", "TrackTable", "TrackedVideo", "parse_tracks"]

# Box coordinates beyond a million pixels (or frame numbers / ids beyond 2**31) are not footage: refused
# rather than overflowing (1e308 + 1e308 is inf) further on.
MAX_COORDINATE = 1e6
_MAX_INT = 2**31 - 1
_ALL = slice(None)


@dataclass
class TrackTable:
    """Rows of a tracks file sorted by (frame, id): frames [N], ids [N], boxes [N, 4] (x, y, w, h), and the
    line each row came from."""

    frames: np.ndarray
    ids: np.ndarray
    boxes: np.ndarray
    lines: np.ndarray


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        value = float(text)  # "12.0" as some trackers write it; "10.9" is not a frame number
    if not value.is_integer():
        raise ValueError(f"{what} {text!r} is not an integer")
    return int(value)


def _parse_line(line: str) -> tuple[int, int, float, float, float, float]:
    fields = line.replace(" ", "").split(",")
    if len(fields) < 6:
        raise ValueError("fewer than 6 fields")
    frame, tid = _integer(fields[0], "frame"), _integer(fields[1], "track id")
    x, y, w, h = (float(v) for v in fields[2:6])
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0 or frame < 1:
        raise ValueError("frame must be >= 1 and the box finite with w, h > 0")
    if frame > _MAX_INT or abs(tid) > _MAX_INT or max(abs(x), abs(y), w, h) > MAX_COORDINATE:
        raise ValueError(f"a frame or id beyond {_MAX_INT} or a coordinate beyond {MAX_COORDINATE:g} pixels")
    return frame, tid, x, y, w, h


def parse_tracks(path: Path) -> TrackTable:
    """Read a tracks file line by line (never whole); a bad line is an `InputError` naming it."""
    if not path.is_file():
        raise InputError(f"tracks file {path} does not exist")
    ints, floats, lines = array("q"), array("d"), array("q")
    try:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                try:
                    frame, tid, *box = _parse_line(line.strip())
                except ValueError as exc:
                    raise InputError(
                        f"tracks file {path}, line {n}: {exc}; expected MOTChallenge 'frame,id,x,y,w,h,conf,...', "
                        f"got {line.strip()[:60]!r}"
                    ) from None
                ints.extend((frame, tid))
                floats.extend(box)
                lines.append(n)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"tracks file {path} cannot be read as text ({type(exc).__name__})") from None
    if not lines:
        raise InputError(f"tracks file {path} holds no track line")
    pairs = np.frombuffer(ints, np.int64).reshape(-1, 2)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    table = TrackTable(
        pairs[order, 0],
        pairs[order, 1],
        np.frombuffer(floats, np.float64).reshape(-1, 4)[order],
        np.asarray(lines)[order],
    )
    same = np.flatnonzero((np.diff(table.frames) == 0) & (np.diff(table.ids) == 0))
    if same.size:
        i = same[0] + 1
        raise InputError(
            f"tracks file {path}, line {table.lines[i]}: track {table.ids[i]} has two boxes in frame {table.frames[i]}"
        )
    return table


class TrackedVideo:
    """A scene video and its tracks: one `RawSequence` per track id (sorted), all streamed by `stream`."""

    def __init__(self, video: Path, tracks: Path) -> None:
        self.video, self.tracks = video, tracks
        self.table = parse_tracks(tracks)
        self.track_ids, self.rows_track = np.unique(self.table.ids, return_inverse=True)
        self.last = np.zeros(len(self.track_ids), np.int64)
        np.maximum.at(self.last, self.rows_track, self.table.frames)
        self.lost: list[tuple[int, str]] = []
        self._check_against_video()

    def _check_against_video(self) -> None:
        cap = open_video(self.video)
        try:
            width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        finally:
            cap.release()
        x0, y0, x1, y1 = self._clipped(width, height)
        bad = np.flatnonzero((x1 - x0 < 2) | (y1 - y0 < 2))
        if width > 0 and height > 0 and bad.size:
            i = bad[0]
            box = ", ".join(f"{v:g}" for v in self.table.boxes[i])
            raise InputError(
                f"tracks file {self.tracks}: track {self.table.ids[i]} frame {self.table.frames[i]} box ({box}) lies "
                f"outside the {width}x{height} frame of {self.video}"
            )
        if count > 0 and self.table.frames[-1] > count:
            raise InputError(
                f"tracks file {self.tracks} has boxes in frame {self.table.frames[-1]} but video {self.video} has "
                f"only {count} frames: is it the tracks file of this video?"
            )

    def _clipped(self, width: int, height: int, rows: slice | np.ndarray = _ALL):
        x, y, w, h = self.table.boxes[rows].T
        x0, y0 = np.maximum(0, np.round(x)), np.maximum(0, np.round(y))
        return x0, y0, np.minimum(width, np.round(x + w)), np.minimum(height, np.round(y + h))

    def sequences(self) -> list[RawSequence]:
        boxes = np.bincount(self.rows_track, minlength=len(self.track_ids))
        return [
            RawSequence(
                f"{self.video.stem}/{tid}",
                f"{self.video}#track={tid}",
                lambda k=k: (crop for track, _, crop in self.stream() if track == k and crop is not None),
                identity="unknown",
                group=self,
                length=int(boxes[k]),
            )
            for k, tid in enumerate(self.track_ids.tolist())
        ]

    def stream(self, max_frames: int | None = None) -> Iterator[tuple[int, int, np.ndarray | None]]:
        """(track position, frame number, crop) in frame order, and (track position, last frame, None) once a
        track has all its crops: its last box, or `max_frames` of them, is reached. Decoding stops when
        every track is done."""
        self.lost.clear()
        taken = np.zeros(len(self.track_ids), np.int64)
        done = np.zeros(len(self.track_ids), bool)
        rows, start, index = self.table, 0, 0
        for index, rgb in enumerate(video_frames(self.video, self.lost), 1):
            h_img, w_img = rgb.shape[:2]
            stop = int(np.searchsorted(rows.frames, index, side="right"))
            x0, y0, x1, y1 = (v.astype(np.int64) for v in self._clipped(w_img, h_img, slice(start, stop)))
            for j, row in enumerate(range(start, stop)):
                k = int(self.rows_track[row])
                if done[k] or x1[j] - x0[j] < 2 or y1[j] - y0[j] < 2:
                    continue
                taken[k] += 1
                yield k, index, np.ascontiguousarray(rgb[y0[j] : y1[j], x0[j] : x1[j]])
                if max_frames is not None and taken[k] >= max_frames:
                    done[k] = True
                    yield k, index, None
            start = stop
            for k in np.flatnonzero(~done & (self.last <= index)).tolist():
                done[k] = True
                yield k, index, None
            if done.all():
                return
        missed = int((rows.frames > index).sum())
        if missed:
            self.lost.append(
                (missed, f"tracks file {self.tracks}: {missed} boxes after the last decoded frame {index}")
            )
        for k in np.flatnonzero(~done).tolist():
            yield k, index, None
