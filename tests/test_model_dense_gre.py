"""The static-shape (dense) GRE eval path equals the gather/scatter form (docs/export.md)."""

from __future__ import annotations

import warnings

import pytest
import torch

from biggait.models import BigGait
from biggait.models.gre import DistillationBranch, gather_pixels
from test_model_parity import CASES, _load, rel, tiny  # noqa: F401  (tiny is a fixture)

SMALL = dict(
    image_size=(224, 112), map_size=(32, 16), channels=(16, 32, 64, 128), fusion_squeeze=4, embed_dim=32
)
MAPS = ("mask_probs", "foreground_prob", "foreground", "denoising", "appearance")


def random_model(seed: int = 0, **kwargs) -> BigGait:
    """A tiny random BigGait (eval) whose BatchNorms have non-trivial running statistics, as after training."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        model = BigGait("tiny", 5, **{**SMALL, **kwargs})
    g = torch.Generator().manual_seed(seed + 100)
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.copy_(0.3 * torch.randn(module.num_features, generator=g))
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=g))
    return model.eval()


def inputs(seed: int, n: int = 2, s: int = 3, size: tuple[int, int] = (64, 32)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, s, 3, *size, generator=g), 0.3 + 0.3 * torch.rand(n, s, generator=g)


def run(model: BigGait, frames, ratios, *, dense: bool, fuse: bool = True):
    model.static_shapes, model.fuse_gre_upsampling = dense, fuse
    assert model.uses_dense_gre is dense
    with torch.no_grad():
        features = model.forward_features(frames, ratios)
        return features, model.forward_head(features)


def assert_equal_forms(model: BigGait, frames, ratios, *, fuse: bool, tol: float = 1e-5) -> None:
    f_sparse, out_sparse = run(model, frames, ratios, dense=False)
    f_dense, out_dense = run(model, frames, ratios, dense=True, fuse=fuse)
    fg = f_sparse["foreground"].flatten(0, 1) > 0
    assert torch.equal(f_dense["foreground"], f_sparse["foreground"])  # the same pixels are selected
    assert 0 < int(fg.sum()) < fg.numel()  # a real selection: neither empty nor everything
    for key in MAPS:
        # zero outside the selection in both forms, so comparing whole maps checks both
        assert rel(f_dense[key], f_sparse[key]) < tol, key
    for key in ("denoising", "appearance"):  # the branch outputs at the selected pixels
        got, want = (gather_pixels(f[key].flatten(0, 1), fg) for f in (f_dense, f_sparse))
        assert rel(got, want) < tol, key
    assert f_dense["shape_mse"].item() == pytest.approx(f_sparse["shape_mse"].item(), rel=tol)
    assert rel(out_dense["embeddings"], out_sparse["embeddings"]) < tol


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_dense_equals_gather_scatter_on_random_models(seed: int, fuse: bool) -> None:
    model = random_model(seed)
    frames, ratios = inputs(seed)
    assert_equal_forms(model, frames, ratios, fuse=fuse)


def test_dense_equals_gather_scatter_with_hidden_sigmoid_branch_and_squashed_frames() -> None:
    # the padding-resize input path (square frames) and a denoising branch with a custom hidden width
    model = random_model(3, denoising_hidden=24)
    frames, ratios = inputs(3, size=(48, 48))
    assert_equal_forms(model, frames, ratios, fuse=True)


@pytest.mark.parametrize("case", CASES)
def test_dense_equals_gather_scatter_on_official_tiny(tiny: dict, case: str) -> None:  # noqa: F811
    model = _load(tiny).eval()
    inputs_, expected = tiny["cases"][f"{case}/inputs"], tiny["cases"][f"{case}/eval"]
    for fuse in (True, False):
        assert_equal_forms(model, inputs_["frames"], inputs_["ratios"], fuse=fuse)
        _, out = run(model, inputs_["frames"], inputs_["ratios"], dense=True, fuse=fuse)
        assert rel(out["embeddings"], expected["embeddings"]) < 1e-5  # the official code's numbers


def test_dense_is_the_eval_default_and_training_always_gathers() -> None:
    model = random_model(0)
    assert model.static_shapes and model.uses_dense_gre  # eval default
    model.train()
    assert not model.uses_dense_gre
    model.freeze_mask_branch()  # mask branch in eval, the other two still training
    assert not model.uses_dense_gre
    # train mode: static_shapes changes nothing (batch statistics of the selected pixels only)
    frames, ratios = inputs(0)
    results = []
    for static in (True, False):
        model.static_shapes = static
        torch.manual_seed(5)
        results.append(model.forward_features(frames, ratios)["denoising"].detach())
    assert torch.equal(results[0], results[1])


def test_dense_form_is_not_equal_with_batch_statistics() -> None:
    """Why training keeps gather/scatter: BatchNorm batch statistics over every pixel differ."""
    torch.manual_seed(0)
    branch = DistillationBranch(8, 4)
    tokens = torch.randn(2, 8, 4, 2) + 3 * torch.arange(2.0).view(2, 1, 1, 1)
    selected = torch.zeros(2, 1, 8, 4, dtype=torch.bool)
    selected[0, :, 2:6, 1:3] = True
    with pytest.raises(RuntimeError, match="eval mode"):
        branch.train().forward_dense(tokens, selected)
    up = torch.nn.functional.interpolate(tokens, size=(8, 4), mode="bilinear", align_corners=False)
    sparse = branch.train()(gather_pixels(up, selected))[0]
    every = branch.train()(up.permute(0, 2, 3, 1).reshape(-1, 8))[0].view(2, 8, 4, 4).permute(0, 3, 1, 2)
    assert rel(gather_pixels(every, selected), sparse) > 1e-2
    # the same two forms agree in eval mode
    branch.eval()
    dense = branch.forward_dense(tokens, selected)[0]
    assert rel(gather_pixels(dense, selected), branch(gather_pixels(up, selected))[0]) < 1e-6
