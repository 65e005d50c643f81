"""Checkpoints that a kill cannot corrupt, and a checkpoint at the last training step (docs/reliability.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning import LightningModule, Trainer
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

from biggait.io import atomic_open, remove_stale_temporaries

__all__ = ["AtomicCheckpointIO", "StepCheckpoint"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` into a temporary file next to the target, fsync, rename: a killed save leaves the old file.

    Lightning's own writer goes through an fsspec transaction whose temporary file lives in `TMPDIR`; when that
    is another filesystem (e.g. /dev/shm) the final move is a copy, and a kill during it leaves a truncated
    checkpoint and a checkpoint-sized temporary file. Remote paths (s3://, ...) keep Lightning's writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_open(Path(path)) as stream:
            torch.save(checkpoint, stream)


def use_atomic_checkpoint_io(trainer: Trainer) -> None:
    """Put `AtomicCheckpointIO` in place of the strategy's default `TorchCheckpointIO` (a custom one is kept)."""
    strategy = trainer.strategy
    current = strategy.checkpoint_io
    if isinstance(current, _WrappingCheckpointIO):  # e.g. AsyncCheckpointIO: swap the writer it wraps
        if type(current.checkpoint_io) is TorchCheckpointIO:
            current.checkpoint_io = AtomicCheckpointIO()
    elif type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


class StepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose writes are atomic, which removes what killed saves left behind, and which
    always saves the last training step (also when `max_steps` is not a multiple of `every_n_train_steps`)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        use_atomic_checkpoint_io(trainer)
        if trainer.is_global_zero and self.dirpath is not None:
            remove_stale_temporaries(self.dirpath)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer) and trainer.global_step > 0:
            candidates = self._monitor_candidates(trainer)
            if self.monitor is None and self.save_top_k != 0:  # periodic checkpoints: the tail is one more
                self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)
