"""Feature-map panels every N training steps and after each validation, to W&B and the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from biggait.errors import ConfigError
from biggait.models import BiggerGait
from biggait.viz import (
    PanelSequence,
    comparison_indices,
    comparison_panel,
    group_panel,
    panel_sequences,
    save_png,
    sequence_panel,
)

__all__ = ["FeatureMapLogger"]

_BATCH_KEYS = ("frames", "ratios", "lengths", "silhouettes")
_LABEL_KEYS = ("subjects", "types", "views")


def _take(batch: dict[str, Any], indices: list[int], max_frames: int) -> dict[str, Any]:
    # A small CPU copy of the first frames of some sequences, so the cache holds no device memory or graph
    # and the panels stay cheap even for long evaluation sequences.
    out: dict[str, Any] = {}
    for key in _BATCH_KEYS:
        if isinstance(batch.get(key), torch.Tensor):
            value = batch[key][indices]
            value = value.clamp(max=max_frames) if key == "lengths" else value[:, :max_frames]
            out[key] = value.detach().cpu().clone()
    for key in _LABEL_KEYS:
        if key in batch:
            out[key] = [str(batch[key][i]) for i in indices]
    return out


class FeatureMapLogger(Callback):
    """Renders `biggait.viz` panels of a fixed small batch (rank 0 only) and logs / saves them as PNGs."""

    def __init__(
        self,
        *,
        every_n_steps: int = 1000,
        on_validation: bool = True,
        num_sequences: int = 3,
        max_frames: int = 8,
        cached_frames: int = 32,
        output_dir: str | None = None,
    ) -> None:
        if every_n_steps < 0 or num_sequences < 1 or max_frames < 1 or cached_frames < max_frames:
            raise ConfigError(
                "FeatureMapLogger: every_n_steps must be >= 0 (0 = off), num_sequences and max_frames >= 1, "
                f"cached_frames >= max_frames; got {every_n_steps}, {num_sequences}, {max_frames}, {cached_frames}"
            )
        self.every_n_steps = every_n_steps
        self.on_validation = on_validation
        self.num_sequences = num_sequences
        self.max_frames = max_frames
        self.cached_frames = cached_frames  # frames kept per sequence; the PCA is fitted over all of them
        self.output_dir = output_dir
        self._dir: Path | None = None
        self._batch: dict[str, Any] | None = None
        self._from_validation = False
        self._last: tuple[int, bool] | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts, so it is resolved here on every rank, never inside a rank-0-only hook.
        root = self.output_dir or trainer.log_dir or trainer.default_root_dir
        self._dir = Path(root) if self.output_dir else Path(root) / "feature_maps"

    # -- choosing the fixed batch ------------------------------------------------------------
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # The first validation batch (sanity check included) becomes the fixed batch: evaluation order is
        # deterministic, so every logged panel shows the same sequences and has ground truth when it exists.
        if (
            self._from_validation
            or not trainer.is_global_zero
            or batch_idx != 0
            or not isinstance(batch, dict)
        ):
            return
        n = batch["frames"].shape[0]
        picks = (
            comparison_indices(batch["subjects"], batch["types"], batch.get("views"))
            if "subjects" in batch
            else []
        )
        picks += [i for i in range(n) if i not in picks]
        self._batch = _take(batch, picks[: self.num_sequences], self.cached_frames)
        self._from_validation = True

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step % self.every_n_steps or not trainer.is_global_zero:
            return  # the only cost on ordinary steps is this check
        if self._batch is None and isinstance(batch, dict):
            n = min(self.num_sequences, batch["frames"].shape[0])
            self._batch = _take(batch, list(range(n)), self.cached_frames)
        self.log_panels(trainer, pl_module, step=step)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.on_validation and not trainer.sanity_checking and trainer.is_global_zero:
            self.log_panels(trainer, pl_module, step=trainer.global_step)

    # -- rendering ---------------------------------------------------------------------------
    @torch.no_grad()
    def _features(self, pl_module: LightningModule) -> dict[str, torch.Tensor]:
        model = pl_module.net
        # Save every submodule's mode: a frozen mask branch must stay in eval after we flip back (OpenGait `BigGait__Dinov2_Gaitbase.forward`, iteration 500).
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            frames = self._batch["frames"].to(pl_module.device)
            ratios = self._batch["ratios"].to(pl_module.device)
            features = model.forward_features(frames.float(), ratios.float())
        finally:
            for m, mode in modes:
                m.training = mode
        return features

    def sequences(self, pl_module: LightningModule) -> list[PanelSequence]:
        """The cached batch run through the model, one `PanelSequence` per sequence (CPU tensors)."""
        if self._batch is None:
            return []
        return panel_sequences(self._batch, self._features(pl_module))

    def log_panels(self, trainer: Trainer, pl_module: LightningModule, *, step: int) -> list[Path]:
        """Render, save under `<dir>/step_XXXXXX/` and send to W&B (rank 0; the caller checks)."""
        # Once per step and batch; a validation batch (with ground truth) may redo a step drawn from training.
        if self._batch is None or (step, self._from_validation) == self._last:
            return []
        self._last = (step, self._from_validation)
        out_dir = (self._dir or Path(trainer.default_root_dir) / "feature_maps") / f"step_{step:06d}"
        seqs = self.sequences(pl_module)
        render = self._group_panels if isinstance(pl_module.net, BiggerGait) else self._gre_panels
        paths = render(seqs, pl_module, out_dir, step)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                # one key per panel (a "feature_maps" section): panels differ in size, and W&B draws a list of
                # different sizes wrongly ("Images sizes do not match")
                for (caption, path), name in zip(
                    paths, [*(f"sequence_{i}" for i in range(len(seqs))), "comparison"]
                ):
                    logger.log_image(
                        key=f"feature_maps/{name}", images=[str(path)], caption=[caption], step=step
                    )
        return [p for _, p in paths]

    def _gre_panels(
        self, seqs: list[PanelSequence], pl_module: LightningModule, out_dir: Path, step: int
    ) -> list[tuple[str, Path]]:
        """BigGait: one sequence panel each (GRE maps), then the comparison panel."""
        paths: list[tuple[str, Path]] = []
        for i, seq in enumerate(seqs):
            fig = sequence_panel(
                seq.frames, seq.features, seq.silhouettes, ratios=seq.ratios, max_frames=self.max_frames,
                title=f"{seq.label} (step {step})",
            )  # fmt: skip
            paths.append((seq.label, save_png(fig, out_dir / f"sequence_{i}.png")))
        if len(seqs) >= 2:
            fig = comparison_panel(seqs, title=f"Same person, two outfits vs another person (step {step})")
            paths.append(("comparison", save_png(fig, out_dir / "comparison.png")))
        return paths

    def _group_panels(
        self, seqs: list[PanelSequence], pl_module: LightningModule, out_dir: Path, step: int
    ) -> list[tuple[str, Path]]:
        """BiggerGait: its maps (mask branch, foreground, one row per layer group) per sequence, then all side by side."""
        groups = pl_module.net.num_groups
        paths: list[tuple[str, Path]] = []
        for i, seq in enumerate(seqs):
            fig = group_panel([seq], num_groups=groups, frames_per_sequence=self.max_frames,
                              title=f"{seq.label} (step {step})")  # fmt: skip
            paths.append((seq.label, save_png(fig, out_dir / f"sequence_{i}.png")))
        if len(seqs) >= 2:
            fig = group_panel(
                seqs, num_groups=groups, frames_per_sequence=2, title=f"all sequences (step {step})"
            )
            paths.append(("comparison", save_png(fig, out_dir / "comparison.png")))
        return paths
