"""The mask-branch schedule of OpenGait `BigGait__Dinov2_Gaitbase.forward`, iteration 500, as a callback instead of a branch inside `forward`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info

from biggait.errors import ConfigError
from biggait.models import BiggerGait

__all__ = ["MaskBranchSchedule"]


class MaskBranchSchedule(Callback):
    """Freezes the mask branch at step `freeze_at_step` (optionally loading pretrained weights first).

    Faithful default (OpenGait `BigGait__Dinov2_Gaitbase.forward`, iteration 500): the branch trains from scratch for 500 steps, then is frozen: eval mode,
    no gradients, and removed from the optimizer so neither momentum nor weight decay touches it again
    (fixed, see docs/fidelity.md). `freeze_at_step=0` with `pretrained_path` loads and freezes it before the
    first step, which also lets DDP run without `find_unused_parameters`.
    """

    def __init__(self, *, freeze_at_step: int | None = 500, pretrained_path: str | None = None) -> None:
        if freeze_at_step is not None and freeze_at_step < 0:
            raise ConfigError(f"MaskBranchSchedule.freeze_at_step must be >= 0 or null, got {freeze_at_step}")
        # YAML "None" (the official config's value) means no file, as in the official code (OpenGait `BigGait__Dinov2_Gaitbase.forward`, iteration 500).
        if pretrained_path in ("None", ""):
            pretrained_path = None
        if pretrained_path is not None and not Path(pretrained_path).is_file():
            raise ConfigError(
                f"mask branch weights not found: {pretrained_path}. Point "
                "callbacks.mask_branch_schedule.pretrained_path at MaskBranch_vits14.pt or set it to null."
            )
        self.freeze_at_step = freeze_at_step
        self.pretrained_path = pretrained_path

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if isinstance(pl_module.net, BiggerGait):
            # its mask branch is pretrained and frozen from the start (model.net.mask_branch): nothing to schedule
            if self.pretrained_path is not None:
                raise ConfigError(
                    "callbacks.mask_branch_schedule.pretrained_path is for BigGait; a BiggerGait takes its mask "
                    "branch from model.net.mask_branch"
                )
            self.freeze_at_step = None
            return
        strategy = trainer.strategy
        freezes_mid_run = self.freeze_at_step is not None and self.freeze_at_step > 0
        if (
            stage == "fit"
            and freezes_mid_run
            and isinstance(strategy, DDPStrategy)
            and trainer.world_size > 1
            and not strategy._ddp_kwargs.get("find_unused_parameters", False)
        ):
            raise ConfigError(
                "the mask branch freezes mid-run (callbacks.mask_branch_schedule.freeze_at_step="
                f"{self.freeze_at_step}) but DDP was built without find_unused_parameters: use "
                "trainer.strategy=ddp_find_unused_parameters_true, or freeze from step 0 with a pretrained "
                "mask branch (freeze_at_step=0 pretrained_path=...)"
            )

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        model = pl_module.net
        if (
            self.freeze_at_step is None
            or model.mask_branch_frozen
            or trainer.global_step < self.freeze_at_step
        ):
            return
        if self.pretrained_path is not None:
            model.load_mask_branch(self.pretrained_path)
        frozen = {id(p) for p in model.freeze_mask_branch()}  # none when the mask branch is ablated
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                kept = [p for p in group["params"] if id(p) not in frozen]
                for p in group["params"]:
                    if id(p) in frozen:
                        optimizer.state.pop(p, None)
                group["params"] = kept
        rank_zero_info(
            f"mask branch frozen at step {trainer.global_step}"
            + (f" with weights from {self.pretrained_path}" if self.pretrained_path else "")
        )
