"""Controlled studies on the `make train` recipe: conditions x seeds, one `biggait.train` run each, one table.

`make ablate` (the paper's GRE ablations, scripts/ablate.py) and `make compare-lvm` (random / label-free /
supervised stand-in backbone, scripts/compare_lvms.py) are both a list of conditions, each a set of Hydra
overrides, trained with several seeds. Each run is a separate `python -m biggait.train` process (its own Hydra
run directory, seed and log); a run whose results.json exists is not run again, so an interrupted study resumes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biggait.errors import BiggaitError
from biggait.io import atomic_write_bytes

__all__ = [
    "Condition",
    "RunResult",
    "cpu_name",
    "StudyError",
    "recipe_overrides",
    "results_csv",
    "run_study",
    "summarise",
    "summary_markdown",
    "write_study",
]

# The synthetic `make train` recipe (conf/experiment/synthetic.yaml): 600 steps, lr step at 500, mask branch
# frozen at 250. A shorter study keeps the same shape: both points move in proportion.
RECIPE_STEPS, RECIPE_MILESTONE, RECIPE_FREEZE = 600, 500, 250
CONDITIONS_OF_THE_PROTOCOL = ("CL", "UP", "DN", "BG")  # the synthetic world's CCPG-style rank-1 columns


class StudyError(BiggaitError, RuntimeError):
    """A run of a study failed."""


@dataclass(frozen=True)
class Condition:
    """One arm of a study: a name, its Hydra overrides and what the paper expects of it (for the table)."""

    name: str
    overrides: tuple[str, ...] = ()
    expected: str = ""


@dataclass
class RunResult:
    """The numbers of one (condition, seed) run, read from its results.json."""

    condition: str
    seed: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = float("nan")
    run_dir: str = ""


def recipe_overrides(steps: int) -> list[str]:
    """Overrides for a `steps`-step version of the recipe, plus what a study does not need (W&B, panels)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    common = ["logger=csv", "callbacks.feature_maps=null", f"trainer.max_steps={steps}"]
    if steps == RECIPE_STEPS:
        return common
    milestone = max(1, round(steps * RECIPE_MILESTONE / RECIPE_STEPS))
    freeze = max(1, round(steps * RECIPE_FREEZE / RECIPE_STEPS))
    return [
        *common,
        f"model.lr_milestones=[{milestone}]",
        f"callbacks.mask_branch_schedule.freeze_at_step={freeze}",
        f"callbacks.model_checkpoint.every_n_train_steps={steps}",
    ]


