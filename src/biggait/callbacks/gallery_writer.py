"""`trainer.predict` -> one gallery file: every rank writes its part, rank 0 merges them (any strategy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from biggait.gallery import Gallery, load_gallery

__all__ = ["GalleryWriter"]


class GalleryWriter(BasePredictionWriter):
    """Writes the embeddings of `BigGaitModule.predict_step` as one gallery `.npz` (biggait.gallery)."""

    def __init__(self, out: str | Path) -> None:
        super().__init__(write_interval="epoch")
        self.out = Path(out)

    def _part(self, rank: int) -> Path:
        return self.out.parent / f".{self.out.name}.rank{rank}.npz"

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        from biggait.checkpoint import model_fingerprint

        fingerprint = model_fingerprint(pl_module.net)
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        cfg = pl_module.net.config
        empty = np.zeros((0, cfg["embed_dim"], cfg["parts"]), np.float32)
        part = Gallery(
            np.concatenate([b["embeddings"].numpy() for b in batches]) if batches else empty,
            [x for b in batches for x in b["labels"]],
            [x for b in batches for x in b["identities"]],
            [x for b in batches for x in b["sources"]],
            fingerprint,
        )
        part.save(self._part(trainer.global_rank))
        trainer.strategy.barrier("gallery_parts_written")
        if trainer.global_rank == 0:
            parts = [load_gallery(self._part(r)) for r in range(trainer.world_size)]
            Gallery(
                np.concatenate([p.embeddings for p in parts]),
                [x for p in parts for x in p.labels],
                [x for p in parts for x in p.identities],
                [x for p in parts for x in p.sources],
                fingerprint,
            ).save(self.out)
            for r in range(trainer.world_size):
                self._part(r).unlink(missing_ok=True)
        trainer.strategy.barrier("gallery_written")
