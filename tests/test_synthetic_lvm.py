"""The synthetic world's stand-in LVM: separation loss, rendering, the pretraining CLI and its output file."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from biggait.data_prep.synthetic import SyntheticConfig
from biggait.models import BigGait, DinoV2Backbone
from biggait.models.backbone import SYNTHETIC_LVM_FILE
from biggait.synthetic_lvm import foreground_separation_loss, main, render_foreground_set


def test_separation_loss_is_zero_when_features_are_the_split_and_near_one_when_unrelated() -> None:
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(8, 1, 16, 8, generator=g) > 0.6).float()
    a, b = torch.randn(32, generator=g), torch.randn(32, generator=g)
    split_only = torch.where(target.bool(), a[None, :, None, None], b[None, :, None, None])
    assert foreground_separation_loss(split_only, target).item() < 1e-5
    unrelated = torch.randn(8, 32, 16, 8, generator=g)
    assert 0.95 < foreground_separation_loss(unrelated, target).item() <= 1.0
    # noise with the same total power as the split: half of the variance is explained
    q = target.mean()
    sigma = (q * (1 - q) * (a - b).pow(2).sum() / 32).sqrt()
    noisy = split_only + sigma * torch.randn(8, 32, 16, 8, generator=g)
    assert 0.45 < foreground_separation_loss(noisy, target).item() < 0.55


def test_separation_loss_without_background_is_zero_not_nan() -> None:
    loss = foreground_separation_loss(torch.randn(2, 4, 3, 3), torch.ones(2, 1, 3, 3))
    assert loss.item() == 0.0


def test_rendered_targets_are_silhouette_fractions_on_the_patch_grid() -> None:
    ds = render_foreground_set(
        SyntheticConfig(),
        split="test",
        num_sequences=2,
        frames_per_sequence=3,
        image_size=(112, 56),
        grid=(8, 4),
    )
    images, targets = ds.tensors
    assert images.shape == (6, 3, 112, 56) and targets.shape == (6, 1, 8, 4)
    assert targets.min() >= 0.0 and targets.max() <= 1.0
    assert 0.15 < targets.mean() < 0.7  # a walker fills a good part of its crop, not all of it


def test_cli_writes_a_backbone_file_biggait_loads(tmp_path: Path) -> None:
    out = tmp_path / "lvm.pt"
    argv = ["--out", str(out), "--steps", "2", "--batch-size", "4", "--train-sequences", "4"]
    argv += ["--test-sequences", "2", "--frames", "2", "--accelerator", "cpu"]
    assert main(argv) == 0
    payload = torch.load(out, weights_only=True)
    assert 0.0 <= payload["info"]["test_foreground_iou"] <= 1.0 and payload["info"]["steps"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a loaded backbone must not warn about random weights
        model = BigGait("tiny", 3, image_size=(224, 112), map_size=(32, 16), pretrained=str(out))
    torch.testing.assert_close(model.backbone.pos_embed, payload["state_dict"]["pos_embed"], rtol=0, atol=0)


def test_shipped_stand_in_lvm_makes_the_walker_dominant_unlike_a_random_backbone() -> None:
    images, targets = render_foreground_set(
        SyntheticConfig(),
        split="test",
        num_sequences=6,
        frames_per_sequence=4,
        image_size=(224, 112),
        grid=(16, 8),
    ).tensors
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shipped = DinoV2Backbone(preset="tiny", image_size=(224, 112), pretrained="synthetic").eval()
        torch.manual_seed(0)
        random = DinoV2Backbone(preset="tiny", image_size=(224, 112)).eval()
    with torch.no_grad():
        shipped_loss = foreground_separation_loss(shipped(images)[0], targets).item()
        random_loss = foreground_separation_loss(random(images)[0], targets).item()
    assert random_loss > 0.85  # the split explains almost nothing of a random ViT's features
    assert shipped_loss < 0.5  # and most of the stand-in LVM's (test identities, never seen in pretraining)
    info = torch.load(SYNTHETIC_LVM_FILE, weights_only=True)["info"]
    assert info["test_foreground_iou"] > 0.6
