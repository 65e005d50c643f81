"""DINOv2 backbone: official positional interpolation, feature extraction, weights, freezing (OpenGait `BigGait_utils/DINOv2.py`)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from biggait.errors import BiggaitError
from biggait.models import BigGait, DinoV2Backbone, interpolate_pos_embed, mid4_indices
from biggait.models.backbone import BackboneFileError


def _cubic(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    t = np.abs(t)
    return np.where(
        t <= 1,
        ((a + 2) * t - (a + 3)) * t * t + 1,
        np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0),
    )


def official_interpolation_from_scratch(table: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Bicubic (A=-0.75, clamped borders) with source = (dst + 0.5) / scale - 0.5, scale = (g + 0.1) / M."""
    side = int(math.sqrt(table.shape[0] - 1))
    patches = table[1:].reshape(side, side, -1)

    def weights(out: int) -> np.ndarray:
        scale = (out + 0.1) / side
        w = np.zeros((out, side))
        for o in range(out):
            src = (o + 0.5) / scale - 0.5
            base = math.floor(src)
            for k in range(base - 1, base + 3):
                w[o, min(max(k, 0), side - 1)] += _cubic(np.array(src - k))
        return w

    wh, ww = weights(grid[0]), weights(grid[1])
    out = np.einsum("hH,HWc,wW->hwc", wh, patches, ww).reshape(-1, table.shape[1])
    return np.concatenate([table[:1], out])


@pytest.mark.parametrize("grid", [(32, 16), (16, 8), (37, 37)])
def test_pos_embed_interpolation_matches_from_scratch_recomputation(grid: tuple[int, int]) -> None:
    table = torch.randn(1, 1 + 37 * 37, 8)
    ours = interpolate_pos_embed(table, grid)[0].numpy()  # fp32, as the official code computes it
    ref = official_interpolation_from_scratch(table[0].double().numpy(), grid)
    # PyTorch computes source coordinates in fp32: ~1e-5 absolute; timm's resampling is >1e-3 away
    np.testing.assert_allclose(ours, ref, rtol=0, atol=3e-5)


def test_official_interpolation_differs_from_timm_default() -> None:
    table = torch.randn(1, 1 + 37 * 37, 8)
    ours = interpolate_pos_embed(table, (32, 16))
    timm_default = resample_abs_pos_embed(table, new_size=(32, 16), old_size=(37, 37), num_prefix_tokens=1)
    assert ours.shape == timm_default.shape
    assert (ours - timm_default).abs().max() > 1e-3


@pytest.mark.parametrize(("depth", "expected"), [(12, [2, 5, 8, 11]), (8, [1, 3, 5, 7]), (4, [0, 1, 2, 3])])
def test_mid4_layer_choice(depth: int, expected: list[int]) -> None:
    assert mid4_indices(depth) == expected


def _tiny_backbone(**kwargs) -> DinoV2Backbone:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DinoV2Backbone(preset="tiny", image_size=(112, 56), **kwargs)


def test_features_equal_manual_recomputation() -> None:
    torch.manual_seed(0)
    bb = _tiny_backbone().eval()
    x = torch.randn(2, 3, 112, 56)
    f_last, f_mid4 = bb(x)
    assert f_last.shape == (2, 64, 8, 4) and f_mid4.shape == (2, 256, 8, 4)
    # manual: patch embed + cls + officially interpolated table, blocks, final norm / joint non-affine LN
    tokens = bb.vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([bb.vit.cls_token.expand(2, -1, -1), tokens], 1) + interpolate_pos_embed(
        bb.pos_embed, (8, 4)
    )
    outs = []
    for blk in bb.vit.blocks:
        tokens = blk(tokens)
        outs.append(tokens[:, 1:])
    last = bb.vit.norm(tokens)[:, 1:]
    mid = torch.cat([outs[i] for i in (0, 1, 2, 3)], -1)
    mid = (mid - mid.mean(-1, keepdim=True)) / torch.sqrt(mid.var(-1, unbiased=False, keepdim=True) + 1e-6)
    torch.testing.assert_close(f_last, last.transpose(1, 2).reshape(2, 64, 8, 4))
    torch.testing.assert_close(f_mid4, mid.transpose(1, 2).reshape(2, 256, 8, 4), rtol=1e-4, atol=1e-5)


def test_random_backbone_warns_loudly() -> None:
    with pytest.warns(UserWarning, match="NO pretrained weights"):
        DinoV2Backbone(preset="tiny", image_size=(112, 56))


def test_unknown_preset_and_bad_size_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown backbone preset"):
        DinoV2Backbone(preset="vit_huge", pretrained="hub")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        DinoV2Backbone(preset="tiny", image_size=(100, 50), pretrained=None)


def test_custom_width_refuses_pretrained_weights(tmp_path: Path) -> None:
    official = tmp_path / "x.pth"
    torch.save({"pos_embed": torch.zeros(1, 1370, 64)}, official)  # a DINOv2-format file, not ours
    for source in ("hub", str(official)):
        with pytest.raises(ValueError, match="custom width/depth"):
            DinoV2Backbone(preset="tiny", image_size=(112, 56), pretrained=source)


