"""Evaluation outputs: results.json, a printed markdown table and view-by-view rank-1 heatmaps."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from biggait.evaluation.report import (
    partial_banner,
    rank1_heatmap,
    results_markdown,
    save_figure,
    write_results_json,
)
from biggait.io import atomic_write_bytes

__all__ = ["EvaluationReport"]

log = logging.getLogger(__name__)


class EvaluationReport(Callback):
    """Writes every evaluation's results under `<output_dir>/evaluation/<stage>-step<N>/` (rank 0).

    What it reports comes through two public routes: the `EvaluationResult` of the module's metric
    (`pl_module.retrieval_metric(stage).result`: the numbers, view matrices and counts, computed and logged at
    the stage's epoch end) and `trainer.callback_metrics` for what the module logs beside it (foreground IoU).
    """

    def __init__(self, *, output_dir: str, heatmaps: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.heatmaps = heatmaps

    @staticmethod
    def _checkpoint(trainer: Trainer, pl_module: LightningModule) -> str | None:
        """The checkpoint whose weights were evaluated: the file loaded for evaluation, or the one this run saved
        at the current step (None when the weights evaluated are in no file)."""
        loaded = getattr(pl_module, "checkpoint_path", None)
        if loaded is None and trainer.state.fn == "test":
            loaded = trainer.ckpt_path  # trainer.test(ckpt_path=...)
        if loaded:
            return str(loaded)
        callback = trainer.checkpoint_callback
        last = getattr(callback, "last_model_path", "") if callback is not None else ""
        saved_step = getattr(callback, "_last_global_step_saved", None)
        return str(last) if last and saved_step == trainer.global_step else None

    def _report(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        result = pl_module.retrieval_metric(stage).result
        if not trainer.is_global_zero or result is None:
            return
        protocol = pl_module.hparams.protocol
        step = trainer.global_step or getattr(pl_module, "checkpoint_step", 0)
        checkpoint = self._checkpoint(trainer, pl_module)
        out_dir = self.output_dir / f"{stage}-step{step:06d}"
        metrics = dict(result.metrics)
        extra_keys = [k for k in trainer.callback_metrics if k.startswith(f"{stage}/foreground_iou")]
        extra = {k.split("/", 1)[1]: float(trainer.callback_metrics[k]) for k in extra_keys}
        info = {
            "protocol": protocol,
            "stage": stage,
            "step": step,
            "checkpoint": checkpoint,
            "partial": bool(result.partial),
            "partial_reasons": list(result.partial),
            "unscored_conditions": list(result.unscored),
            "counts": result.counts,
        }
        write_results_json(out_dir / "results.json", metrics, {**info, **extra})
        table = results_markdown(metrics, protocol, counts=result.counts)
        if extra:
            table += "\n" + "\n".join(f"{k}: {v:.2f}" for k, v in extra.items())
        header = f"{stage} results ({protocol}, step {step}, checkpoint {checkpoint or 'none saved'})"
        banner = partial_banner(result)
        message = f"{header}:\n{banner + chr(10) if banner else ''}{table}"
        if HydraConfig.initialized():  # a Hydra run: its logging goes to the console and the run's log file
            log.info(message)
        else:
            print(f"\n{message}\n", flush=True)
        atomic_write_bytes(
            out_dir / "results.md", ((banner + "\n\n" if banner else "") + table + "\n").encode()
        )
        wandb = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if (
            wandb is not None
        ):  # the run page says what the numbers cover; {stage}/partial is logged as a metric
            wandb.experiment.summary.update(
                {
                    f"{stage}/partial_reasons": "; ".join(result.partial) or "none",
                    f"{stage}/checkpoint": checkpoint,
                }
            )
        if not self.heatmaps:
            return
        paths = []
        for condition, (probe_views, gallery_views, matrix) in result.matrices.items():
            fig = rank1_heatmap(matrix, probe_views, gallery_views, title=f"{stage} {condition} rank-1 (%)")
            path = out_dir / f"rank1_{condition.replace('/', '_')}.png"
            save_figure(fig, path)
            paths.append((condition, path))
        for condition, path in paths if wandb is not None else []:  # one key each: their sizes differ
            wandb.log_image(
                key=f"{stage}/rank1_heatmaps/{condition.replace('/', '_')}",
                images=[str(path)],
                caption=[condition],
                step=step,
            )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._report(trainer, pl_module, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._report(trainer, pl_module, "test")