def cpu_name() -> str:
    """The CPU model (for the tables: timings are only comparable on one CPU), and the cores this process sees."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        name = models[0] if models else name
    return f"{name}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores"


def _results_file(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "evaluation").glob("test-step*/results.json"))
    return found[-1] if found else None


def _read_result(condition: str, seed: int, run_dir: Path) -> RunResult:
    path = _results_file(run_dir)
    if path is None:
        raise StudyError(
            f"{run_dir}: the run wrote no evaluation/test-step*/results.json (see its train.log)"
        )
    blob = json.loads(path.read_text())
    metrics = {k: float(v) for k, v in blob["metrics"].items() if k in CONDITIONS_OF_THE_PROTOCOL}
    if "foreground_iou" in blob:
        metrics["foreground_iou"] = float(blob["foreground_iou"])
    seconds_file = run_dir / "study_seconds.txt"
    seconds = float(seconds_file.read_text()) if seconds_file.is_file() else float("nan")
    return RunResult(condition, seed, metrics, seconds, str(run_dir))


def _train(run_dir: Path, overrides: Sequence[str], log: Callable[[str], None]) -> None:
    command = [sys.executable, "-m", "biggait.train", f"hydra.run.dir={run_dir}", *overrides]
    log(f"$ {' '.join(command)}")
    started = time.perf_counter()
    done = subprocess.run(
        command, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise StudyError(f"training run {run_dir} failed (exit {done.returncode}):\n{tail}")
    atomic_write_bytes(run_dir / "study_seconds.txt", f"{time.perf_counter() - started:.1f}\n".encode())


def run_study(
    conditions: Sequence[Condition],
    *,
    seeds: Sequence[int],
    steps: int,
    out: Path,
    extra: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> list[RunResult]:
    """Train every condition with every seed under `out/<condition>/seed<k>` (skipping finished runs)."""
    names = [c.name for c in conditions]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"condition names must be unique and non-empty, got {names}")
    results = []
    for condition in conditions:
        for seed in seeds:
            run_dir = out / condition.name / f"seed{seed}"
            if _results_file(run_dir) is None:
                overrides = [*recipe_overrides(steps), f"seed={seed}", *condition.overrides, *extra]
                _train(run_dir, overrides, log)
            results.append(_read_result(condition.name, seed, run_dir))
            log(f"{condition.name} seed {seed}: {results[-1].metrics}")
    return results


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def summarise(results: Sequence[RunResult]) -> dict[str, dict[str, tuple[float, float]]]:
    """condition -> metric -> (mean, sample std over seeds); "mean" is the mean rank-1 over CL/UP/DN/BG."""
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for name in dict.fromkeys(r.condition for r in results):
        runs = [r for r in results if r.condition == name]
        for r in runs:
            r.metrics["mean"] = sum(r.metrics.get(c, float("nan")) for c in CONDITIONS_OF_THE_PROTOCOL) / 4
        keys = dict.fromkeys(k for r in runs for k in r.metrics)
        table[name] = {k: _mean_std([r.metrics.get(k, float("nan")) for r in runs]) for k in keys}
        table[name]["seconds"] = _mean_std([r.seconds for r in runs])
        table[name]["runs"] = (float(len(runs)), 0.0)
    return table


def _cell(value: tuple[float, float] | None, runs: int = 2) -> str:
    if value is None or math.isnan(value[0]):
        return "-"
    return f"{value[0]:.1f}" if runs < 2 else f"{value[0]:.1f} ± {value[1]:.1f}"  # one run has no spread


def _direction(delta: float, spread: float, seeds: int) -> str:
    """ "lower" / "higher", "within noise" when the change is no larger than the seed spread, or "no spread"
    when neither side has a second seed (a single seed cannot tell an effect from noise)."""
    if seeds < 2:
        return "no spread (1 seed each)"
    if abs(delta) <= spread:
        return "within noise"
    return "lower" if delta < 0 else "higher"


def summary_markdown(
    summary: dict[str, dict[str, tuple[float, float]]],
    conditions: Sequence[Condition],
    *,
    reference: str,
    extra_columns: Sequence[tuple[str, str]] = (),
) -> str:
    """A markdown table (mean ± std over seeds), with each condition's change of mean rank-1 vs `reference`."""
    columns = [(c, f"{c} R1") for c in CONDITIONS_OF_THE_PROTOCOL] + [("mean", "mean R1")]
    columns += [("foreground_iou", "mask fg IoU"), *extra_columns]
    header = ["condition", "seeds", *[title for _, title in columns], "Δ mean R1", "expected (paper)"]
    header += ["seen here", "s/run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base_mean, base_std = summary.get(reference, {}).get("mean", (float("nan"), 0.0))
    base_runs = int(summary.get(reference, {}).get("runs", (0.0, 0.0))[0])
    for condition in conditions:
        row = summary.get(condition.name)
        if row is None:
            continue
        delta, runs = row["mean"][0] - base_mean, int(row["runs"][0])
        cells = [_cell(row.get(key), runs) for key, _ in columns]
        is_reference = condition.name == reference or math.isnan(delta)
        spread, seeds = max(base_std, row["mean"][1]), max(runs, base_runs)
        seen = "-" if is_reference else _direction(delta, spread, seeds)
        seconds = row["seconds"][0]
        cells += ["-" if is_reference else f"{delta:+.1f}", condition.expected or "-", seen]
        cells.append("-" if math.isnan(seconds) else f"{seconds:.0f}")
        lines.append(f"| {condition.name} | {int(row['runs'][0])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_csv(results: Sequence[RunResult]) -> bytes:
    """One row per run: condition, seed, every metric, seconds, run directory."""
    keys = list(dict.fromkeys(k for r in results for k in r.metrics))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["condition", "seed", *keys, "seconds", "run_dir"])
    for r in results:
        writer.writerow([r.condition, r.seed, *[r.metrics.get(k, "") for k in keys], r.seconds, r.run_dir])
    return buffer.getvalue().encode()


def write_study(out: Path, results: Sequence[RunResult], table: str, info: dict[str, Any]) -> None:
    """results.csv (per run), summary.md (the table) and study.json (how it was run), atomically."""
    atomic_write_bytes(out / "results.csv", results_csv(results))
    atomic_write_bytes(out / "summary.md", (table + "\n").encode())
    atomic_write_bytes(out / "study.json", (json.dumps(info, indent=2) + "\n").encode())
