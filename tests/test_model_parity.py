"""Tensor-by-tensor parity with the official BigGait code on the scaled-down official_tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from biggait.compat.opengait import load_opengait_checkpoint
from biggait.models.gre import gather_pixels

# Recorded by the official OpenGait code (tests/fixtures/README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures"
OFFICIAL_TINY = FIXTURES / "official_tiny"


CASES = ["ccpg_256x128", "square_128x128"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def tiny() -> dict:
    return {
        "checkpoint": OFFICIAL_TINY / "checkpoint.pt",
        "cases": torch.load(OFFICIAL_TINY / "cases.pt", weights_only=True),
    }


def _load(tiny: dict):
    # official_tiny was recorded with the current OpenGait padding_resize, which crops centrally (PR #307)
    return load_opengait_checkpoint(tiny["checkpoint"], padding_resize_crop="center")


def _upsampled(model, maps: torch.Tensor) -> torch.Tensor:
    return F.interpolate(maps.flatten(0, 1), size=model.map_size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("case", CASES)
def test_eval_branch_tensors_and_embeddings(tiny: dict, case: str) -> None:
    model = _load(tiny)
    inputs, expected = tiny["cases"][f"{case}/inputs"], tiny["cases"][f"{case}/eval"]
    with torch.no_grad():
        features = model.forward_features(inputs["frames"], inputs["ratios"])
        out = model.forward_head(features)
    valid = features["valid"].flatten(0, 1) > 0
    foreground = features["foreground"].flatten(0, 1) > 0
    assert int(foreground.sum()) == expected["denoising_branch_in"].shape[0]
    got = {
        "mask_branch_in": gather_pixels(_upsampled(model, features["f_last"]), valid),
        "mask_branch_out": gather_pixels(features["mask_probs"].flatten(0, 1), valid),
        "denoising_branch_in": gather_pixels(_upsampled(model, features["f_mid4"]), foreground),
        "denoising_branch_out": gather_pixels(features["denoising"].flatten(0, 1), foreground),
        "appearance_branch_out": gather_pixels(features["appearance"].flatten(0, 1), foreground),
        "embeddings": out["embeddings"],
    }
    for key, value in got.items():
        assert rel(value, expected[key]) < 1e-5, key


@pytest.mark.parametrize("case", CASES)
def test_train_mode_embeddings_logits_and_gre_losses(tiny: dict, case: str) -> None:
    model = _load(tiny).train()
    model.freeze_mask_branch()  # the recorded train cases are after step 500
    inputs, expected = tiny["cases"][f"{case}/inputs"], tiny["cases"][f"{case}/train"]
    features = model.forward_features(inputs["frames"], inputs["ratios"])
    losses = model.gre_losses(features)
    out = model.forward_head(model.black_da(features, rate=0.2))  # round(0.2 * 2) = 0 sequences
    assert int(features["foreground"].sum()) == int(expected["foreground_count"])
    assert rel(out["embeddings"], expected["embeddings"]) < 1e-5
    # BNNeck over 2 sequences amplifies round-off: (x1 - x2) / |x1 - x2|-like outputs
    assert rel(out["logits"], expected["logits"]) < 1e-4
    for key, value in losses.items():
        assert value.item() == pytest.approx(expected[f"loss_{key}_weighted"].item(), rel=1e-5), key


def test_left_crop_differs_on_wide_frames(tiny: dict) -> None:
    """The faithful default (authors' left crop) changes the features of frames wider than 1:2."""
    inputs = tiny["cases"]["square_128x128/inputs"]
    assert bool((inputs["ratios"] * 256 >= 128).any())  # some frames take the crop path
    left = load_opengait_checkpoint(tiny["checkpoint"])
    assert left.padding_resize_crop == "left"
    with torch.no_grad():
        emb_left = left(inputs["frames"], inputs["ratios"])["embeddings"]
        emb_center = _load(tiny)(inputs["frames"], inputs["ratios"])["embeddings"]
    assert rel(emb_left, emb_center) > 1e-3
