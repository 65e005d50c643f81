"""Checkpoints survive kills (TMPDIR on another filesystem), leave no temporaries, and end at the last step."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from biggait.callbacks import StepCheckpoint
from biggait.io import remove_stale_temporaries

# A real Trainer with the real StepCheckpoint; the module carries a big buffer so that a save takes a while.
CHILD = r"""
import sys
from pathlib import Path
import lightning as L
import torch
from biggait.callbacks import StepCheckpoint

sys.path.insert(0, sys.argv[3])
from test_checkpoint_atomic import _Tiny

class Big(_Tiny):
    def __init__(self):
        super().__init__()
        self.register_buffer("ballast", torch.arange(6_000_000, dtype=torch.float32))  # 24 MB

out, final = Path(sys.argv[1]), sys.argv[2] == "final"
last = out / "last.ckpt"
resume = str(last) if last.is_file() else None
step = torch.load(last, weights_only=True)["global_step"] if resume else 0
trainer = L.Trainer(
    max_steps=step + 3 if final else 10**6, logger=False, enable_progress_bar=False,
    enable_model_summary=False, accelerator="cpu",
    callbacks=[StepCheckpoint(dirpath=out, every_n_train_steps=1, save_top_k=1, save_last=True,
                              filename="step{step:06d}", auto_insert_metric_name=False)],
)
print("started", flush=True)
trainer.fit(Big(), ckpt_path=resume)
"""
TESTS = str(Path(__file__).resolve().parent)


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.lin(batch).pow(2).mean()

    def train_dataloader(self):
        return DataLoader(torch.randn(64, 4), batch_size=4)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_last_training_step_always_ends_in_a_checkpoint(tmp_path: Path) -> None:
    """max_steps=5 with every_n_train_steps=2: ModelCheckpoint stops at step 4, StepCheckpoint saves step 5 too."""
    callback = StepCheckpoint(
        dirpath=tmp_path,
        every_n_train_steps=2,
        save_top_k=-1,
        save_last=True,
        filename="step{step:06d}",
        auto_insert_metric_name=False,
    )
    trainer = L.Trainer(
        max_steps=5,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        accelerator="cpu",
    )
    trainer.fit(_Tiny())
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 5
    assert sorted(p.name for p in tmp_path.glob("step*.ckpt")) == [
        "step000002.ckpt",
        "step000004.ckpt",
        "step000005.ckpt",
    ]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    """`.<name>.tmp-<pid>...` files of a dead process go (a killed save or `make data`); a live writer's stay."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = [
        tmp_path / f".last.ckpt.tmp-{dead_pid}.abc123.tmp",
        tmp_path / f".ccpg-train-000001.tar.tmp-{dead_pid}",
    ]
    live = tmp_path / f".last.ckpt.tmp-{os.getppid()}.xyz.tmp"
    for path in (*stale, live):
        path.write_bytes(b"partial")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert live.exists() and not any(p.exists() for p in stale)


def _temporaries(*folders: Path) -> list[Path]:
    """Files other than the checkpoints themselves (a save's temporary is a file; the folders that other
    libraries make in TMPDIR at import, e.g. wandb's media/artifact dirs or torchinductor's cache, are not)."""
    return [
        p
        for folder in folders
        for p in folder.iterdir()
        if p.is_file()
        and p.name not in ("last.ckpt",)
        and not (p.name.startswith("step") and p.name.endswith(".ckpt"))
    ]


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/dev/shm").is_dir(), reason="needs /dev/shm (a filesystem other than tmp_path's)"
)
def test_killed_saves_leave_a_loadable_last_ckpt_and_no_temporaries(tmp_path: Path) -> None:
    """SIGKILL the real save 12 times at random points with TMPDIR on /dev/shm: every last.ckpt left loads
    with weights_only=True, and once a run completes no temporary file is left anywhere."""
    out = tmp_path / "checkpoints"
    out.mkdir()
    shm = Path(tempfile.mkdtemp(prefix="biggait-tmpdir-", dir="/dev/shm"))
    env = os.environ | {"TMPDIR": str(shm), "PYTHONUNBUFFERED": "1"}
    rng = random.Random(13)
    killed_mid_save, loads = 0, 0
    try:
        for _ in range(12):
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(out), "kill", TESTS],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            try:
                assert child.stdout.readline().strip() == b"started"
                # Wait until the k-th write of this run is under way (a new file appears next to the target,
                # or in TMPDIR where Lightning's own writer puts it) ...
                before, started = set(_temporaries(out, shm)), set()
                k, deadline = rng.randint(1, 4), time.monotonic() + 120
                while len(started) < k and time.monotonic() < deadline:
                    started |= set(_temporaries(out, shm)) - before
                    time.sleep(0.001)
                # ... then kill it at a random point of the write.
                time.sleep(rng.uniform(0.0, 0.08))
                killed_mid_save += bool(set(_temporaries(out, shm)) - before)
                child.send_signal(signal.SIGKILL)
            finally:
                child.kill()
                child.wait()
            if (out / "last.ckpt").exists():
                ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
                assert ckpt["state_dict"]["ballast"].shape == (6_000_000,)
                loads += 1
        assert killed_mid_save >= 6, f"only {killed_mid_save} of 12 kills hit a save: the test proves nothing"
        assert loads >= 10
        # The next run resumes from what was left and removes the killed saves' temporaries.
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(out), "final", TESTS], env=env, capture_output=True
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert _temporaries(out, shm) == []
        assert torch.load(out / "last.ckpt", weights_only=True)["global_step"] > 0
    finally:
        shutil.rmtree(shm, ignore_errors=True)
