"""Training entry point: `python -m biggait.train [experiment=...] [overrides]` (Hydra)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from biggait.checkpoint import validate_checkpoint
from biggait.data.roots import DataRoot
from biggait.errors import ConfigError, exit_on_error
from biggait.formats import require_architecture
from biggait.io import atomic_write_bytes
from biggait.lit_module import CONFIG_OF_ITS_MODEL
from biggait.models import weights_from_checkpoint
from biggait.overrides import check_overrides
from biggait.paths import conf_dir
from biggait.precision import describe_precision

log = logging.getLogger(__name__)

__all__ = [
    "build_shards_if_missing",
    "check_accelerator",
    "explained_run",
    "instantiate_callbacks",
    "instantiate_loggers",
    "record_run_config",
    "resolve_trainer_precision",
    "run_directory",
    "send_lightning_logs_to_the_run_log",
    "train",
]


def resolve_trainer_precision(cfg: DictConfig) -> str:
    """Replace `trainer.precision` "auto" (or fp32/bf16/fp16) by the Lightning string it means here; log it.

    Where "auto" picks a low precision, an unset `model.net.eval_precision` becomes "fp32" (docs/performance.md).
    """
    requested = str(cfg.trainer.get("precision", "32-true"))
    choice = describe_precision(requested, accelerator=str(cfg.trainer.get("accelerator", "auto")))
    net = cfg.get("model", {}).get("net")
    with open_dict(cfg):
        cfg.trainer.precision = choice.precision
        # auto evaluates the GRE and GaitBase in fp32 unless model.net.eval_precision says otherwise
        if choice.eval_precision is not None and net is not None and net.get("eval_precision") is None:
            net.eval_precision = choice.eval_precision
    log.info("trainer.precision=%s -> %s", requested, choice)
    return choice.precision


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
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
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
    """Run the configured shard builder (synthetic only) when the local dataset root has no manifests yet
    (a URL root is read as it is: its errors name the URL)."""
    if not DataRoot.parse(cfg.data.root).is_local:
        return
    root = Path(cfg.data.root)
    complete = all((root / split / "manifest.json").is_file() for split in ("train", "test"))
    if complete or not cfg.get("data_prep"):
        return  # a real dataset that is missing gets its error (with the build command) from the DataModule
    processes = max(int(os.environ.get(key) or 1) for key in ("WORLD_SIZE", "SLURM_NTASKS"))
    if int(cfg.trainer.get("num_nodes", 1)) > 1 or processes > 1:
        # Every process of a torchrun / srun / multi-node launch gets here at once: they would all write (and
        # clean up) the same files. Lightning's own single-node launcher starts its other processes later.
        raise ConfigError(
            f"{root} has no shards yet and this is one of several processes of a multi-process or multi-node "
            f"launch: build them once first (make data DATASET=synthetic OUT={root}), then launch"
        )
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


_GPU_ACCELERATORS = ("gpu", "cuda")


def check_accelerator(cfg: DictConfig, *, cpu_fallback: bool) -> None:
    """A GPU trainer config on a machine without a GPU: evaluation falls back to one CPU process (with a
    one-line warning); training stops with one line (40k steps of a paper recipe on a CPU is never meant)."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator not in _GPU_ACCELERATORS or torch.cuda.is_available():
        return
    if not cpu_fallback:
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no GPU is visible: run this recipe on a GPU machine, or add "
            "trainer=cpu to run it on the CPU (very slow)"
        )
    log.warning(
        "no GPU is visible: evaluating on the CPU (one process, 32-bit); this is slow for large test sets"
    )
    with open_dict(cfg):
        cfg.trainer.update(
            accelerator="cpu",
            devices=1,
            num_nodes=1,
            strategy="auto",
            sync_batchnorm=False,
            precision="32-true",
        )


def train(cfg: DictConfig) -> dict[str, float]:
    """Build data, model, callbacks, loggers and trainer from `cfg`; fit, then test; return the metrics."""
    check_accelerator(cfg, cpu_fallback=False)
    if "pretrained" in cfg.model.get("net", {}) and cfg.model.net.pretrained is None:
        raise ConfigError(
            "model.net.pretrained is null: name the backbone weights: hub (DINOv2 from the Hugging Face hub), "
            "/path/dinov2_vits14_pretrain.pth, synthetic (the tiny stand-in LVM) or random (random features)"
        )
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))
    build_shards_if_missing(cfg)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None:
        # one error line for a bad file or one of the other architecture, before Lightning reads it
        expected = cfg.model.get("architecture", "biggait")
        what = f"ckpt_path={ckpt_path}"
        require_architecture(validate_checkpoint(ckpt_path), expected, what, fix=CONFIG_OF_ITS_MODEL)
    resolve_trainer_precision(cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    num_classes = datamodule.num_classes
    # The stored frame size travels in the checkpoint's hyper-parameters, so inference prepares crops alike.
    frame_size = [int(v) for v in datamodule.manifest("train")["frame_size"]]
    with open_dict(cfg):
        for key, value in (("num_classes", num_classes), ("frame_size", frame_size)):
            configured = cfg.model.net.get(key)
            if configured is not None:
                configured = [int(v) for v in configured] if key == "frame_size" else configured
                if configured != value:
                    raise ConfigError(
                        f"model.net.{key}={configured} but the train split of {cfg.data.root} has "
                        f"{key} {value}: drop the override or fix the dataset"
                    )
            cfg.model.net[key] = value
    record_run_config(cfg)
    # Resuming restores every weight from the checkpoint: the backbone's `pretrained` source is not read.
    with weights_from_checkpoint() if ckpt_path is not None else nullcontext():
        module = hydra.utils.instantiate(cfg.model, _convert_="all")
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
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


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def main(cfg: DictConfig) -> None:
    with explained_run():
        train(cfg)


if __name__ == "__main__":
    with exit_on_error():  # a typo'd override: one line with a suggestion, before Hydra's own error
        check_overrides("train", sys.argv[1:])
    main()
