"""Evaluation outputs: results.json, a printed markdown table and view-by-view rank-1 heatmaps."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from biggait.evaluation.report import rank1_heatmap, results_markdown, save_figure, write_results_json

__all__ = ["EvaluationReport"]

log = logging.getLogger(__name__)


class EvaluationReport(Callback):
    """Writes every evaluation's results under `<output_dir>/evaluation/<stage>-step<N>/` (rank 0)."""

    def __init__(self, *, output_dir: str, heatmaps: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.heatmaps = heatmaps

    def _report(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not trainer.is_global_zero or stage not in pl_module.last_evaluation:
            return
        result = pl_module.last_evaluation[stage]
        protocol = pl_module.hparams.protocol
        step = trainer.global_step or getattr(pl_module, "checkpoint_step", 0)
        out_dir = self.output_dir / f"{stage}-step{step:06d}"
        metrics = dict(result.metrics)
        extra_keys = [k for k in trainer.callback_metrics if k.startswith(f"{stage}/foreground_iou")]
        extra = {k.split("/", 1)[1]: float(trainer.callback_metrics[k]) for k in extra_keys}
        write_results_json(
            out_dir / "results.json", metrics, {"protocol": protocol, "stage": stage, "step": step, **extra}
        )
        table = results_markdown(metrics, protocol)
        if extra:
            table += "\n" + "\n".join(f"{k}: {v:.2f}" for k, v in extra.items())
        message = f"{stage} results ({protocol}, step {step}):\n{table}"
        if logging.getLogger().handlers:  # a configured run (Hydra): console and the run's log file
            log.info(message)
        else:
            print(f"\n{message}\n", flush=True)
        (out_dir / "results.md").write_text(table + "\n")
        wandb = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if not self.heatmaps:
            return
        paths = []
        for condition, (probe_views, gallery_views, matrix) in result.matrices.items():
            fig = rank1_heatmap(matrix, probe_views, gallery_views, title=f"{stage} {condition} rank-1 (%)")
            path = out_dir / f"rank1_{condition.replace('/', '_')}.png"
            save_figure(fig, path)
            paths.append((condition, path))
        if wandb is not None and paths:
            wandb.log_image(
                key=f"{stage}/rank1_heatmaps",
                images=[str(p) for _, p in paths],
                caption=[c for c, _ in paths],
                step=step,
            )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._report(trainer, pl_module, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._report(trainer, pl_module, "test")
