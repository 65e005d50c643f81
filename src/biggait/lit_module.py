"""LightningModule: BigGait's and BiggerGait's losses, optimisation and retrieval evaluation."""

from __future__ import annotations

import inspect
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningModule
from torchmetrics import MeanMetric

from biggait.checkpoint import lightning_config, validate_checkpoint
from biggait.errors import ConfigError
from biggait.evaluation.foreground import foreground_iou
from biggait.evaluation.metric import GaitRetrievalMetric
from biggait.formats import ARCHITECTURES, lightning_architecture, require_architecture, upgrade_checkpoint
from biggait.inference import embed_padded
from biggait.losses import cross_entropy_loss, triplet_loss
from biggait.models import BigGait, BiggerGait, weights_from_checkpoint

__all__ = ["CONFIG_OF_ITS_MODEL", "BigGaitModule", "gather_for_triplet", "load_module"]

_NETS: dict[str, type[BigGait] | type[BiggerGait]] = {"biggait": BigGait, "biggergait": BiggerGait}
# The advice when a checkpoint meets the config of the other architecture (biggait.formats.require_architecture)
CONFIG_OF_ITS_MODEL = (
    "pass the config of its model (make train / make eval MODEL={found}; Hydra: model={found}_tiny on the "
    "synthetic world, experiment={found}_<dataset> for a paper recipe)"
)


