"""biggait.study and `make ablate` (scripts/ablate.py): conditions x seeds of real training runs, one table."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from biggait.study import Condition, RunResult, recipe_overrides, summarise, summary_markdown
from test_train import TINY as TRAIN_TINY

REPO = Path(__file__).resolve().parents[1]

# test_train's CPU-sized model and data; a study turns the panel callback off
TINY = [o for o in TRAIN_TINY if not o.startswith("callbacks.feature_maps")] + ["data.steps_per_epoch=2"]


def test_recipe_overrides_scale_the_schedule_with_the_steps() -> None:
    assert "trainer.max_steps=600" in recipe_overrides(600)
    assert not any("lr_milestones" in o for o in recipe_overrides(600))  # the recipe as it is
    short = recipe_overrides(60)
    assert "model.lr_milestones=[50]" in short and "callbacks.mask_branch_schedule.freeze_at_step=25" in short
    assert "logger=csv" in short and "callbacks.feature_maps=null" in short
    with pytest.raises(ValueError):
        recipe_overrides(0)


def test_summary_means_spreads_and_directions() -> None:
    def run(condition: str, seed: int, cl: float) -> RunResult:
        return RunResult(
            condition, seed, {"CL": cl, "UP": cl, "DN": cl, "BG": cl, "foreground_iou": 50.0}, 10.0
        )

    results = [run("full", 0, 40), run("full", 1, 44), run("a", 0, 20), run("a", 1, 24), run("b", 0, 42)]
    summary = summarise(results)
    mean, std = summary["full"]["mean"]
    assert mean == pytest.approx(42.0) and std == pytest.approx(math.sqrt(8.0))
    arms = [Condition("full", expected="reference"), Condition("a", expected="lower"), Condition("b")]
    table = summary_markdown(summary, arms, reference="full").splitlines()
    assert len(table) == 2 + 3
    assert "| a | 2 |" in table[3] and "-20.0" in table[3] and "| lower | lower |" in table[3]
    assert "within noise" in table[4]  # +0.0 vs a spread of 2.8
    assert "| b | 1 | 42.0 |" in table[4]  # one run: a value, no "± 0.0"
    single = summarise([run("full", 0, 40), run("a", 0, 30)])
    table = summary_markdown(single, arms[:2], reference="full").splitlines()
    assert "| lower | no spread (1 seed each) |" in table[3]  # not "lower" from a spread of zero


@pytest.mark.slow
def test_make_ablate_trains_each_condition_and_resumes(tiny_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "ablate"
    command = [sys.executable, str(REPO / "scripts" / "ablate.py"), "--ablations", "mask_branch"]
    command += ["--seeds", "0", "--steps", "2", "--out", str(out), "--", f"data.root={tiny_shards}", *TINY]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["condition"], r["seed"]) for r in rows] == [("full_gre", "0"), ("mask_branch", "0")]
    config = (out / "mask_branch" / "seed0" / "config.yaml").read_text()
    assert "- mask_branch" in config and "max_steps: 2" in config
    summary = (out / "summary.md").read_text()
    assert "| mask_branch | 1 |" in summary and "lower (background kept" in summary
    assert json.loads((out / "study.json").read_text())["steps"] == 2
    # a second run reads the finished runs instead of training them again
    results = out / "mask_branch" / "seed0" / "evaluation"
    before = {p: p.stat().st_mtime_ns for p in results.rglob("results.json")}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "$ " not in done.stdout
    assert {p: p.stat().st_mtime_ns for p in results.rglob("results.json")} == before


def test_ablate_rejects_an_unknown_ablation(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO / "scripts" / "ablate.py"), "--ablations", "backbone"]
    done = subprocess.run(command + ["--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "unknown ablations ['backbone']" in done.stderr


@pytest.mark.slow
def test_make_compare_lvm_trains_each_backbone_and_measures_its_features(
    tiny_shards: Path, tmp_path: Path
) -> None:
    from biggait.label_free_lvm import main as pretrain

    lvm = tmp_path / "label_free.pt"
    argv = ["--out", str(lvm), "--steps", "2", "--batch-size", "4", "--train-sequences", "2", "--frames", "2"]
    assert pretrain([*argv, "--empty-frames", "2", "--test-sequences", "2", "--accelerator", "cpu"]) == 0
    out = tmp_path / "compare"
    command = [sys.executable, str(REPO / "scripts" / "compare_lvms.py"), "--label-free", str(lvm)]
    command += ["--seeds", "0", "--steps", "2", "--test-sequences", "2", "--out", str(out)]
    command += ["--", f"data.root={tiny_shards}", *TINY, "model.net.image_size=[224,112]"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["condition"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {"random", "label_free", "supervised"}
    assert all(0.0 <= float(r["backbone_pca1_iou"]) <= 100.0 for r in rows.values())
    assert str(lvm) in (out / "label_free" / "seed0" / "config.yaml").read_text()
    assert "pretrained: random" in (out / "random" / "seed0" / "config.yaml").read_text()
    summary = (out / "summary.md").read_text()
    assert "backbone PCA-1 fg IoU" in summary and "label-free: mean CL" in summary
