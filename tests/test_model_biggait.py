"""The assembled BigGait: shapes, parameter counts, mask-branch schedule, pooling, options."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from biggait.models import BigGait, MaskBranchFileError
from biggait.models.gaitbase import horizontal_pooling, temporal_max

SMALL = dict(  # the integrator's CPU synthetic default, roughly
    image_size=(224, 112), map_size=(32, 16), channels=(16, 32, 64, 128), fusion_squeeze=4, embed_dim=32
)


def small_model(num_classes: int = 7, **kwargs) -> BigGait:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return BigGait("tiny", num_classes, **{**SMALL, **kwargs})


def inputs(
    n: int = 2, s: int = 3, h: int = 64, w: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, s, 3, h, w, generator=g), 0.3 + 0.3 * torch.rand(n, s, generator=g)


def test_paper_model_parameter_counts() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BigGait("vits14", 100)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert trainable == 8_724_290  # docs/fidelity.md
    assert total == 30_780_866
    assert sum(p.numel() for p in model.backbone.parameters()) == 22_056_576
    assert sum(p.numel() for p in model.mask_branch.parameters()) == 1_922
    assert sum(p.numel() for p in model.denoising_branch.parameters()) == 1_192_720
    assert sum(p.numel() for p in model.appearance_branch.parameters()) == 24_592


@pytest.mark.parametrize("frame_size", [(64, 32), (48, 48)])
def test_feature_and_output_shapes(frame_size: tuple[int, int]) -> None:
    model = small_model().eval()
    frames, ratios = inputs(h=frame_size[0], w=frame_size[1])
    with torch.no_grad():
        feats = model.forward_features(frames, ratios)
        out = model.forward_head(feats)
    expected = {
        "f_last": (2, 3, 64, 16, 8),
        "f_mid4": (2, 3, 256, 16, 8),
        "valid": (2, 3, 1, 32, 16),
        "mask_probs": (2, 3, 2, 32, 16),
        "foreground_prob": (2, 3, 1, 32, 16),
        "foreground": (2, 3, 1, 32, 16),
        "denoising": (2, 3, 16, 32, 16),
        "appearance": (2, 3, 16, 32, 16),
    }
    for key, shape in expected.items():
        assert tuple(feats[key].shape) == shape, key
        assert feats[key].dtype == torch.float32, key
    assert set(feats["foreground"].unique().tolist()) <= {0.0, 1.0}
    assert out["embeddings"].shape == (2, 32, 16) and out["logits"].shape == (2, 7, 16)
    fg = feats["foreground"] > 0
    sums = feats["denoising"].sum(2, keepdim=True)
    torch.testing.assert_close(sums[fg], torch.ones_like(sums[fg]))
    assert bool((feats["denoising"].abs().sum(2, keepdim=True)[~fg] == 0).all())


def test_forward_equals_features_then_head() -> None:
    model = small_model().eval()
    frames, ratios = inputs()
    with torch.no_grad():
        a = model(frames, ratios)
        b = model.forward_head(model.forward_features(frames, ratios))
    torch.testing.assert_close(a["embeddings"], b["embeddings"])


def test_gre_losses_keys_weights_and_gradients() -> None:
    model = small_model().train()
    feats = model.forward_features(*inputs())
    losses = model.gre_losses(feats)
    assert set(losses) == {"shape_mse", "shape_connect", "part_connect", "part_diversity"}
    assert losses["shape_mse"].item() == pytest.approx(feats["shape_mse"].item())
    losses["shape_connect"].backward(retain_graph=True)
    assert model.mask_branch.down.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.denoising_branch.parameters())
    losses["part_diversity"].backward()
    assert model.denoising_branch.down[0].weight.grad.abs().sum() > 0


def test_mask_branch_freeze_stops_learning() -> None:
    model = small_model().train()
    frames, ratios = inputs()

    def step(opt: torch.optim.Optimizer) -> None:
        feats = model.forward_features(frames, ratios)
        loss = sum(model.gre_losses(feats).values()) + model.forward_head(feats)["embeddings"].pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    before = model.mask_branch.down.weight.detach().clone()
    step(opt)
    assert not torch.equal(before, model.mask_branch.down.weight)  # trains before the freeze
    assert not model.mask_branch_frozen
    frozen = model.freeze_mask_branch()
    assert model.mask_branch_frozen
    assert {id(p) for p in frozen} == {id(p) for p in model.mask_branch.parameters()}
    assert all(not p.requires_grad for p in frozen)
    model.train()
    assert not model.mask_branch.training  # stays eval through train()
    frozen_ids = {id(p) for p in frozen}
    opt = torch.optim.SGD([p for p in params if id(p) not in frozen_ids], lr=0.1, weight_decay=5e-4)
    state = {k: v.clone() for k, v in model.mask_branch.state_dict().items()}
    head_before = model.head.fcs.weight.detach().clone()
    step(opt)
    for key, value in model.mask_branch.state_dict().items():
        assert torch.equal(value, state[key]), key  # weights and BN running stats
    assert not torch.equal(head_before, model.head.fcs.weight)


def _official_mask_state(model: BigGait) -> dict[str, torch.Tensor]:
    names = {"bn_in": "bn_s", "bn_out": "bn_t", "down": "down_sampling", "up": "up_sampling"}
    return {
        names[k.split(".")[0]] + k[len(k.split(".")[0]) :]: torch.randn_like(v.float()).to(v.dtype)
        for k, v in model.mask_branch.state_dict().items()
    }


def test_load_mask_branch_strict_and_frozen(tmp_path: Path) -> None:
    model = small_model()
    state = _official_mask_state(model)
    path = tmp_path / "MaskBranch_tiny.pt"
    torch.save({"model": state}, path)
    model.load_mask_branch(path)
    assert model.mask_branch_frozen and not model.mask_branch.training
    torch.testing.assert_close(model.mask_branch.down.weight, state["down_sampling.weight"])
    torch.testing.assert_close(model.mask_branch.bn_in.running_var, state["bn_s.running_var"])


def test_load_mask_branch_rejects_bad_files(tmp_path: Path) -> None:
    model = small_model()
    state = _official_mask_state(model)
    bad_shape = {**state, "down_sampling.weight": torch.zeros(2, 5)}
    torch.save({"model": bad_shape}, tmp_path / "a.pt")
    with pytest.raises(MaskBranchFileError, match="down.weight"):
        model.load_mask_branch(tmp_path / "a.pt")
    missing = {k: v for k, v in state.items() if not k.startswith("up_sampling")}
    torch.save({"model": missing}, tmp_path / "b.pt")
    with pytest.raises(MaskBranchFileError, match="missing"):
        model.load_mask_branch(tmp_path / "b.pt")
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(MaskBranchFileError, match="'model'"):
        model.load_mask_branch(tmp_path / "c.pt")
    assert not model.mask_branch_frozen


def test_variable_length_pooling_ignores_padding() -> None:
    model = small_model().eval()
    frames, ratios = inputs(n=2, s=5)
    with torch.no_grad():
        short = model(frames[:1, :3], ratios[:1, :3])["embeddings"]
        padded_frames = frames.clone()
        padded_frames[0, 3:] = 0  # zero-padded eval batch
        padded_ratios = ratios.clone()
        padded_ratios[0, 3:] = 0
        both = model(padded_frames, padded_ratios, lengths=torch.tensor([3, 5]))["embeddings"]
        full = model(frames[1:], ratios[1:])["embeddings"]
    torch.testing.assert_close(both[0], short[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[1], full[0], rtol=1e-5, atol=1e-5)


def test_temporal_max_and_hpp_small_maps() -> None:
    x = torch.arange(24.0).view(2, 3, 4)
    torch.testing.assert_close(temporal_max(x, torch.tensor([1, 2])), torch.stack([x[0, 0], x[1, 1]]))
    with pytest.raises(ValueError, match="lengths"):
        temporal_max(x, torch.tensor([0, 3]))
    maps = torch.arange(2 * 8 * 4, dtype=torch.float32).view(1, 2, 8, 4)  # 32 pixels -> 16 parts of 2
    pooled = horizontal_pooling(maps, 16)
    flat = maps.view(1, 2, 16, 2)
    torch.testing.assert_close(pooled, flat.mean(-1) + flat.amax(-1))
    with pytest.raises(ValueError, match="cannot be split"):
        horizontal_pooling(torch.zeros(1, 2, 3, 3), 16)


def test_hpp_max_sends_the_gradient_of_tied_maxima_to_one_index() -> None:
    # Official HPP uses max(-1)[0] (OpenGait modules.py): the gradient of tied maxima goes to one element,
    # where amax would split it (0.5 + 0.5); only the mean's 1/4 reaches every element.
    maps = torch.tensor([[3.0, 3.0, 1.0, 0.0]]).view(1, 1, 1, 4).requires_grad_(True)
    horizontal_pooling(maps, 1).sum().backward()
    grad = maps.grad.view(-1)
    assert sorted(grad.tolist()) == [0.25, 0.25, 0.25, 1.25]
    assert grad[:2].max().item() == 1.25


def test_black_da_method_is_out_of_place() -> None:
    model = small_model().train()
    feats = model.forward_features(*inputs(n=5, s=2))
    new = model.black_da(feats, rate=0.2, generator=torch.Generator().manual_seed(0))
    assert new is not feats and feats["denoising"].abs().sum() > 0
    zeroed = [(new[k].flatten(1).abs().sum(1) == 0) for k in ("denoising", "appearance")]
    assert int(zeroed[0].sum() + zeroed[1].sum()) == 1  # round(0.2 * 5)
    out = model.forward_head(new)
    (out["embeddings"].sum() + sum(model.gre_losses(feats).values())).backward()  # fp32 autograd ok


def test_bad_options_and_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="shape_connect_layout"):
        small_model(shape_connect_layout="correct")
    with pytest.raises(ValueError, match="padding_resize_crop"):
        small_model(padding_resize_crop="right")
    model = small_model()
    with pytest.raises(ValueError, match="frames must be"):
        model.forward_features(torch.zeros(2, 3, 64, 32), torch.zeros(2))
    with pytest.raises(ValueError, match="ratios must be"):
        model.forward_features(torch.zeros(2, 3, 3, 64, 32), torch.zeros(2))


def test_config_records_constructor_kwargs() -> None:
    model = small_model(shape_connect_layout="fixed")
    assert model.config["shape_connect_layout"] == "fixed"
    assert model.config["map_size"] == (32, 16) and model.config["backbone"] == "tiny"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clone = BigGait(**model.config)
    clone.load_state_dict(model.state_dict(), strict=True)


def test_upsample_in_chunks_equals_one_call() -> None:
    import torch.nn.functional as F

    from biggait.models.gre import upsample_maps as _upsample

    x = torch.randn(5, 3, 4, 2)
    whole = F.interpolate(x, size=(8, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(_upsample(x, (8, 4)), whole)
    # 2 frames per chunk (the real limit is CUDA's 2**31 elements per output tensor)
    torch.testing.assert_close(_upsample(x, (8, 4), max_elements=2 * 3 * 8 * 4), whole)
