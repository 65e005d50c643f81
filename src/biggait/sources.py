"""Footage people have -> person-crop sequences: a folder of frames, a tree of such folders, a video of one
cropped person, or a video plus a MOTChallenge tracks file (`biggait.tracks`), one sequence per track id.
Video is decoded with OpenCV. Every bad input is one `InputError` naming it.

Nothing is read whole: a sequence's crops are a stream, decoded one frame at a time when `crops()` is
iterated, so memory does not grow with the footage's length (issue #22). A frame that cannot be used (an
undecodable or truncated image, a header declaring an absurd size, a video frame the decoder loses) is
skipped and counted in the sequence's `lost` list; a sequence left without any frame is an `InputError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from biggait.errors import BiggaitError, CorruptDataError
from biggait.image_header import image_size

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_FRAME_BYTES",
    "MAX_FRAME_PIXELS",
    "InputError",
    "RawSequence",
    "discover_inputs",
    "read_frame",
    "read_tracks",
    "video_frames",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# A frame is refused before decoding when its header declares more pixels than an 8K x 8K image (192 MiB as
# RGB) or its file is larger than this: a few hundred hostile bytes must not allocate gigabytes.
MAX_FRAME_PIXELS = 8192 * 8192
MAX_FRAME_BYTES = 256 << 20


class InputError(BiggaitError, ValueError):
    """Footage or a tracks file that cannot be read as person-crop sequences."""


@dataclass
class RawSequence:
    """One sequence of uint8 RGB person crops (any sizes, streamed by `crops()`) and where it came from.

    `identity` is None when the label's first path component names the person (a frames tree), or
    "unknown" for footage that does not say who walks (tracks of a scene video). `lost` collects
    (number of frames, why) for the frames skipped while streaming."""

    label: str
    source: str
    crops: Callable[[], Iterator[np.ndarray]]
    identity: str | None = None
    lost: list[tuple[int, str]] = field(default_factory=list)
    group: object | None = None  # the `biggait.tracks.TrackedVideo` that streams this track with its others
    length: int | None = None  # frames it will stream at most, when known without decoding

    def read(self) -> list[np.ndarray]:
        """Every crop, in memory (for small inputs and tests; `embed` streams `crops()`)."""
        return list(self.crops())


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _declared_size(buf: bytes, path: Path) -> tuple[int, int]:
    """(height, width) from the header, never decoding: the training reader's PNG / JPEG parser, PIL's lazy
    header read for the other formats."""
    try:
        return image_size(buf)
    except CorruptDataError:
        if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            raise
    import io

    try:
        with Image.open(io.BytesIO(buf)) as img:
            return img.height, img.width
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise CorruptDataError(f"no readable image header ({type(exc).__name__})") from None


def _damaged(buf: bytes) -> str | None:
    """Why an image that decodes is nevertheless incomplete (OpenCV fills a truncated one with grey)."""
    if buf[:2] == b"\xff\xd8" and b"\xff\xd9" not in buf[-64:]:
        return "truncated JPEG (no end-of-image marker)"
    if buf[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in buf[-16:]:
        return "truncated PNG (no IEND chunk)"
    return None


def read_frame(path: Path) -> np.ndarray:
    """One frame file as uint8 RGB [H, W, 3]; its header is read first and an absurd size, an undecodable or
    truncated image is a `CorruptDataError` saying why."""
    size = path.stat().st_size
    if size > MAX_FRAME_BYTES:
        raise CorruptDataError(f"{size} bytes is more than a frame can be ({MAX_FRAME_BYTES >> 20} MiB)")
    buf = path.read_bytes()
    h, w = _declared_size(buf, path)
    if h < 1 or w < 1 or h * w > MAX_FRAME_PIXELS:
        raise CorruptDataError(f"its header declares {w}x{h} pixels (at most {MAX_FRAME_PIXELS} accepted)")
    reason = _damaged(buf)
    if reason is not None:
        raise CorruptDataError(reason)
    try:
        bgr = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise CorruptDataError(f"undecodable ({str(exc).strip().splitlines()[-1]})") from None
    if bgr is None or bgr.size == 0:
        raise CorruptDataError("it cannot be decoded as an image")
    return np.ascontiguousarray(bgr[..., ::-1])


def _folder(folder: Path, label: str) -> RawSequence:
    def crops() -> Iterator[np.ndarray]:
        seq.lost.clear()
        for path in _images(folder):
            try:
                yield read_frame(path)
            except (CorruptDataError, OSError) as exc:
                seq.lost.append((1, f"frame {path}: {exc}"))

    seq = RawSequence(label, str(folder), crops)
    return seq


def open_video(path: Path) -> cv2.VideoCapture:
    """An opened OpenCV capture of `path`, or an `InputError`."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise InputError(f"video {path} cannot be opened by OpenCV (not a video, or an unsupported codec)")
    return cap


def video_frames(path: Path, lost: list[tuple[int, str]] | None = None) -> Iterator[np.ndarray]:
    """RGB frames of a video, in order, one at a time; an unreadable or empty video is an `InputError`.
    Frames the container declares but the decoder does not deliver (a truncated file) go to `lost`."""
    cap = open_video(path)
    try:
        declared = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        n = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            n += 1
            yield np.ascontiguousarray(bgr[..., ::-1])
    finally:
        cap.release()
    if n == 0:
        raise InputError(f"video {path} has no decodable frame")
    if lost is not None and n < declared:
        lost.append(
            (declared - n, f"video {path}: frames {n + 1}-{declared} of {declared} cannot be decoded")
        )


def _video(path: Path) -> RawSequence:
    def crops() -> Iterator[np.ndarray]:
        seq.lost.clear()
        yield from video_frames(path, seq.lost)

    seq = RawSequence(path.stem, str(path), crops)
    return seq


def read_tracks(path: Path) -> dict[int, dict[int, tuple[float, float, float, float]]]:
    """MOTChallenge tracks -> {track id: {frame (1-based): (x, y, w, h)}}; a bad line is an `InputError`."""
    from biggait.tracks import parse_tracks

    table = parse_tracks(path)
    tracks: dict[int, dict[int, tuple[float, float, float, float]]] = {}
    for frame, tid, box in zip(table.frames.tolist(), table.ids.tolist(), table.boxes.tolist()):
        tracks.setdefault(tid, {})[frame] = tuple(box)
    return tracks


def discover_inputs(path: str | Path, *, tracks: str | Path | None = None) -> list[RawSequence]:
    """The sequences of one INPUT, labelled as `python -m biggait.embed` documents: a folder that holds frames
    is one sequence (its own name); otherwise every folder below it that holds frames (path relative to
    INPUT, e.g. `023/U0_D0/1_1`); a video is one sequence (its stem) or, with `tracks`, one per track id
    (`<video stem>/<track id>`, identity "unknown"). Nothing is decoded here but a video's header."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    if path.is_file():
        if tracks is not None:
            from biggait.tracks import TrackedVideo

            return TrackedVideo(path, Path(tracks)).sequences()
        open_video(path).release()
        return [_video(path)]
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


def frame_count(seq: RawSequence) -> int | None:
    """How many frames `seq` will stream at most, when known without decoding (for the progress bar)."""
    if seq.length is not None:
        return seq.length
    source = Path(seq.source)
    if source.is_dir():
        return len(_images(source))
    cap = cv2.VideoCapture(str(source))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None
    finally:
        cap.release()
