"""Shared test setup: offline environment and a small CCPG-style shard set generated on the fly."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest

# No network, no update checks, no W&B service unless a test opts in.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["WANDB_MODE"] = os.environ.get("BIGGAIT_TEST_WANDB_MODE", "disabled")

CCPG_VIEWS = ("1_0", "2_90")


def _record(subject: int, seq_type: str, view: str, *, frames: int = 6, size: tuple[int, int] = (64, 32)):
    """A walker-ish blob whose width and sway depend on the subject (so identities are learnable)."""
    from biggait.data.records import SequenceRecord

    h, w = size
    # crc32, not hash(): Python salts str hashes per process, so the data would change between runs
    rng = np.random.default_rng(zlib.crc32(f"{subject}/{seq_type}/{view}".encode()))
    rgb = np.zeros((frames, h, w, 3), np.uint8)
    sil = np.zeros((frames, h, w), np.uint8)
    colour = rng.integers(40, 255, 3)
    width = 4 + subject % 5
    for t in range(frames):
        x0 = w // 2 - width // 2 + int(3 * np.sin(t * (0.5 + 0.1 * subject)))
        rgb[t] = rng.integers(0, 40, (h, w, 3))
        rgb[t, 8 : h - 4, x0 : x0 + width] = colour
        sil[t, 8 : h - 4, x0 : x0 + width] = 255
    return SequenceRecord(f"{subject:03d}", seq_type, view, rgb, np.full(frames, 0.45, np.float32), sil)


def _load(spec):
    return _record(*spec)


def write_tiny_dataset(root: Path, *, train_ids: int = 6, test_ids: int = 4, shard_size: int = 8) -> Path:
    """Train ids 000.., test ids after; every CCPG type x 2 views; 64x32 frames with silhouettes."""
    from biggait.data.shards import write_shards
    from biggait.evaluation.protocols import CCPG_TYPES

    for split, ids in (("train", range(train_ids)), ("test", range(train_ids, train_ids + test_ids))):
        specs = [(i, t, v) for i in ids for t in CCPG_TYPES for v in CCPG_VIEWS]
        write_shards(
            specs,
            _load,
            root,
            dataset="tiny",
            split=split,
            shard_size=shard_size,
            shuffle_seed=0 if split == "train" else None,
            progress=False,
        )
    return root


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_shards"))


def write_legacy_checkpoint(src: Path, dst: Path) -> Path:
    """`src` (a checkpoint of today's biggait) rewritten as older versions wrote it: the BigGait options under
    hyper_parameters["model"] (today "net") and the weights under "model.*" (today "net.*")."""
    import torch

    blob = torch.load(src, map_location="cpu", weights_only=True)
    assert "net" in blob["hyper_parameters"], "not a checkpoint of today's layout"
    blob["hyper_parameters"]["model"] = blob["hyper_parameters"].pop("net")
    blob["state_dict"] = {
        ("model." + k.removeprefix("net.") if k.startswith("net.") else k): v
        for k, v in blob["state_dict"].items()
    }
    torch.save(blob, dst)
    return dst


@pytest.fixture()
def as_legacy_checkpoint():
    """`write_legacy_checkpoint(src, dst)`: a checkpoint in the layout older biggait versions wrote."""
    return write_legacy_checkpoint