def test_loads_official_pth_through_timm_converter(tmp_path: Path) -> None:
    """A Meta-format dinov2_vits14_pretrain.pth (37x37 table + mask_token) loads without losing the table."""
    torch.manual_seed(1)
    meta = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0).state_dict()
    meta["mask_token"] = torch.randn(1, 384)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(meta, path)
    bb = DinoV2Backbone(preset="vits14", pretrained=str(path))
    torch.testing.assert_close(bb.pos_embed, meta["pos_embed"])
    torch.testing.assert_close(bb.mask_token, meta["mask_token"])
    torch.testing.assert_close(bb.vit.blocks[3].attn.qkv.weight, meta["blocks.3.attn.qkv.weight"])
    torch.testing.assert_close(bb.vit.blocks[11].ls2.gamma, meta["blocks.11.ls2.gamma"])


def test_missing_weights_file_is_clear_error(tmp_path: Path) -> None:
    from biggait.errors import BiggaitError

    # a BiggaitError, so the CLIs print one `error: ...` line instead of a traceback
    with pytest.raises(BiggaitError, match="backbone weights file not found") as caught:
        DinoV2Backbone(preset="vits14", pretrained=str(tmp_path / "nope.pth"))
    assert isinstance(caught.value, FileNotFoundError)


def test_frozen_backbone_gets_no_gradient_and_stays_eval() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BigGait(
            "tiny",
            5,
            image_size=(112, 56),
            map_size=(32, 16),
            channels=(8, 8, 16, 16),
            fusion_squeeze=4,
            embed_dim=8,
        )
    model.train()
    assert not model.backbone.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    frames, ratios = torch.randn(2, 2, 3, 64, 32), torch.full((2, 2), 0.45)
    out = model(frames, ratios)
    (out["embeddings"].sum() + out["logits"].sum()).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert any(p.grad is not None for p in model.head.parameters())


def test_trainable_backbone_option_trains() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BigGait(
            "tiny",
            5,
            image_size=(112, 56),
            map_size=(32, 16),
            channels=(8, 8, 16, 16),
            fusion_squeeze=4,
            embed_dim=8,
            backbone_trainable=True,
        )
    model.train()
    assert model.backbone.training
    out = model(torch.randn(2, 2, 3, 64, 32), torch.full((2, 2), 0.45))
    out["embeddings"].sum().backward()
    assert model.backbone.vit.blocks[0].attn.qkv.weight.grad is not None
    assert model.backbone.pos_embed.grad is not None


def test_bicubic_reference_helper_is_not_trivial() -> None:
    # guards the from-scratch reference: it must differ from a plain bilinear resize
    table = np.random.default_rng(0).normal(size=(1 + 37 * 37, 2))
    ref = official_interpolation_from_scratch(table, (32, 16))
    patches = torch.from_numpy(table[1:].reshape(1, 37, 37, 2)).permute(0, 3, 1, 2)
    bilinear = (
        F.interpolate(patches, size=(32, 16), mode="bilinear").permute(0, 2, 3, 1).reshape(-1, 2).numpy()
    )
    assert np.abs(ref[1:] - bilinear).max() > 1e-3


def _tiny_backbone(**kwargs) -> DinoV2Backbone:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DinoV2Backbone(preset="tiny", image_size=(112, 56), **kwargs)


def test_saved_backbone_round_trips_into_biggait(tmp_path: Path) -> None:
    torch.manual_seed(1)
    saved = _tiny_backbone()
    path = saved.save(tmp_path / "lvm.pt", note="test")
    model = BigGait("tiny", 5, image_size=(112, 56), map_size=(16, 8), pretrained=str(path))
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[name], value, rtol=0, atol=0)
    images = torch.randn(2, 3, 112, 56)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(images)[0], saved.eval()(images)[0])
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left nothing behind


def test_saved_backbone_with_other_architecture_is_clear_error(tmp_path: Path) -> None:
    path = _tiny_backbone(depth=2).save(tmp_path / "lvm.pt")
    with pytest.raises(BackboneFileError, match="saved for architecture.*depth.: 2") as err:
        _tiny_backbone(pretrained=str(path))
    assert isinstance(err.value, BiggaitError)  # so command-line entry points print one error line


@pytest.mark.parametrize("damage", ["truncated", "code"])
def test_a_broken_or_hostile_backbone_file_is_one_error_naming_it(tmp_path: Path, damage: str) -> None:
    good = tmp_path / "good.pt"
    DinoV2Backbone(preset="tiny", image_size=(112, 56), pretrained="random").save(good)
    bad = tmp_path / f"{damage}.pt"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    else:  # a pickle whose loading would run code: refused unopened
        torch.save({"state_dict": _RunsCode(tmp_path / "ran")}, bad)
    with pytest.raises(BackboneFileError, match=f"backbone weights file {bad}.*DinoV2Backbone.save"):
        DinoV2Backbone(preset="tiny", image_size=(112, 56), pretrained=str(bad))
    assert not (tmp_path / "ran").exists()


class _RunsCode:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))
