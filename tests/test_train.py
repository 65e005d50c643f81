"""The real training entry point (Hydra config -> Trainer.fit/test) on a tiny model and shard set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from biggait.eval import evaluate_checkpoint
from biggait.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"

# A CPU-sized model and loop: tiny ViT at 112x56 (8x4 tokens), 32x16 maps, narrow GaitBase.
TINY = [
    "model.net.image_size=[112,56]",
    "model.net.map_size=[32,16]",
    "model.net.channels=[8,16,32,64]",
    "model.net.embed_dim=16",
    "model.net.fusion_squeeze=4",
    "data.frames_per_sequence=4",
    "data.ids_per_batch=3",
    "data.seqs_per_id=2",
    "data.eval_batch_size=4",
    "data.num_workers=0",
    "data.shuffle_buffer=16",
    "data_prep=none",
    "callbacks.feature_maps.every_n_steps=2",
    "callbacks.mask_branch_schedule.freeze_at_step=2",
    "callbacks.progress_bar.refresh_rate=0",
    "trainer.log_every_n_steps=1",
    "callbacks.throughput.window=1",
]


def compose_train(tmp_path: Path, root: Path, *overrides: str, config_name: str = "train"):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name=config_name, overrides=[*TINY, *overrides], return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.data.root = str(root)
    return cfg


def steps(n: int, per_epoch: int) -> list[str]:
    return [
        f"trainer.max_steps={n}",
        f"data.steps_per_epoch={per_epoch}",
        f"trainer.val_check_interval={n}",
        f"callbacks.model_checkpoint.every_n_train_steps={per_epoch}",
    ]


def test_train_then_eval_reproduces_the_numbers(
    tiny_shards: Path, tmp_path: Path, as_legacy_checkpoint
) -> None:
    cfg = compose_train(tmp_path / "run", tiny_shards, *steps(4, 2), "logger=csv")
    metrics = train(cfg)
    for key in ("test/CL", "test/UP", "test/DN", "test/BG", "test/reid/CL/mAP", "test/foreground_iou"):
        assert key in metrics, key
    out = tmp_path / "run"
    results = sorted((out / "evaluation").glob("test-step*/results.json"))
    assert results, "no results.json written"
    data = json.loads(results[-1].read_text())
    assert data["metrics"]["CL"] == pytest.approx(metrics["test/CL"])
    assert sorted(p.name for p in results[-1].parent.glob("rank1_*.png")) == [
        "rank1_BG.png",
        "rank1_CL.png",
        "rank1_DN.png",
        "rank1_UP.png",
    ]
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "feature_maps").rglob("*.png")), "no feature-map panels in the run directory"
    # the CSV logger got the loss terms and the learning rate
    csv = next((out / "csv").rglob("metrics.csv")).read_text().splitlines()[0]
    for key in ("train/triplet", "train/ce", "train/shape_mse", "train/part_diversity", "train/lr"):
        assert key in csv, key

    # evaluation only, from the checkpoint (and from it as older versions wrote it): the same numbers
    last = out / "checkpoints" / "last.ckpt"
    for name, ckpt in (("eval", last), ("eval_legacy", as_legacy_checkpoint(last, tmp_path / "legacy.ckpt"))):
        again, _ = evaluate(ckpt, tmp_path / name, tiny_shards)
        keys = [k for k in metrics if k.startswith("test/")]
        assert len(keys) >= 20
        for key in keys:
            assert again[key] == pytest.approx(metrics[key], abs=1e-6), (name, key)

    # the evaluation's own run-time options apply to the checkpoint's model: a bf16 trainer with the GRE and
    # GaitBase in fp32 computes exactly what an fp32 trainer with a bf16 backbone does, and not bf16 everywhere
    runs = {
        "split": ["trainer.precision=bf16-mixed", "model.net.eval_precision=fp32"],
        "pinned": ["trainer.precision=32-true", "model.net.backbone_precision=bf16"],
        "bf16": ["trainer.precision=bf16-mixed"],
    }
    numbers, configs = {}, {}
    for name, overrides in runs.items():
        numbers[name], configs[name] = evaluate(last, tmp_path / name, tiny_shards, *overrides)
    assert numbers["split"] == pytest.approx(numbers["pinned"], abs=1e-6)
    assert any(abs(numbers["bf16"][k] - numbers["split"][k]) > 1e-6 for k in numbers["split"])
    assert configs["split"].model.net.eval_precision == "fp32"  # config.yaml records the model that ran
    assert configs["split"].model.checkpoint == str(last)


def evaluate(ckpt: Path, out: Path, shards: Path, *overrides: str) -> tuple[dict[str, float], DictConfig]:
    """`python -m biggait.eval experiment=synthetic ckpt_path=CKPT *overrides` in-process: (metrics, config)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(
            config_name="eval",
            overrides=[
                "experiment=synthetic",  # what `make eval` passes: its train-only deltas must compose
                "data.eval_batch_size=4",
                "data.num_workers=0",
                f"ckpt_path={ckpt}",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.data.root = str(shards)
    return evaluate_checkpoint(cfg), cfg


def test_resume_is_exact(tiny_shards: Path, tmp_path: Path, as_legacy_checkpoint) -> None:
    """Train 4 steps straight vs 2 steps + resume for 2: the same weights (mask freeze at step 2 included).
    The resume starts from the checkpoint as older biggait versions wrote it (model.* names), which must not
    matter."""
    common = ["logger=none", "test_after_fit=false", "callbacks.feature_maps.every_n_steps=0"]
    straight = compose_train(tmp_path / "a", tiny_shards, *steps(4, 2), *common)
    train(straight)
    half = compose_train(tmp_path / "b", tiny_shards, *steps(2, 2), *common)
    train(half)
    resumed = compose_train(
        tmp_path / "b2",
        tiny_shards,
        *steps(4, 2),
        *common,
        f"ckpt_path={as_legacy_checkpoint(tmp_path / 'b' / 'checkpoints' / 'last.ckpt', tmp_path / 'b.ckpt')}",
    )
    train(resumed)
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "b2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 4
    assert a["biggait"]["mask_branch_frozen"] and b["biggait"]["mask_branch_frozen"]
    initial = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    moved = 0
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], value, rtol=1e-5, atol=1e-6, msg=name)
        moved += not torch.equal(value, initial[name])
    assert moved > 10, "the last two steps changed nothing: the comparison would be vacuous"
    assert len(a["optimizer_states"][0]["param_groups"][0]["params"]) == len(
        b["optimizer_states"][0]["param_groups"][0]["params"]
    )


