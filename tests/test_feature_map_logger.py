"""FeatureMapLogger inside a real lightning.Trainer: files, W&B offline images, train/eval modes restored."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader

from biggait.callbacks import FeatureMapLogger


class _StandInModel(nn.Module):
    """A small real network with BigGait's `forward_features` contract (docs/8_design.md)."""

    def __init__(self, map_size=(16, 8)) -> None:
        super().__init__()
        self.map_size = map_size
        self.patch = nn.Conv2d(3, 12, kernel_size=8, stride=8)  # 64x32 frames -> 8x4 "token grid"
        self.mask = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(12, 2, 1))
        self.denoising = nn.Conv2d(12, 16, 1)
        self.appearance = nn.Conv2d(12, 16, 1)
        self.mask.eval()  # like BigGait's frozen mask branch: must stay in eval whatever the callback does

    def forward_features(self, frames: torch.Tensor, ratios: torch.Tensor) -> dict[str, torch.Tensor]:
        n, s = frames.shape[:2]
        tokens = self.patch(frames.flatten(0, 1))
        maps = F.interpolate(tokens, size=self.map_size, mode="bilinear", align_corners=False)
        probs = torch.softmax(self.mask(maps), dim=1)
        fg = (probs[:, 1:] > 0.5).float()
        out = {
            "f_last": tokens,
            "f_mid4": torch.cat([tokens, tokens.square()], 1),
            "valid": torch.ones_like(fg),
            "mask_probs": probs,
            "foreground_prob": probs[:, 1:],
            "foreground": fg,
            "denoising": torch.softmax(self.denoising(maps), 1) * fg,
            "appearance": torch.sigmoid(self.appearance(maps)) * fg,
        }
        return {k: v.view(n, s, *v.shape[1:]) for k, v in out.items()}


