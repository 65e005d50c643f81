"""One gait sequence as every dataset builder hands it to the shard writer (docs/8_design.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from biggait.errors import CorruptDataError

__all__ = ["SequenceRecord"]


@dataclass
class SequenceRecord:
    """One gait sequence: RGB frames, per-frame aspect ratios and optional silhouettes."""

    subject: str  # identity, e.g. "042"
    seq_type: str  # e.g. "U0_D0_BG", "nm-01", "00-nm"
    view: str  # e.g. "2_1", "090"
    frames: np.ndarray  # uint8 [T, H, W, 3], RGB
    ratios: (
        np.ndarray
    )  # float32 [T], width/height of the original person crop (OpenGait `datasets/pretreatment_rgb.py`)
    silhouettes: np.ndarray | None = None  # uint8 [T, H, W], 0/255

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def frame_size(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def validate(self) -> None:
        """Raise `CorruptDataError` naming the sequence and the field when shapes or dtypes are wrong."""
        name = f"sequence {self.subject}/{self.seq_type}/{self.view}"
        for field in ("subject", "seq_type", "view"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value:
                raise CorruptDataError(f"{name}: {field} must be a non-empty str, got {value!r}")
        frames = self.frames
        if (
            not isinstance(frames, np.ndarray)
            or frames.dtype != np.uint8
            or frames.ndim != 4
            or frames.shape[-1] != 3
        ):
            raise CorruptDataError(
                f"{name}: frames must be a uint8 ndarray [T, H, W, 3] (RGB), got {_describe(frames)}"
            )
        if frames.shape[0] == 0:
            raise CorruptDataError(f"{name}: frames is empty (T = 0)")
        ratios = self.ratios
        if (
            not isinstance(ratios, np.ndarray)
            or ratios.dtype != np.float32
            or ratios.shape != frames.shape[:1]
        ):
            raise CorruptDataError(
                f"{name}: ratios must be a float32 ndarray [T] with T = {frames.shape[0]}, got {_describe(ratios)}"
            )
        if not np.all(np.isfinite(ratios)) or np.any(ratios <= 0):
            raise CorruptDataError(f"{name}: ratios (width / height) must be finite and > 0")
        sils = self.silhouettes
        if sils is not None and (
            not isinstance(sils, np.ndarray) or sils.dtype != np.uint8 or sils.shape != frames.shape[:3]
        ):
            raise CorruptDataError(
                f"{name}: silhouettes must be None or a uint8 ndarray [T, H, W] = {list(frames.shape[:3])}, "
                f"got {_describe(sils)}"
            )


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {list(value.shape)}"
    return type(value).__name__
