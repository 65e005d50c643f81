"""The paper's GRE ablations as model options (`BigGait(ablations=[...])`): each removes what it names, only that."""

from __future__ import annotations

import warnings

import pytest
import torch

from biggait.errors import ConfigError
from biggait.models import BigGait
from biggait.models.gre import GRE_ABLATIONS, GRE_LOSS_WEIGHTS

SMALL = dict(
    image_size=(112, 56), map_size=(32, 16), channels=(8, 16, 32, 64), fusion_squeeze=4, embed_dim=16
)
LOSSES = tuple(GRE_LOSS_WEIGHTS)


def model(*ablations: str) -> BigGait:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return BigGait("tiny", 5, ablations=ablations, **SMALL)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(2, 3, 3, 64, 32, generator=g)
    return frames, 0.3 + 0.3 * torch.rand(2, 3, generator=g)


def keys(net: BigGait) -> set[str]:
    return set(net.state_dict())


def test_default_has_no_ablation_and_every_part() -> None:
    net = model()
    assert net.config["ablations"] == () and net.disabled_losses == frozenset()
    for part in (
        "mask_branch",
        "denoising_branch",
        "appearance_branch",
        "head.fusion",
        "head.denoising_stem",
    ):
        assert any(k.startswith(part + ".") for k in keys(net)), part
    losses = net.gre_losses(net.forward_features(*inputs()))
    assert all(v.requires_grad and v.item() != 0 for v in losses.values())


@pytest.mark.parametrize(
    ("branch", "head_parts"),
    [
        ("mask_branch", ()),
        ("denoising_branch", ("head.denoising_stem.", "head.fusion.")),
        ("appearance_branch", ("head.appearance_stem.", "head.fusion.")),
    ],
)
def test_branch_ablation_removes_exactly_its_parameters(branch: str, head_parts: tuple[str, ...]) -> None:
    full, ablated = keys(model()), keys(model(branch))
    removed = {k for k in full - ablated}
    assert removed and all(k.startswith((branch + ".", *head_parts)) for k in removed)
    assert ablated <= full
    assert getattr(model(branch), branch) is None


@pytest.mark.parametrize("branch", ["mask_branch", "denoising_branch", "appearance_branch"])
@pytest.mark.parametrize("train", [True, False])
def test_branch_ablation_trains_and_evaluates(branch: str, train: bool) -> None:
    net = model(branch).train(train)
    frames, ratios = inputs()
    with torch.set_grad_enabled(train):
        feats = net.forward_features(frames, ratios)
        out = net.forward_head(feats)
    assert out["embeddings"].shape == (2, 16, 16) and torch.isfinite(out["embeddings"]).all()
    name = branch.removesuffix("_branch")
    channels = {"mask": "mask_probs", "denoising": "denoising", "appearance": "appearance"}[name]
    assert feats[channels].shape[2] == 0  # the absent branch's map has no channel
    if train:
        losses = net.gre_losses(feats)
        total = out["embeddings"].pow(2).mean() + out["logits"].mean() + sum(losses.values())
        total.backward()
        kept = [m for m in (net.mask_branch, net.denoising_branch, net.appearance_branch, net.head) if m]
        assert all(p.grad is not None for m in kept for p in m.parameters() if p.requires_grad)


def test_without_mask_branch_every_valid_pixel_is_foreground() -> None:
    net = model("mask_branch").eval()
    feats = net.forward_features(*inputs())
    torch.testing.assert_close(feats["foreground"], feats["valid"])
    torch.testing.assert_close(feats["foreground_prob"], feats["valid"])
    full = model().eval().forward_features(*inputs())
    assert feats["foreground"].sum() > full["foreground"].sum()  # the background now reaches the head


