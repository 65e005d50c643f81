"""BiggerGait's maps drawn: the per-group panel (biggait.viz.groups), in the FeatureMapLogger callback (files and
W&B offline) and through the notebook's helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning import Trainer

from biggait.callbacks import FeatureMapLogger
from biggait.viz import PanelSequence, VizInputError, group_maps, group_panel, panel_sequences, sequence_panel
from biggait.viz.demo import comparison_sequences, make_demo_shards
from biggait.viz.panels import _sequence_rows
from test_feature_map_logger import _batches, _loader, _Module
from test_model_biggergait import tiny


def _tiny_biggergait():
    torch.manual_seed(0)
    return tiny(gait_heads=2).eval()  # 4 groups of 1 layer


def test_group_maps_split_the_humanspace_channels_by_group() -> None:
    maps = torch.arange(2 * 8 * 2 * 1, dtype=torch.float32).view(2, 8, 2, 1)
    groups = group_maps(maps, 4)
    assert len(groups) == 4 and all(g.shape == (2, 2, 2, 1) for g in groups)
    assert torch.equal(torch.cat(groups, 1), maps)
    with pytest.raises(VizInputError, match="G=3 groups"):
        group_maps(maps, 3)


def test_group_panel_has_one_row_per_group_and_the_ground_truth() -> None:
    model = _tiny_biggergait()
    batch = _batches(1, eval_mode=True)[0]
    with torch.no_grad():
        features = model.forward_features(batch["frames"], batch["ratios"])
    seqs = panel_sequences(batch, features)
    assert set(seqs[0].features) == {"mask_probs", "foreground", "humanspace"}
    fig = group_panel(seqs[:1], num_groups=model.num_groups, frames_per_sequence=3)
    labels = [ax.get_ylabel() for ax in fig.axes[::3]]
    assert labels == [
        "input frame",
        "mask branch\np(foreground)",
        "foreground",
        *[f"group {g}\nPCA" for g in range(4)],
    ]
    assert "IoU" in fig.axes[0].get_title()  # the ground truth was compared
    both = group_panel(seqs, num_groups=4, frames_per_sequence=2)
    assert len(both.axes) == 7 * 2 * len(seqs)
    # BigGait's panels refuse a BiggerGait's maps with one line naming what to use
    with pytest.raises(VizInputError, match="features lack"):
        sequence_panel(seqs[0].frames, seqs[0].features)
    with pytest.raises(VizInputError, match="BiggerGait.forward_features"):
        only_fg = {"foreground": seqs[0].features["foreground"]}
        group_panel([PanelSequence("x", seqs[0].frames, only_fg)], num_groups=4)


def test_group_pca_is_fitted_per_group_over_all_sequences() -> None:
    """A colour means the same feature in every column: the basis of a group does not depend on which sequence
    is drawn first (fitted over all of them), and two groups with different maps get different colours."""
    model = _tiny_biggergait()
    batch = _batches(1, eval_mode=True)[0]
    with torch.no_grad():
        seqs = panel_sequences(batch, model.forward_features(batch["frames"], batch["ratios"]))
    a = group_panel(seqs, num_groups=4, frames_per_sequence=1)
    b = group_panel(seqs[::-1], num_groups=4, frames_per_sequence=1)
    n = len(seqs)
    first_a = a.axes[3 * n].get_images()[0].get_array()  # group 0 row, first sequence
    last_b = b.axes[3 * n + n - 1].get_images()[0].get_array()  # the same sequence, drawn last
    np.testing.assert_allclose(np.asarray(first_a), np.asarray(last_b), atol=1e-4)
    g0, g1 = a.axes[3 * n].get_images()[0].get_array(), a.axes[4 * n].get_images()[0].get_array()
    assert np.abs(np.asarray(g0) - np.asarray(g1)).max() > 1e-3


class _TinyBiggerGaitModule(_Module):
    """The same loop around the real tiny BiggerGait (its mask branch frozen, as always)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _tiny_biggergait().train()

    def training_step(self, batch, batch_idx):
        self.modes_seen.append((self.net.training, self.net.backbone.training))
        return self.net(batch["frames"], batch["ratios"])["embeddings"].square().mean()


def test_feature_map_logger_draws_the_groups_of_a_biggergait_run_to_wandb(tmp_path, monkeypatch) -> None:
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="biggait-test")
    module, callback = _TinyBiggerGaitModule(), FeatureMapLogger(every_n_steps=2, max_frames=2)
    trainer = Trainer(
        max_steps=2, limit_val_batches=1, num_sanity_val_steps=1, logger=logger, callbacks=[callback],
        default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    try:
        trainer.fit(module, _loader(_batches(2, eval_mode=False)), _loader(_batches(1, eval_mode=True)))
    finally:
        wandb.finish()
    step = tmp_path / "feature_maps" / "step_000002"
    assert sorted(p.name for p in step.iterdir()) == [
        "comparison.png",
        "sequence_0.png",
        "sequence_1.png",
        "sequence_2.png",
    ]
    logged = list(
        (
            next((tmp_path / "wandb").glob("offline-run-*")) / "files" / "media" / "images" / "feature_maps"
        ).rglob("*.png")
    )
    assert len(logged) == 4
    assert module.modes_seen == [(True, False)] * 2  # the panels left the model training, its backbone frozen


def test_notebook_helpers_pick_the_trio_for_a_biggergait(tmp_path: Path) -> None:
    shards = make_demo_shards(tmp_path / "demo")
    seqs = comparison_sequences(_tiny_biggergait(), shards, max_frames=4)
    assert len(seqs) == 3 and "humanspace" in seqs[0].features
    fig = group_panel(seqs, num_groups=4, frames_per_sequence=2)
    assert len(fig.axes) == 7 * 6


def test_biggait_rows_are_unchanged() -> None:
    """BigGait's maps still go through select_sequence's BigGait keys (the rows the notebook explains)."""
    from biggait.viz.demo import tiny_random_model

    batch = _batches(1, eval_mode=True)[0]
    with torch.no_grad():
        seqs = panel_sequences(batch, tiny_random_model().forward_features(batch["frames"], batch["ratios"]))
    rows, iou = _sequence_rows(seqs[0], None)
    assert "denoising" in rows and iou is not None


@pytest.mark.slow
def test_notebook_draws_the_groups_of_a_biggergait(tmp_path, monkeypatch) -> None:
    """notebooks/feature_maps.ipynb with ARCHITECTURE = "biggergait" (the tiny random BiggerGait): every figure
    cell shows an image, and the printed model is a BiggerGait."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from test_notebook import NOTEBOOK_DIR, _kernel_for_this_python

    kernel = _kernel_for_this_python(tmp_path, monkeypatch)
    nb = nbformat.read(NOTEBOOK_DIR / "feature_maps.ipynb", as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert 'ARCHITECTURE = "biggait"' in params.source
    params.source = params.source.replace('ARCHITECTURE = "biggait"', 'ARCHITECTURE = "biggergait"')
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name=kernel, resources={"metadata": {"path": str(run_dir)}}
    )
    client.execute()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "tiny RANDOM BiggerGait" in printed
    figures = [c for c in nb.cells if "figure" in c.metadata.get("tags", [])]
    assert len(figures) >= 3
    for cell in figures:
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source[:80]