def test_wandb_offline_run_directory(tiny_shards: Path, tmp_path: Path, monkeypatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_train(tmp_path, tiny_shards, *steps(2, 2), "logger=wandb", "test_after_fit=false")
    try:
        train(cfg)
    finally:
        wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    # The offline run log (protobuf records, synced later with `wandb sync`) holds the resolved config,
    # the loss terms, the evaluation results, and the images (feature maps and rank-1 heatmaps).
    log = next(runs[0].glob("*.wandb")).read_bytes()
    for key in (
        b"ids_per_batch",
        b"frames_per_sequence",
        b"train/triplet",
        b"train/part_diversity",
        b"train/lr",
        b"perf/frames_per_s",
        b"val/CL",
        b"val/reid/CL/mAP",
    ):
        assert key in log, key
    images = {
        p.parent.name + "/" + p.name.split("_")[0] for p in (runs[0] / "files" / "media").rglob("*.png")
    }
    # one W&B key per panel (feature_maps/sequence_<i>, feature_maps/comparison, <stage>/rank1_heatmaps/<cond>)
    assert {"feature_maps/sequence", "feature_maps/comparison", "rank1_heatmaps/CL"} <= images, images


def test_missing_dataset_is_one_clear_error(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, tmp_path / "nowhere", *steps(2, 2), "logger=none")
    from biggait.errors import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError, match="make data DATASET="):
        train(cfg)


@pytest.mark.parametrize(
    ("override", "env"),
    [
        ("trainer.num_nodes=2", {}),
        ("trainer.devices=1", {"WORLD_SIZE": "8"}),
        ("seed=0", {"SLURM_NTASKS": "16"}),
    ],
)
def test_shards_are_not_built_by_every_process_of_a_launch(
    override: str, env: dict[str, str], tmp_path: Path, monkeypatch
) -> None:
    """Under torchrun / srun / several nodes every process would build (and clean up) the same shards at once:
    a clear error naming the build command instead; a single process still builds them."""
    from biggait.errors import ConfigError
    from biggait.train import build_shards_if_missing

    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="train", overrides=[override, f"data.root={tmp_path / 'data'}"])
    with pytest.raises(ConfigError, match=r"build them once first \(make data DATASET=synthetic OUT="):
        build_shards_if_missing(cfg)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("entry", "override", "message"),
    [
        ("biggait.eval", "ckpt_path=nowhere.ckpt", "ckpt_path='nowhere.ckpt' is not a file"),
        # the checkpoint fixes the model: an override evaluation would ignore is refused, naming what can change
        ("biggait.eval", "model.net.embed_dim=8", "model.net.embed_dim cannot change here"),
        # raised inside Hydra's instantiation of a callback: still one line, not a wrapped traceback
        ("biggait.train", "callbacks.mask_branch_schedule.freeze_at_step=-1", "freeze_at_step must be >= 0"),
    ],
)
def test_cli_bad_input_is_one_error_line_and_exit_2(
    entry: str, override: str, message: str, tiny_shards: Path, tmp_path: Path
) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            entry,
            override,
            f"data.root={tiny_shards}",
            "logger=none",
            "data_prep=none",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], run.stderr[-2000:]
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("environ", "suffix"),
    [
        ({}, ""),
        ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "4"}, ""),  # torchrun, global rank 0
        ({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8"}, "_rank5"),
        ({"SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1"}, "_rank9"),
        ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, ""),  # one SLURM task: a process started alone
        ({"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1"}, "_node1"),  # by hand, node 1
        ({"NODE_RANK": "0", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}, ""),  # Lightning's child: its own job name
    ],
)
def test_launch_log_suffix(environ: dict[str, str], suffix: str) -> None:
    from biggait.paths import launch_log_suffix

    assert launch_log_suffix(environ) == suffix


