"""Shared test setup: offline environment and a small shard set of the synthetic world generated on the fly."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

# No network, no update checks, no W&B service unless a test opts in.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["WANDB_MODE"] = os.environ.get("BIGGAIT_TEST_WANDB_MODE", "disabled")


def tiny_world(*, train_ids: int = 6, test_ids: int = 4):
    """The synthetic world (`biggait.data_prep.synthetic`, the project's one walker generator) at test size:
    CCPG types, 2 views, 6 frames of 64x32 with silhouettes, rendered on a small canvas."""
    from biggait.data_prep.synthetic import SyntheticConfig

    return SyntheticConfig(
        num_train_ids=train_ids,
        num_test_ids=test_ids,
        views=(0, 90),
        frame_size=(64, 32),
        length=(6, 6),
        canvas=96,
    )


def write_tiny_dataset(root: Path, *, train_ids: int = 6, test_ids: int = 4, shard_size: int = 8) -> Path:
    """Train ids 000.., test ids after; every CCPG type x 2 views; 64x32 frames with silhouettes."""
    from biggait.data.shards import write_shards
    from biggait.data_prep.synthetic import list_sequences, render_sequence

    cfg = tiny_world(train_ids=train_ids, test_ids=test_ids)
    for split in ("train", "test"):
        write_shards(
            list_sequences(cfg, split),
            functools.partial(render_sequence, cfg=cfg),
            root,
            dataset="tiny",
            split=split,
            shard_size=shard_size,
            shuffle_seed=0 if split == "train" else None,
            frame_size=cfg.frame_size,
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
