"""Multi-node training for real: 2 nodes x 1 process on this machine, launched as a cluster launches them.

Each "node" is a separate `python -m biggait.train` (or `torchrun`) process group with its own run directory (no
shared filesystem between the nodes is assumed), joined over gloo at `MASTER_ADDR=127.0.0.1`. What is
compared, and why it is exact:

- The 2-node run has the rank layout of one node with 2 processes (`trainer=ddp_cpu`, global ranks 0 and 1
  reading the same shards, the same seeds, the same all-reduce): its trained weights and its test metrics must
  be *identical* to that run's. A run with world size 1 trains on other batches (by design), so it is not
  the reference for training; the same weights differ from it, which shows the nodes really synchronised.
- Evaluating the checkpoint the 2-node run saved with *one* process gives exactly the numbers the 2 nodes
  computed together: every test sequence scored once (each node embeds its share, the metric gathers them).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_train import cli_train

pytestmark = pytest.mark.slow

TIMEOUT_S = 420  # per launch, on a busy 2-core machine (a launch takes ~15-35 s when the machine is idle)
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any launcher's variables (a test run under SLURM or torchrun must
    not leak its own ranks into the nodes), one thread per process, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCHER_ENV and not k.startswith(("SLURM_", "TORCHELASTIC_", "PL_"))
    }
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def launch(jobs: list[tuple[list[str], dict[str, str], Path]]) -> None:
    """Start every (command, environment, log file) at once and wait for all; when one fails or the time runs
    out, kill every process group (the launchers' children too), then fail with the logs' tails."""
    procs = []
    try:
        for command, env, log in jobs:
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
        deadline = time.monotonic() + TIMEOUT_S
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:  # the whole group: a launcher's children outlive it when it dies first
            with contextlib.suppress(ProcessLookupError):  # raised when the group has exited
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    failed = [(job, p.returncode) for job, p in zip(jobs, procs) if p.returncode != 0]
    if failed:
        tails = "\n".join(f"--- {log} (exit {rc}):\n{log.read_text()[-2500:]}" for (_, _, log), rc in failed)
        pytest.fail(
            f"{len(failed)} of {len(jobs)} processes failed or timed out after {TIMEOUT_S} s:\n{tails}"
        )


def train_command(tiny_shards: Path, run_dir: Path, *extra: str, entry: list[str] | None = None) -> list[str]:
    """The real CLI, 2 steps of the tiny model (with the mid-run mask freeze), then the test split."""
    base = cli_train(tiny_shards)
    if entry is not None:  # e.g. torchrun ... -m biggait.train instead of python -m biggait.train
        base = [*entry, *base[base.index("biggait.train") + 1 :]]
    return [*base, "trainer=ddp_cpu", *extra, f"hydra.run.dir={run_dir}"]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


def results(run_dir: Path) -> dict:
    found = sorted((run_dir / "evaluation").glob("test-step*/results.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


def assert_same_run(run: Path, reference: Path) -> None:
    """Bit-identical weights and identical test results (every sequence scored once)."""
    mine, theirs = weights(run), weights(reference)
    assert mine.keys() == theirs.keys()
    differ = [k for k in mine if not torch.equal(mine[k], theirs[k])]
    assert not differ, f"{len(differ)} tensors differ from the 1-node x 2-process run, e.g. {differ[:3]}"
    got, want = results(run), results(reference)
    assert got["metrics"] == want["metrics"]
    counts = got["counts"]
    assert counts["sequences"] == counts["sequences_expected"] > 0 and counts["sequences_skipped"] == 0


def assert_only_node0_writes(node1_dir: Path) -> None:
    """Checkpoints, evaluation reports, panels and experiment logs come from global rank 0 only: the other
    node's run directory holds its own log (named after its node) and config, nothing else."""
    written = {p.name for p in node1_dir.iterdir()} - {".hydra"}
    assert written == {"train_node1.log", "config.yaml"}, written


@pytest.fixture(scope="module")
def one_node_two_processes(tiny_shards: Path, tmp_path_factory) -> Path:
    """The reference: `trainer=ddp_cpu` on one node (Lightning launches the second process itself)."""
    out = tmp_path_factory.mktemp("one_node")
    launch([(train_command(tiny_shards, out / "run"), clean_env(), out / "run.log")])
    return out / "run"


def test_two_nodes_by_hand_equal_one_node_and_one_process_evaluation(
    one_node_two_processes: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    """Two nodes started as Lightning documents for a cluster without a scheduler: the same command on every
    node with MASTER_ADDR, MASTER_PORT, NODE_RANK and WORLD_SIZE (LightningEnvironment; without LOCAL_RANK
    Lightning would start `trainer.devices - 1` more processes per node itself)."""
    port = str(free_port())
    jobs = []
    for node in (0, 1):
        env = clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(node), WORLD_SIZE="2")
        command = train_command(
            tiny_shards,
            tmp_path / f"node{node}",
            "trainer.num_nodes=2",
            "trainer.devices=1",
            "logger=wandb",
        )
        jobs.append((command, {**env, "WANDB_MODE": "offline"}, tmp_path / f"node{node}.log"))
    launch(jobs)
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in (tmp_path / "node1.log").read_text()  # one world, not two
    assert_same_run(node0, one_node_two_processes)
    assert list((node0 / "wandb").glob("offline-run-*")), "the W&B run of global rank 0 is missing"
    assert_only_node0_writes(node1)  # W&B too: no second run from node 1

    # One process evaluates the checkpoint the two nodes saved: the numbers the two nodes computed together.
    evaluation = tmp_path / "single_eval"
    command = [
        sys.executable,
        "-m",
        "biggait.eval",
        "trainer=cpu",
        f"ckpt_path={node0 / 'checkpoints' / 'last.ckpt'}",
        f"data.root={tiny_shards}",
        "data.num_workers=0",
        "data.eval_batch_size=3",
        f"hydra.run.dir={evaluation}",
    ]
    launch([(command, clean_env(), tmp_path / "single_eval.log")])
    single, together = results(evaluation), results(node0)
    assert single["counts"] == together["counts"]
    assert together["metrics"] == pytest.approx(single["metrics"], abs=1e-6)
    assert len(single["metrics"]) >= 20


def test_two_nodes_with_torchrun_equal_one_node(
    one_node_two_processes: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    """`torchrun --nnodes=2 --nproc-per-node=1 --node-rank=R --master-addr --master-port` on each node (static
    rendezvous): torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, GROUP_RANK and Lightning reads them
    (TorchElasticEnvironment). Here the nodes share one run directory (a shared filesystem): each process
    keeps its own log, and the outputs are global rank 0's alone."""
    port = str(free_port())
    jobs = []
    for node in (0, 1):
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=1",
            f"--node-rank={node}",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
            "-m",
            "biggait.train",
        ]
        command = train_command(
            tiny_shards, tmp_path / "run", "trainer.num_nodes=2", "trainer.devices=1", entry=torchrun
        )
        jobs.append((command, clean_env(), tmp_path / f"node{node}.log"))
    launch(jobs)
    run = tmp_path / "run"
    assert_same_run(run, one_node_two_processes)
    logs = {p.name: p.read_text() for p in run.glob("*.log")}
    assert logs.keys() == {"train.log", "train_rank1.log"}, logs.keys()
    assert "GLOBAL_RANK: 0," in logs["train.log"] and "GLOBAL_RANK: 1," not in logs["train.log"]
    assert (
        "GLOBAL_RANK: 1, MEMBER: 2/2" in logs["train_rank1.log"]
        and "test results (" not in logs["train_rank1.log"]
    )
    assert len(list((run / "checkpoints").glob("*.ckpt"))) == 2  # step000002 and last, written once
