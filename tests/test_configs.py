"""Every config composes, and every group entry instantiates (the cheap, high-value check of the template)."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from biggait.callbacks import EvaluationReport
from biggait.errors import ConfigError
from biggait.train import instantiate_callbacks, instantiate_loggers

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
# (steps, lr milestones, sequences per GPU) of OpenGait `configs/biggait/BigGait_CCPG.yaml` and
# `configs/biggergait/biggergait__DINOv2_CCPG.yaml`
PAPER_RECIPES = {
    "biggait": (40000, [15000, 25000, 30000, 35000], 8),
    "biggergait": (30000, [15000, 25000], 4),
}


def _compose(config_name: str, overrides: list[str], tmp_path: Path):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
        cfg.paths.data_dir = str(tmp_path / "data")
        cfg.hydra.runtime.output_dir = str(tmp_path / "out")
    return cfg


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_train_experiment_instantiates(experiment: str, tmp_path: Path) -> None:
    cfg = _compose("train", [f"experiment={experiment}", "logger=csv"], tmp_path)
    with open_dict(cfg):
        cfg.model.net.num_classes = 10
        cfg.model.net.pretrained = "random"  # the paper recipes default to hub: no network in tests
        if experiment != "synthetic":
            # the paper preset is big on a CPU: check the recipe values, build a tiny backbone
            assert cfg.model.net.backbone == "vits14"
            assert list(cfg.model.net.image_size) == [448, 224]
            steps, milestones, per_gpu = PAPER_RECIPES[experiment.split("_")[0]]
            assert cfg.trainer.max_steps == steps and cfg.trainer.precision == "16-mixed"
            assert list(cfg.model.lr_milestones) == milestones
            # x 8 GPUs = the official 64 (BigGait) / 32 (BiggerGait) sequences of 30 frames
            assert (cfg.data.ids_per_batch * cfg.data.seqs_per_id, cfg.data.frames_per_sequence) == (
                per_gpu,
                30,
            )
            assert cfg.trainer.sync_batchnorm is True
            cfg.model.net.backbone = "tiny"
            if "mask_branch" in cfg.model.net:
                assert cfg.model.net.mask_branch is None  # the user names it (model.net.mask_branch=<file>)
                grouping = (cfg.model.net.layers_per_group, cfg.model.net.gait_heads)
                assert grouping == ((2, 2) if "group" in experiment else (1, 12))
                cfg.model.net.mask_branch = "random"
                cfg.model.net.gait_heads = 2  # the tiny backbone has 4 layers
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    assert module.hparams.protocol == cfg.data.protocol
    datamodule = hydra.utils.instantiate(cfg.data)
    assert datamodule is not None
    for name, cb in cfg.callbacks.items():
        assert hydra.utils.instantiate(cb) is not None, name
    for name, lg in cfg.logger.items():
        assert hydra.utils.instantiate(lg) is not None, name
    trainer_cfg = dict(cfg.trainer)
    trainer_cfg.update(
        accelerator="cpu", devices=1, precision="32-true", strategy="auto", sync_batchnorm=False
    )
    trainer = hydra.utils.instantiate(trainer_cfg, logger=False, enable_checkpointing=False)
    assert trainer.max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("model", [m for m in MODELS if m.endswith("_tiny")])
def test_every_cpu_model_trains_on_the_synthetic_experiment(model: str, tmp_path: Path) -> None:
    cfg = _compose("train", [f"model={model}", "logger=csv"], tmp_path)
    with open_dict(cfg):
        cfg.model.net.num_classes = 10
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    assert type(module.net).__name__ == ("BigGait" if model == "biggait_tiny" else "BiggerGait")


@pytest.mark.parametrize(
    "group_entry",
    [
        "logger=wandb",
        "logger=csv",
        "logger=none",
        "trainer=cpu",
        "trainer=gpu",
        "trainer=ddp",
        "trainer=ddp_cpu",
        "data_prep=none",
    ],
)
def test_group_entries_compose(group_entry: str, tmp_path: Path) -> None:
    cfg = _compose("train", [group_entry], tmp_path)
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_eval_config_composes(experiment: str, tmp_path: Path) -> None:
    cfg = _compose("eval", [f"experiment={experiment}", "ckpt_path=x.ckpt"], tmp_path)
    assert cfg.ckpt_path == "x.ckpt" and cfg.data.protocol
    # the experiment's callback deltas (written for train) must build under eval too
    callbacks = instantiate_callbacks(cfg.callbacks)
    assert any(isinstance(cb, EvaluationReport) for cb in callbacks)
    assert instantiate_loggers(cfg.logger) == []


def test_callback_without_target_is_a_clear_error(tmp_path: Path) -> None:
    cfg = _compose("train", ["+callbacks.early_stop.patience=3"], tmp_path)
    with pytest.raises(ConfigError, match=r"callbacks\.early_stop has no _target_"):
        instantiate_callbacks(cfg.callbacks)


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    cfg = _compose("train", ["+model.net.not_an_option=1"], tmp_path)
    with open_dict(cfg):
        cfg.model.net.num_classes = 10
    with pytest.raises(Exception, match="not_an_option"):
        hydra.utils.instantiate(cfg.model, _convert_="all")


TRAINERS = sorted(p.stem for p in (CONF / "trainer").glob("*.yaml") if p.stem != "default")


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("config_name", ["train", "eval"])
def test_every_trainer_config_takes_num_nodes(trainer: str, config_name: str, tmp_path: Path) -> None:
    """`trainer.num_nodes=N` (the multi-node launches of docs/5_multi_gpu.md) is a plain override for every
    trainer config, and reaches the Trainer (the accelerator forced to CPU, as on this machine)."""
    extra = ["ckpt_path=x.ckpt"] if config_name == "eval" else []
    cfg = _compose(config_name, [f"trainer={trainer}", "trainer.num_nodes=2", *extra], tmp_path)
    trainer_cfg = dict(cfg.trainer)
    trainer_cfg.update(accelerator="cpu", devices=1, precision="32-true", sync_batchnorm=False)
    if trainer_cfg.get("strategy", "auto") == "auto":
        trainer_cfg["strategy"] = "ddp"  # a single-process config run on 2 nodes is DDP too
    built = hydra.utils.instantiate(trainer_cfg, logger=False, enable_checkpointing=False)
    assert built.num_nodes == 2 and built.world_size == 2
