"""`GaitDataModule`: streams the tar shards written by `write_shards` (from a local directory or a URL) into
training and evaluation batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from biggait.data.pipeline import EvalStream, ShardInfo, TrainStream
from biggait.data.roots import DataRoot, read_manifest_at
from biggait.errors import ConfigError, DatasetNotFoundError
from biggait.preprocess import normalize_frames

__all__ = ["GaitDataModule", "normalize_frames"]


class GaitDataModule(L.LightningDataModule):
    """Identity-balanced P x K training stream and exactly-once ordered evaluation over `<root>/{train,test}`.

    `root` is a local directory or a URL webdataset's `gopen` opens (`https://host/ccpg`,
    `pipe:aws s3 cp s3://bucket/ccpg/{} -`, ...; docs/1_data.md); `cache_dir` keeps a local copy of every remote
    shard read (off by default).
    """

    def __init__(
        self,
        *,
        root: str,
        protocol: str,
        dataset: str | None = None,
        frames_per_sequence: int = 30,
        ids_per_batch: int = 8,
        seqs_per_id: int = 8,
        steps_per_epoch: int = 1000,
        eval_frames_limit: int | None = 250,
        eval_batch_size: int = 1,
        num_workers: int = 2,
        shuffle_buffer: int = 256,
        flip_prob: float = 0.5,
        color_jitter: float = 0.0,
        seed: int = 0,
        load_silhouettes: bool = False,
        pin_memory: bool = True,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(protocol, str) or not protocol:
            raise ConfigError(f"protocol must be a non-empty str such as 'ccpg', got {protocol!r}")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters(logger=False)
        self.root = DataRoot.parse(root)
        self._protocol = protocol
        self.dataset = dataset or self.root.name
        self.rank, self.world_size = 0, 1
        self._manifests: dict[str, dict[str, Any]] = {}

    # --- manifests ---------------------------------------------------------------------------------------
    @property
    def protocol(self) -> str:
        return self._protocol

    def manifest(self, split: str) -> dict[str, Any]:
        """The split's manifest; a missing root, split or manifest is a `DatasetNotFoundError` naming the fix."""
        if split not in self._manifests:
            if self.root.is_local and not Path(self.root.spec).is_dir():
                raw = "" if self.dataset == "synthetic" else f" RAW=/path/to/your/{self.dataset}"
                raise DatasetNotFoundError(
                    f"dataset root {self.root.spec} does not exist; build it with "
                    f"`make data DATASET={self.dataset}{raw} OUT={self.root.spec}` (see docs/1_data.md)"
                )
            self._manifests[split] = read_manifest_at(self.root, split, dataset=self.dataset)
        return self._manifests[split]

    @property
    def train_subjects(self) -> list[str]:
        return sorted(self.manifest("train")["sequences_per_subject"])

    @property
    def test_subjects(self) -> list[str]:
        return sorted(self.manifest("test")["sequences_per_subject"])

    @property
    def num_classes(self) -> int:
        return len(self.train_subjects)

    def _shards(self, split: str) -> list[ShardInfo]:
        manifest = self.manifest(split)
        return [
            ShardInfo(self.root.locate(f"{split}/{s['name']}"), int(s["n_samples"]), name=s["name"])
            for s in manifest["shards"]
            if s["n_samples"] > 0
        ]

    # --- Lightning hooks ---------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        # Rank from the trainer, never from environment guessing.
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            self.rank, self.world_size = int(trainer.global_rank), int(trainer.world_size)
        if stage in (None, "fit"):
            hp = self.hparams
            if hp.ids_per_batch > self.num_classes:
                raise ConfigError(
                    f"ids_per_batch={hp.ids_per_batch} > {self.num_classes} training identities in {self.root.locate('train')}"
                )
        # The test split is read when val/test loaders are built, which Lightning also does before training.

    def set_rank(self, rank: int, world_size: int) -> None:
        """Explicit rank for use without a Trainer (tests, scripts)."""
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world size {world_size}")
        self.rank, self.world_size = rank, world_size

    def train_dataset(self) -> TrainStream:
        hp = self.hparams
        return TrainStream(
            self._shards("train"),
            labels={s: i for i, s in enumerate(self.train_subjects)},
            frames_per_sequence=hp.frames_per_sequence,
            ids_per_batch=hp.ids_per_batch,
            seqs_per_id=hp.seqs_per_id,
            steps_per_epoch=hp.steps_per_epoch,
            shuffle_buffer=hp.shuffle_buffer,
            flip_prob=hp.flip_prob,
            color_jitter=hp.color_jitter,
            rank=self.rank,
            world_size=self.world_size,
            seed=hp.seed,
            # The step is restored before the loaders are built: a run resumed at an epoch boundary continues
            # with the stream of the epoch it stopped at (a checkpoint at the last batch of epoch e still
            # says current_epoch=e, so the epoch is derived from the step, not read).
            start_epoch=int(getattr(getattr(self, "trainer", None), "global_step", 0)) // hp.steps_per_epoch,
            frame_size=tuple(self.manifest("train")["frame_size"]),
            cache_dir=hp.cache_dir,
        )

    def eval_dataset(self) -> EvalStream:
        hp = self.hparams
        if hp.load_silhouettes and not self.manifest("test")["has_silhouettes"]:
            raise ConfigError(
                f"load_silhouettes=True but {self.root.locate('test')} was written without silhouettes"
            )
        return EvalStream(
            self._shards("test"),
            labels={s: i for i, s in enumerate(self.test_subjects)},  # eval labels index the test subjects
            batch_size=hp.eval_batch_size,
            frames_limit=hp.eval_frames_limit,
            silhouettes=hp.load_silhouettes,
            rank=self.rank,
            world_size=self.world_size,
            frame_size=tuple(self.manifest("test")["frame_size"]),
            num_workers=hp.num_workers,
            cache_dir=hp.cache_dir,
        )

    def _loader(self, dataset: TrainStream | EvalStream, *, persistent: bool) -> DataLoader:
        nw = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=None,  # the streams batch themselves
            num_workers=nw,
            # Persistent workers keep the training stream alive, so an epoch continues it (no replay).
            persistent_workers=persistent and nw > 0,
            pin_memory=self.hparams.pin_memory and torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset(), persistent=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset(), persistent=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset(), persistent=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split, every sequence once (trainer.predict embeds it; callbacks.GalleryWriter saves it)."""
        return self._loader(self.eval_dataset(), persistent=False)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        frames = batch["frames"]
        if frames.dtype == torch.uint8:
            batch["frames"] = normalize_frames(frames, batch.get("lengths"), dtype=self._input_dtype())
        return batch

    def _input_dtype(self) -> torch.dtype:
        """The float dtype the trainer's precision gives inputs (float64 under `64-true`, float32 elsewhere).

        Lightning casts a batch's float tensors (`precision_plugin.convert_input`) *before* this hook, when the
        frames are still uint8, so without this `trainer.precision=64-true` ran a float64 model on float32 frames.
        """
        if self.trainer is None:
            return torch.float32
        return self.trainer.precision_plugin.convert_input(torch.zeros((), dtype=torch.float32)).dtype
