"""Evaluation entry point: `python -m biggait.eval ckpt_path=... [experiment=...]` (Hydra)."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig

from biggait.checkpoint import load_module
from biggait.errors import ConfigError
from biggait.paths import conf_dir
from biggait.train import (
    check_accelerator,
    explained_run,
    instantiate_callbacks,
    instantiate_loggers,
    record_run_config,
    resolve_trainer_precision,
)

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, float]:
    """Test the checkpoint `cfg.ckpt_path` on `cfg.data` with that dataset's protocol (cross-domain works)."""
    ckpt = cfg.get("ckpt_path")
    if ckpt is None or not Path(ckpt).is_file():
        raise ConfigError(
            f"ckpt_path={ckpt!r} is not a file: pass a Lightning checkpoint (outputs/.../checkpoints/last.ckpt, "
            "or one converted with `python -m biggait.compat.opengait IN OUT`)"
        )
    check_accelerator(cfg, cpu_fallback=True)
    L.seed_everything(cfg.seed, workers=True)
    # Checked first (one error line for a bad file, before Lightning reads it). The protocol follows the
    # evaluation data, not the training data (cross-dataset tables); the backbone's `pretrained` file is not
    # read (the checkpoint holds every weight).
    module = load_module(ckpt, protocol=cfg.data.protocol)
    resolve_trainer_precision(cfg)
    record_run_config(cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    module.checkpoint_path = str(ckpt)  # reported with the results (results.json, printed table)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.test(module, datamodule=datamodule, verbose=False)  # EvaluationReport prints the table
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="eval")
def main(cfg: DictConfig) -> None:
    with explained_run():
        evaluate_checkpoint(cfg)


if __name__ == "__main__":
    main()
