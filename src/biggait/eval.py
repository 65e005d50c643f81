"""Evaluation entry point: `python -m biggait.eval ckpt_path=... [experiment=...]` (Hydra)."""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from biggait.checkpoint import read_checkpoint
from biggait.errors import BiggaitError, ConfigError, exit_on_error
from biggait.formats import require_architecture
from biggait.lit_module import CONFIG_OF_ITS_MODEL, load_module
from biggait.overrides import check_overrides
from biggait.paths import conf_dir
from biggait.train import (
    check_accelerator,
    explained_run,
    instantiate_callbacks,
    instantiate_loggers,
    record_run_config,
    resolve_trainer_precision,
)

__all__ = ["RUNTIME_MODULE_OPTIONS", "RUNTIME_NET_OPTIONS", "check_inputs", "evaluate_checkpoint"]

# The checkpoint fixes the model; these options say how it runs and come from the evaluation's own config.
RUNTIME_NET_OPTIONS = ("backbone_precision", "eval_precision", "static_shapes")
RUNTIME_MODULE_OPTIONS = ("compile_backbone", "compile_head")


_STARTED = time.time()  # files of this run are no older (`_own_run_directory`)


def _refuse_ignored_model_overrides() -> None:
    """A command-line override of a model option the checkpoint fixes would be ignored: say so instead."""
    if not HydraConfig.initialized():
        return
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key != "model" and not key.startswith("model."):
            continue
        if key.removeprefix("model.net.") in RUNTIME_NET_OPTIONS:
            continue
        if key.removeprefix("model.") in RUNTIME_MODULE_OPTIONS:
            continue
        allowed = [f"model.net.{k}" for k in RUNTIME_NET_OPTIONS] + [
            f"model.{k}" for k in RUNTIME_MODULE_OPTIONS
        ]
        raise ConfigError(
            f"{override!r}: evaluation rebuilds the model from the checkpoint's options, so {key} cannot change "
            f"here; only how it runs can ({', '.join(allowed)}). Train or convert a checkpoint with that option."
        )


def _runtime_options(cfg: DictConfig) -> tuple[dict, dict]:
    """(BigGait options, module options) of this evaluation that replace the checkpoint's."""
    model = cfg.get("model") or {}
    net = model.get("net") or {}
    net_options = {k: net[k] for k in RUNTIME_NET_OPTIONS if k in net}
    module_options = {k: model[k] for k in RUNTIME_MODULE_OPTIONS if k in model}
    return net_options, module_options


def check_inputs(cfg: DictConfig):
    """The overrides, the checkpoint path and the test data, checked before anything is loaded or logged (a
    missing dataset is one error line, not one buried under the configuration); returns the DataModule."""
    _refuse_ignored_model_overrides()
    ckpt = cfg.get("ckpt_path")
    if ckpt is None or not Path(ckpt).is_file():
        raise ConfigError(
            f"ckpt_path={ckpt!r} is not a file: pass a Lightning checkpoint (outputs/.../checkpoints/last.ckpt, "
            "or one converted with `python -m biggait.compat.opengait IN OUT`)"
        )
    # a checkpoint of the other architecture is named before the data is looked for
    expected = cfg.get("model", {}).get("architecture", "biggait")
    require_architecture(read_checkpoint(ckpt), expected, f"checkpoint {ckpt}", fix=CONFIG_OF_ITS_MODEL)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.manifest("test")
    return datamodule


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, float]:
    """Test the checkpoint `cfg.ckpt_path` on `cfg.data` with that dataset's protocol (cross-domain works)."""
    datamodule, ckpt = check_inputs(cfg), cfg.ckpt_path
    check_accelerator(cfg, cpu_fallback=True)
    L.seed_everything(cfg.seed, workers=True)
    resolve_trainer_precision(cfg)  # may set model.net.eval_precision ("auto")
    net_options, module_options = _runtime_options(cfg)
    # Checked first (one error line for a bad file, before Lightning reads it). The protocol follows the
    # evaluation data, not the training data (cross-dataset tables); the backbone's `pretrained` file is not
    # read (the checkpoint holds every weight).
    module = load_module(
        ckpt,
        protocol=cfg.data.protocol,
        net_options=net_options,
        expected_architecture=cfg.model.get("architecture", "biggait"),  # the run-time options' model
        **module_options,
    )
    # config.yaml records the model that runs: the checkpoint's options + the run-time ones
    with open_dict(cfg):
        cfg.model = OmegaConf.create({"checkpoint": str(ckpt), **dict(module.hparams)})
    record_run_config(cfg)
    module.checkpoint_path = str(ckpt)  # reported with the results (results.json, printed table)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.test(module, datamodule=datamodule, verbose=False)  # EvaluationReport prints the table
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@contextmanager
def _no_run_directory_left_by_a_failure() -> Iterator[None]:
    """An evaluation that stops with an error before it evaluated anything removes its run directory: a
    typo'd path must not leave an empty `outputs/eval/<run>/<date>/` behind (issue #22)."""
    try:
        yield
    except (BiggaitError, SystemExit) as exc:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        run_dir = _own_run_directory()
        if run_dir is not None:
            logging.shutdown()  # the run's log file is closed before its folder goes
            shutil.rmtree(run_dir, ignore_errors=True)
            for parent in list(run_dir.parents)[:3]:  # outputs/eval/<run>/ when nothing else is in them
                try:
                    parent.rmdir()
                except OSError:
                    break
        raise


def _own_run_directory() -> Path | None:
    """The run directory of this evaluation when it holds nothing but what this run wrote before failing (Hydra's
    `.hydra/` and logs written since the process started); None otherwise: a folder with anything else in it
    (a `hydra.run.dir=` of the user's, an earlier run's results) is never removed."""
    if not HydraConfig.initialized():
        return None
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if not run_dir.is_dir():
        return None
    own = all(
        p.name == ".hydra" or (p.is_file() and p.suffix == ".log" and p.stat().st_mtime >= _STARTED)
        for p in run_dir.iterdir()
    )
    return run_dir if own else None


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="eval")
def main(cfg: DictConfig) -> None:
    with exit_on_error(), _no_run_directory_left_by_a_failure():
        check_inputs(cfg)
        with explained_run():
            evaluate_checkpoint(cfg)


if __name__ == "__main__":
    with exit_on_error():  # a typo'd override: one line with a suggestion, before Hydra's own error
        check_overrides("eval", sys.argv[1:])
    main()