class _Module(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = _StandInModel()
        self.modes_seen: list[tuple[bool, bool]] = []

    def training_step(self, batch, batch_idx):
        self.modes_seen.append((self.net.training, self.net.mask.training))
        f = self.net.forward_features(batch["frames"], batch["ratios"])
        return f["denoising"].square().mean() + f["appearance"].mean()

    def validation_step(self, batch, batch_idx):
        self.net.forward_features(batch["frames"], batch["ratios"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _batches(n_batches: int, *, eval_mode: bool) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        frames = torch.randn(4, 5, 3, 64, 32, generator=g)
        sil = torch.zeros(4, 5, 64, 32, dtype=torch.uint8)
        sil[:, :, 8:56, 8:24] = 255
        batch = {
            "frames": frames,
            "ratios": torch.full((4, 5), 0.5),
            "subjects": ["001", "001", "002", "002"],
            "types": ["U0_D0", "U3_D3", "U0_D0", "U3_D3"],
            "views": ["0_0"] * 4,
        }
        if eval_mode:
            batch.update(lengths=torch.tensor([5, 3, 5, 4]), silhouettes=sil)
        out.append(batch)
    return out


def _loader(batches: list[dict]) -> DataLoader:
    return DataLoader(batches, batch_size=None)


def _fit(tmp_path: Path, logger, every_n_steps: int = 2) -> tuple[_Module, FeatureMapLogger]:
    module, callback = _Module(), FeatureMapLogger(every_n_steps=every_n_steps, max_frames=3)
    trainer = Trainer(
        max_steps=4,
        val_check_interval=4,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        logger=logger,
        callbacks=[callback],
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, _loader(_batches(4, eval_mode=False)), _loader(_batches(1, eval_mode=True)))
    return module, callback


def test_panels_written_every_n_steps_without_a_logger(tmp_path):
    module, _ = _fit(tmp_path, logger=False)
    root = tmp_path / "feature_maps"
    assert sorted(p.name for p in root.iterdir()) == ["step_000002", "step_000004"]
    for step_dir in root.iterdir():
        names = sorted(p.name for p in step_dir.iterdir())
        # 3 sequences (A outfit 1, A outfit 2, B) + the comparison, no temp files left behind
        assert names == ["comparison.png", "sequence_0.png", "sequence_1.png", "sequence_2.png"]
        assert all(p.read_bytes().startswith(b"\x89PNG") for p in step_dir.iterdir())
    # train/eval state restored per submodule: the model trains, its frozen branch stays in eval
    assert module.modes_seen and all(m == (True, False) for m in module.modes_seen)


def test_fixed_batch_comes_from_validation_with_ground_truth(tmp_path):
    _, callback = _fit(tmp_path, logger=False)
    batch = callback._batch
    assert batch["subjects"] == ["001", "001", "002"] and batch["types"][:2] == ["U0_D0", "U3_D3"]
    assert "silhouettes" in batch and batch["frames"].device.type == "cpu"
    seqs = callback.sequences(_Module())
    assert [s.frames.shape[0] for s in seqs] == [5, 3, 5]  # trimmed to their lengths


def test_cache_keeps_only_the_first_frames(tmp_path):
    module, callback = (
        _Module(),
        FeatureMapLogger(every_n_steps=0, on_validation=False, max_frames=2, cached_frames=4),
    )
    trainer = Trainer(
        max_steps=1, limit_val_batches=1, num_sanity_val_steps=1, logger=False, callbacks=[callback],
        default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, _loader(_batches(1, eval_mode=False)), _loader(_batches(1, eval_mode=True)))
    assert callback._batch["frames"].shape[1] == 4 and callback._batch["lengths"].tolist() == [4, 3, 4]
    assert [s.frames.shape[0] for s in callback.sequences(module)] == [4, 3, 4]
    assert not (tmp_path / "feature_maps").exists()  # both triggers off: nothing rendered


def test_wandb_offline_receives_the_images(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="biggait-test")
    try:
        _fit(tmp_path, logger=logger)
    finally:
        wandb.finish()
    run_dirs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    logged = list((run_dirs[0] / "files" / "media" / "images" / "feature_maps").rglob("*.png"))
    assert len(logged) >= 4  # at least one step's worth of panels went through log_image
    assert (tmp_path / "feature_maps" / "step_000004" / "comparison.png").exists()


def test_rejects_bad_options():
    with pytest.raises(ValueError, match="every_n_steps"):
        FeatureMapLogger(every_n_steps=-1)
    with pytest.raises(ValueError, match="cached_frames"):
        FeatureMapLogger(max_frames=8, cached_frames=4)


class _TinyBigGaitModule(_Module):
    """The same loop around the real tiny BigGait, mask branch frozen as after the switch at step 500 (docs/fidelity.md)."""

    def __init__(self) -> None:
        super().__init__()
        from biggait.models import BigGait

        with pytest.warns(UserWarning):  # random backbone: the model says so
            self.net = BigGait(backbone="tiny", num_classes=2, image_size=(112, 56), map_size=(16, 8))
        self.net.freeze_mask_branch()

    def training_step(self, batch, batch_idx):
        self.modes_seen.append((self.net.training, self.net.mask_branch.training))
        features = self.net.forward_features(batch["frames"], batch["ratios"])
        return sum(self.net.gre_losses(features).values())


def test_real_tiny_biggait_keeps_its_frozen_mask_branch_in_eval(tmp_path):
    module, callback = _TinyBigGaitModule(), FeatureMapLogger(every_n_steps=2, max_frames=2)
    trainer = Trainer(
        max_steps=3, limit_val_batches=1, num_sanity_val_steps=1, logger=False, callbacks=[callback],
        default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, _loader(_batches(3, eval_mode=False)), _loader(_batches(1, eval_mode=True)))
    assert (tmp_path / "feature_maps" / "step_000002" / "comparison.png").is_file()
    assert len(module.modes_seen) == 3 and all(m == (True, False) for m in module.modes_seen)


def test_without_sanity_check_a_training_batch_is_used_until_validation_brings_ground_truth(tmp_path):
    module, callback = _Module(), FeatureMapLogger(every_n_steps=2, max_frames=2)
    trainer = Trainer(
        max_steps=4, val_check_interval=4, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
        callbacks=[callback], default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    train_batches = _batches(4, eval_mode=False)
    trainer.fit(module, _loader(train_batches), _loader(_batches(1, eval_mode=True)))
    assert (tmp_path / "feature_maps" / "step_000002" / "sequence_0.png").is_file()
    # step 4 was drawn from the training batch, then redrawn after validation from its batch
    assert callback._last == (4, True) and "silhouettes" in callback._batch