def gather_for_triplet(
    module: LightningModule, embeddings: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' embeddings (local slice keeps its gradient) and labels, for the batch-all triplet loss.

    `all_gather(sync_grads=True)` sums the gradients of every rank's copy in backward; DDP then averages
    over ranks, which gives exactly the single-process full-batch gradient: no world-size factor
    (docs/5_multi_gpu.md; tests/test_ddp_gradients.py checks it).
    """
    if module.trainer.world_size == 1:
        return embeddings, labels
    gathered = _ContiguousGrad.apply(module.all_gather(embeddings, sync_grads=True))
    return gathered.flatten(0, 1), module.all_gather(labels).flatten(0, 1)


def _rng_states() -> dict[str, Any]:
    """Global RNG states (dropout of the mask branch uses torch's), kept loadable with weights_only=True."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _is_compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous.

    torch.distributed.nn's all_gather backward on gloo (all_to_all) silently mixes up a non-contiguous
    gradient, which the triplet loss's permuted matmul produces (found by tests/test_ddp_gradients.py).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class BigGaitModule(LightningModule):
    """Trains a `BigGait` (triplet + CE + GRE losses) or a `BiggerGait` (triplet + CE) and evaluates it with a
    gait protocol."""

    def __init__(
        self,
        *,
        net: dict[str, Any],
        architecture: str = "biggait",
        protocol: str = "ccpg",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_milestones: Sequence[int] = (15_000, 25_000, 30_000, 35_000),
        lr_gamma: float = 0.1,
        triplet_margin: float = 0.2,
        triplet_weight: float = 1.0,
        ce_weight: float = 1.0,
        ce_scale: float = 16.0,
        label_smoothing: float = 0.1,
        black_da_rate: float | None = None,
        seed: int = 0,
        compile_backbone: bool = False,
        compile_head: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        if net.get("num_classes") is None:
            raise ConfigError(
                "model.net.num_classes is unset: train.py fills it from the train manifest; "
                "pass it explicitly when building BigGaitModule by hand"
            )
        if architecture not in _NETS:
            raise ConfigError(
                f"model.architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}"
            )
        if architecture == "biggergait" and black_da_rate:
            raise ConfigError(
                f"model.black_da_rate={black_da_rate}: BiggerGait has no Black DA (OpenGait `BiggerGait_DINOv2.py`); set 0"
            )
        # None: the architecture's own (BigGait 0.2, OpenGait `BigGait__Dinov2_Gaitbase.forward`; BiggerGait none)
        self.black_da_rate = (
            (0.2 if architecture == "biggait" else 0.0) if black_da_rate is None else black_da_rate
        )
        self.net = _NETS[architecture](**net)
        self.val_metric = GaitRetrievalMetric(protocol)
        self.test_metric = GaitRetrievalMetric(protocol)
        self.val_foreground_iou = MeanMetric()
        self.test_foreground_iou = MeanMetric()
        self._black_da_generator: torch.Generator | None = None
        self.checkpoint_step = 0
        self.checkpoint_path: str | None = None  # the file the weights were loaded from (set by biggait.eval)

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # torch.compile for every stage (fit, validate, test, predict), once. Only the backbone and the
        # GaitBase head have static shapes; the GRE's masked pixel selection has data-dependent sizes and
        # would break the graph. Compile time and speed-up: bench/bench_model.py --compile.
        # nn.Module.compile compiles in place, so the state-dict names (checkpoints) stay the same.
        if self.hparams.compile_backbone and not _is_compiled(self.net.backbone):
            self.net.backbone.compile()
        heads = self.net.heads if isinstance(self.net, BiggerGait) else [self.net.head]
        for head in heads if self.hparams.compile_head else []:
            if not _is_compiled(head):
                head.compile()

    def _generator(self) -> torch.Generator:
        # Black DA draws from its own seeded generator (per rank) so runs and resumes are reproducible,
        # unlike the official code's global `random` (Black DA in OpenGait `BigGait__Dinov2_Gaitbase.forward`).
        if self._black_da_generator is None:
            self._black_da_generator = torch.Generator().manual_seed(
                self.hparams.seed + 7919 * self.global_rank
            )
        return self._black_da_generator

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        frames, ratios, labels = batch["frames"], batch["ratios"], batch["labels"]
        features, gre_losses = self._training_features(frames, ratios)
        out = self.net.forward_head(features)

        embeddings, all_labels = gather_for_triplet(self, out["embeddings"], labels)
        triplet, parts = triplet_loss(embeddings, all_labels, self.hparams.triplet_margin, return_parts=True)
        logits = out["logits"]
        ce = cross_entropy_loss(logits, labels, self.hparams.ce_scale, self.hparams.label_smoothing)
        # OpenGait logs the per-part arg-max accuracy of the classifier next to the CE loss.
        accuracy = (logits.argmax(1) == labels[:, None]).float().mean()
        loss = self.hparams.triplet_weight * triplet + self.hparams.ce_weight * ce
        loss = loss + sum(gre_losses.values())

        n = labels.shape[0]
        log = {"train/loss": loss, "train/triplet": triplet, "train/ce": ce, "train/accuracy": accuracy}
        log.update({f"train/{k}": v for k, v in gre_losses.items()})
        log["train/triplet_nonzero"] = parts["num_nonzero"].mean()
        log["train/lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
        log["train/foreground_fraction"] = features["foreground"].float().mean()
        self.log_dict(log, batch_size=n, prog_bar=False)
        self.log("loss", loss, batch_size=n, prog_bar=True, logger=False)
        if "n_skipped" in batch:
            self.log("data/skipped", batch["n_skipped"].float().sum(), batch_size=n, reduce_fx="sum")
        return loss

    def _training_features(
        self, frames: torch.Tensor, ratios: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(features for the head, weighted auxiliary losses): BigGait's GRE losses and Black DA; BiggerGait has
        neither, only triplet + CE on the embeddings of all groups (OpenGait `BiggerGait__DINOv2.forward`)."""
        features = self.net.forward_features(frames, ratios)
        if isinstance(self.net, BiggerGait):
            return features, {}
        gre_losses = self.net.gre_losses(features)
        features = self.net.black_da(features, rate=self.black_da_rate, generator=self._generator())
        return features, gre_losses

    def configure_optimizers(self) -> dict[str, Any]:
        # Only trainable parameters; a frozen mask branch (restored from a checkpoint) stays out, so it is
        # never touched by weight decay (see docs/fidelity.md).
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=self.hparams.lr, momentum=self.hparams.momentum, weight_decay=self.hparams.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(self.hparams.lr_milestones), gamma=self.hparams.lr_gamma
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- evaluation ----------------------------------------------------------------------------
    def _eval_step(self, batch: dict[str, Any], metric: GaitRetrievalMetric, iou: MeanMetric) -> None:
        features = self.net.forward_features(batch["frames"], batch["ratios"])
        out = self.net.forward_head(features, lengths=batch.get("lengths"))
        metric.update(
            out["embeddings"].float(),
            batch["subjects"],
            batch["types"],
            batch["views"],
            skipped=batch.get("n_skipped", 0),
        )
        if "silhouettes" in batch:
            lengths = batch.get("lengths")
            for i in range(out["embeddings"].shape[0]):
                t = int(lengths[i]) if lengths is not None else features["foreground"].shape[1]
                iou.update(
                    foreground_iou(
                        features["foreground"][i, :t],
                        batch["silhouettes"][i, :t],
                        ratios=batch["ratios"][i, :t],
                    )
                )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metric, self.val_foreground_iou)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metric, self.test_foreground_iou)

    def _evaluation_limits(self, stage: str) -> list[str]:
        """Trainer settings that make this evaluation read part of the test set (fast_dev_run, limit_*)."""
        trainer = self.trainer
        if trainer.fast_dev_run:
            return ["fast_dev_run"]
        name = "limit_val_batches" if stage == "val" else "limit_test_batches"
        limit = getattr(trainer, name)
        return [] if limit == 1.0 else [f"{name}={limit}"]

    def _expected_sequences(self) -> int | None:
        """The test split's sequence count from its manifest, when the data comes from a GaitDataModule."""
        datamodule = getattr(self.trainer, "datamodule", None)
        manifest = getattr(datamodule, "manifest", None)
        if manifest is None:
            return None
        shards = manifest("test")["shards"]
        return int(sum(s["n_samples"] for s in shards))

    # -- prediction (embedding a gallery with trainer.predict; callbacks.GalleryWriter writes it) -------
    predict_batch_frames = 256  # frames per forward pass: long sequences are embedded in chunks

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """An evaluation batch -> {"embeddings" [n, E, p] on the CPU, "labels", "identities", "sources"}."""
        embeddings = embed_padded(
            self.net,
            batch["frames"],
            batch["ratios"],
            batch.get("lengths"),
            batch_frames=self.predict_batch_frames,
        )
        labels = [f"{s}/{t}/{v}" for s, t, v in zip(batch["subjects"], batch["types"], batch["views"])]
        return {
            "embeddings": embeddings.float().cpu(),
            "labels": labels,
            "identities": list(batch["subjects"]),
            "sources": list(batch.get("sources", labels)),
        }

    def retrieval_metric(self, stage: str) -> GaitRetrievalMetric:
        """The metric of the `"val"` or `"test"` evaluation. After the stage's epoch end its `result` is the
        `EvaluationResult` whose numbers were logged as `{stage}/...`: the `EvaluationReport` callback reads the
        view matrices and counts there."""
        if stage not in ("val", "test"):
            raise ConfigError(f"stage must be 'val' or 'test', got {stage!r}")
        return self.val_metric if stage == "val" else self.test_metric

    def _eval_epoch_end(self, stage: str, metric: GaitRetrievalMetric, iou: MeanMetric) -> None:
        metric.expected_sequences = self._expected_sequences()
        metric.limits = self._evaluation_limits(stage)
        result = metric.compute()  # also kept as metric.result, for the EvaluationReport callback
        metric.reset()
        values = {f"{stage}/{k}": v for k, v in result.metrics.items()}
        # What the numbers were computed on, next to them in every logger (W&B, CSV).
        values[f"{stage}/partial"] = float(bool(result.partial))
        values[f"{stage}/sequences_evaluated"] = float(result.counts["sequences"])
        values[f"{stage}/sequences_skipped"] = float(result.counts["sequences_skipped"])
        if iou.update_count > 0:
            values[f"{stage}/foreground_iou"] = float(iou.compute()) * 100.0
            iou.reset()
        # compute() already gathered every rank's embeddings: the values are identical on all ranks.
        self.log_dict(values, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_metric, self.val_foreground_iou)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_metric, self.test_foreground_iou)

    # -- checkpoint state beyond weights ---------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["biggait"] = {
            "mask_branch_frozen": self.net.mask_branch_frozen,
            "black_da_generator": self._generator().get_state(),
            "rng_states": _rng_states(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_checkpoint(checkpoint)  # an older checkpoint's weights are named model.* (today net.*)
        # eval-only runs report the step the weights were trained for, not the fresh trainer's 0
        self.checkpoint_step = int(checkpoint.get("global_step", 0))
        state = checkpoint.get("biggait", {})
        if state.get("mask_branch_frozen") and not self.net.mask_branch_frozen:
            # Restored before configure_optimizers runs, so the frozen branch stays out of the optimizer.
            self.net.freeze_mask_branch()
        if "black_da_generator" in state:
            self._generator().set_state(state["black_da_generator"])
        if "rng_states" in state:
            _set_rng_states(state["rng_states"])


def load_module(
    path: str | Path,
    *,
    net_options: dict[str, Any] | None = None,
    expected_architecture: str | None = None,
    **overrides: Any,
) -> BigGaitModule:
    """A `BigGaitModule` restored from a validated Lightning checkpoint without reading `pretrained`
    (`overrides` go to the module, e.g. `protocol=`; `net_options` replace options of its net, so they must be
    options of `expected_architecture`'s net: another architecture's checkpoint is one error line)."""
    blob = validate_checkpoint(path)
    if expected_architecture is not None:
        require_architecture(blob, expected_architecture, f"checkpoint {path}", fix=CONFIG_OF_ITS_MODEL)
    architecture = lightning_architecture(blob)
    # the run-time options the checkpoint's net has (an eval config's model group may be the other architecture's)
    accepted = inspect.signature(_NETS[architecture].__init__).parameters
    runtime = {k: v for k, v in (net_options or {}).items() if k in accepted}
    # an older checkpoint names the net options "model" (BigGaitModule.on_load_checkpoint)
    overrides.setdefault("net", {**lightning_config(blob, Path(path)), **runtime})
    overrides.setdefault("architecture", architecture)
    with weights_from_checkpoint():
        return BigGaitModule.load_from_checkpoint(path, map_location="cpu", weights_only=True, **overrides)
