"""Training throughput (sequences/s, frames/s) as logged metrics."""

from __future__ import annotations

import time
from typing import Any

from lightning import Callback, LightningModule, Trainer

from biggait.errors import ConfigError

__all__ = ["TrainThroughput"]


class TrainThroughput(Callback):
    """Logs `perf/sequences_per_s` and `perf/frames_per_s` of the training loop, averaged over a window."""

    def __init__(self, *, window: int = 10) -> None:
        if window < 1:
            raise ConfigError(f"TrainThroughput.window must be >= 1, got {window}")
        self.window = window
        self._start: float | None = None
        self._sequences = 0
        self._frames = 0
        self._batches = 0

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n, s = batch["frames"].shape[:2]
        # Per rank numbers times the world size: every rank draws equal batches (see GaitDataModule).
        self._sequences += n * trainer.world_size
        self._frames += n * s * trainer.world_size
        self._batches += 1
        if self._batches < self.window or self._start is None:
            return
        elapsed = time.perf_counter() - self._start
        pl_module.log_dict(
            {"perf/sequences_per_s": self._sequences / elapsed, "perf/frames_per_s": self._frames / elapsed},
            rank_zero_only=True,
        )
        self._start, self._sequences, self._frames, self._batches = time.perf_counter(), 0, 0, 0