def test_processes_of_a_launch_write_their_own_run_log(tmp_path: Path) -> None:
    """The Hydra entry points name the run log after the process (a rank > 0 of torchrun here), so the
    processes of a launch sharing a run directory do not interleave their lines in one file."""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SLURM_")}
    (tmp_path / "notes.txt").write_text("not the run's: the failed evaluation keeps this folder")
    run = subprocess.run(
        [sys.executable, "-m", "biggait.eval", "ckpt_path=nowhere.ckpt", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "RANK": "3"},
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert [p.name for p in tmp_path.glob("*.log")] == ["eval_rank3.log"]
    assert (tmp_path / "notes.txt").exists()


def cli_train(tiny_shards: Path) -> list[str]:
    """`python -m biggait.train` for 2 steps of the tiny model on the tiny shards, no logger, no panels."""
    return [
        sys.executable,
        "-m",
        "biggait.train",
        *TINY,
        *steps(2, 2),
        "logger=none",
        f"data.root={tiny_shards}",
        "callbacks.feature_maps.every_n_steps=0",
    ]


@pytest.mark.slow
def test_cli_ddp_two_processes_matches_single_process_evaluation(tiny_shards: Path, tmp_path: Path) -> None:
    """`python -m biggait.train trainer=ddp_cpu` (2 gloo processes) trains and tests; evaluating its checkpoint
    with 2 processes gives the single-process numbers."""
    base = cli_train(tiny_shards)
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [*base, "trainer=ddp_cpu", f"hydra.run.dir={tmp_path / 'ddp'}"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ckpt = tmp_path / "ddp" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    numbers = {}
    for name, trainer in (("single", "trainer=cpu"), ("ddp", "trainer=ddp_cpu")):
        ev = subprocess.run(
            [
                sys.executable,
                "-m",
                "biggait.eval",
                trainer,
                f"ckpt_path={ckpt}",
                f"data.root={tiny_shards}",
                "data.num_workers=0",
                "data.eval_batch_size=3",
                f"hydra.run.dir={tmp_path / name}",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert ev.returncode == 0, ev.stderr[-3000:]
        result = next((tmp_path / name / "evaluation").glob("test-step*/results.json"))
        numbers[name] = json.loads(result.read_text())["metrics"]
    assert numbers["ddp"] == pytest.approx(numbers["single"], abs=1e-6)


@pytest.mark.slow
def test_cli_run_explains_itself(tiny_shards: Path, tmp_path: Path) -> None:
    """`python -m biggait.train` names its run directory first and last, saves the resolved config, prints one
    results table, and its train.log holds the run (our messages and Lightning's)."""
    out = tmp_path / "run"
    run = subprocess.run(
        [*cli_train(tiny_shards), f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert lines[0].endswith(f"run directory: {out}") and lines[-1].endswith(f"run directory: {out}"), (
        run.stdout
    )
    assert run.stdout.count("test results (") == 1, run.stdout
    assert "Test metric" not in run.stdout + run.stderr  # Lightning's own table is not printed as well
    saved = (out / "config.yaml").read_text()
    assert f"root: {tiny_shards}" in saved and "${" not in saved  # resolved
    assert "resolved configuration:" in run.stdout and "max_steps: 2" in run.stdout
    log = (out / "train.log").read_text()
    assert "test results (" in log and f"run directory: {out}" in log
    assert "lightning.pytorch" in log  # e.g. Lightning's "GPU available" lines reach the run's log


def test_throughput_window_must_be_positive() -> None:
    from biggait.callbacks.throughput import TrainThroughput
    from biggait.errors import ConfigError

    with pytest.raises(ConfigError, match="window must be >= 1"):
        TrainThroughput(window=0)