@pytest.mark.parametrize(
    ("ablation", "zero"),
    [
        ("mask_branch", {"shape_mse", "shape_connect"}),
        ("denoising_branch", {"part_connect", "part_diversity"}),
        ("appearance_branch", set()),
        *[(loss, {loss}) for loss in LOSSES],
    ],
)
def test_ablation_zeroes_exactly_its_loss_terms(ablation: str, zero: set[str]) -> None:
    full, ablated = model(), model(ablation)
    frames, ratios = inputs()
    torch.manual_seed(1)  # the same mask-branch dropout draws for both
    reference = full.gre_losses(full.forward_features(frames, ratios))
    torch.manual_seed(1)
    losses = ablated.gre_losses(ablated.forward_features(frames, ratios))
    assert set(losses) == set(LOSSES)
    for name in LOSSES:
        if name in zero:
            assert losses[name].item() == 0.0 and not losses[name].requires_grad, name
        else:
            assert losses[name].requires_grad, name
    if ablation in LOSSES:  # a constraint ablation changes nothing else: same model, same other terms
        for name in set(LOSSES) - zero:
            torch.testing.assert_close(losses[name], reference[name])


def test_constraint_ablation_keeps_the_parameters_and_changes_the_gradient() -> None:
    full, ablated = model(), model("part_diversity")
    assert keys(full) == keys(ablated)
    grads = []
    for net in (full, ablated):
        torch.manual_seed(1)
        sum(net.gre_losses(net.forward_features(*inputs())).values()).backward()
        grads.append(net.denoising_branch.down[0].weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


@pytest.mark.parametrize("branch", ["mask_branch", "denoising_branch", "appearance_branch"])
def test_dense_eval_equals_gathered_eval(branch: str) -> None:
    net = model(branch).eval()
    frames, ratios = inputs()
    with torch.no_grad():
        dense = net(frames, ratios)["embeddings"]
        net.static_shapes = False
        gathered = net(frames, ratios)["embeddings"]
    torch.testing.assert_close(dense, gathered, rtol=1e-4, atol=1e-5)


def test_config_rebuilds_the_ablated_model() -> None:
    net = model("denoising_branch", "shape_connect")
    assert net.config["ablations"] == ("denoising_branch", "shape_connect")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rebuilt = BigGait(**net.config)
    rebuilt.load_state_dict(net.state_dict(), strict=True)


def test_black_da_is_off_with_one_branch() -> None:
    net = model("appearance_branch")
    feats = net.forward_features(*inputs())
    out = net.black_da(feats, rate=1.0, generator=torch.Generator().manual_seed(0))
    assert out["denoising"] is feats["denoising"]
    full = model()
    feats = full.forward_features(*inputs())
    out = full.black_da(feats, rate=1.0, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(out["denoising"], feats["denoising"]) or not torch.equal(
        out["appearance"], feats["appearance"]
    )


def test_mask_branch_freeze_and_load_without_a_mask_branch(tmp_path) -> None:
    net = model("mask_branch")
    assert net.freeze_mask_branch() == [] and net.mask_branch_frozen
    net.train()  # no mask branch to keep in eval mode
    with pytest.raises(ConfigError, match="no mask branch"):
        net.load_mask_branch(tmp_path / "MaskBranch_vits14.pt")


@pytest.mark.parametrize(
    ("ablations", "message"),
    [
        (("backbone",), "unknown ablations"),
        (("denoising_branch", "appearance_branch"), "no input"),
        ("mask_branch", "list of names"),
    ],
)
def test_bad_ablations_are_clear_errors(ablations, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BigGait("tiny", 5, pretrained="random", ablations=ablations, **SMALL)


def test_every_ablation_name_is_accepted() -> None:
    for name in GRE_ABLATIONS:
        assert model(name).config["ablations"] == (name,)


@pytest.mark.parametrize("branch", ["mask_branch", "denoising_branch", "appearance_branch"])
def test_feature_map_panel_draws_an_ablated_model(branch: str) -> None:
    from biggait.viz import sequence_panel

    net = model(branch).eval()
    frames, ratios = inputs()
    with torch.no_grad():
        feats = net.forward_features(frames, ratios)
    one = {k: v[0] for k, v in feats.items() if k != "shape_mse"}
    fig = sequence_panel(frames[0], one, None, ratios=ratios[0], max_frames=3, title=branch)
    assert len(fig.axes) > 0
