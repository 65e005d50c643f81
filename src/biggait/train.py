"""Training entry point: `python -m biggait.train [experiment=...] [overrides]` (Hydra)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from biggait.errors import ConfigError, exit_on_error
from biggait.io import atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = [
    "train",
    "build_shards_if_missing",
    "instantiate_callbacks",
    "instantiate_loggers",
    "explained_run",
    "run_directory",
    "record_run_config",
    "send_lightning_logs_to_the_run_log",
]


def run_directory() -> Path | None:
    """The directory of the current Hydra run (None outside one, e.g. when `train` is called from Python)."""
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def send_lightning_logs_to_the_run_log() -> None:
    """Let Lightning's messages reach the handlers Hydra put on the root logger (console and `<task>.log`).

    Lightning gives its loggers their own console handler when it is imported before logging is configured
    (it is, by our imports), which keeps its messages out of the run's log file.
    """
    if not logging.getLogger().handlers:
        return
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


def record_run_config(cfg: DictConfig) -> None:
    """Log the resolved configuration as a tree and save it as `<run dir>/config.yaml`."""
    text = OmegaConf.to_yaml(cfg, resolve=True)
    log.info("resolved configuration:\n%s", text.rstrip())
    out = run_directory()
    if out is not None:
        atomic_write_bytes(out / "config.yaml", text.encode())


def build_shards_if_missing(cfg: DictConfig) -> None:
    """Run the configured shard builder (synthetic only) when the dataset root has no manifests yet."""
    root = Path(cfg.data.root)
    complete = all((root / split / "manifest.json").is_file() for split in ("train", "test"))
    if complete or not cfg.get("data_prep"):
        return  # a real dataset that is missing gets its error (with the build command) from the DataModule
    log.info("building the shards of %s (first use)", root)
    hydra.utils.instantiate(cfg.data_prep)()


def _instantiate_group(group: str, cfg: DictConfig | None) -> list[Any]:
    built = []
    for name, entry in (cfg or {}).items():
        if entry is None:
            continue
        if "_target_" not in entry:
            # e.g. an experiment delta for a callback the chosen group does not define
            raise ConfigError(
                f"{group}.{name} has no _target_ (keys: {sorted(entry)}): it is not defined by the selected "
                f"{group} config; add it there, or drop the {group}.{name} overrides"
            )
        built.append(hydra.utils.instantiate(entry))
    return built


def instantiate_callbacks(cfg: DictConfig | None) -> list[L.Callback]:
    """Every entry of the `callbacks` group that is not null."""
    return _instantiate_group("callbacks", cfg)


def instantiate_loggers(cfg: DictConfig | None) -> list[Any]:
    """Every entry of the `logger` group that is not null."""
    return _instantiate_group("logger", cfg)


def train(cfg: DictConfig) -> dict[str, float]:
    """Build data, model, callbacks, loggers and trainer from `cfg`; fit, then test; return the metrics."""
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))
    build_shards_if_missing(cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    num_classes = datamodule.num_classes
    with open_dict(cfg):
        configured = cfg.model.model.get("num_classes")
        if configured is not None and configured != num_classes:
            raise ConfigError(
                f"model.model.num_classes={configured} but the train split of {cfg.data.root} has "
                f"{num_classes} identities: drop the override or fix the dataset"
            )
        cfg.model.model.num_classes = num_classes
    record_run_config(cfg)
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist: give the .ckpt to resume from, or drop it")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test_after_fit", True):
        trainer.test(module, datamodule=datamodule, verbose=False)  # EvaluationReport prints the table
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    return metrics


@contextmanager
def explained_run() -> Iterator[None]:
    """For the Hydra entry points: the run directory named first and last, Lightning's messages in the run's
    log, and a BiggaitError as one `error: ...` line (exit status 2)."""
    send_lightning_logs_to_the_run_log()
    log.info("run directory: %s", run_directory())
    try:
        with exit_on_error():
            yield
    finally:
        log.info("run directory: %s", run_directory())


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    with explained_run():
        train(cfg)


if __name__ == "__main__":
    main()
