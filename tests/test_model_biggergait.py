"""BiggerGait against the official code (OpenGait `BiggerGait_DINOv2.py`): tensors recorded from it on a scaled-down
model (tests/fixtures/official_biggergait/README.md), and the model's own behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from biggait.checkpoint import load_model
from biggait.errors import ConfigError
from biggait.models import BiggerGait, interpolate_pos_embed, interpolate_pos_embed_hf
from biggait.models.biggergait import head_of_group

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "official_biggergait"
RECORDINGS = sorted(
    p for p in FIXTURES.iterdir() if p.is_dir()
)  # extra mappings (scripts/record_official_biggergait.py)
# ImageNet normalisation of OpenGait's BaseRgbTransform, in float64 as it computes it
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64) * 255
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64) * 255


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


def frames_of(raw: torch.Tensor) -> torch.Tensor:
    """uint8 [n, s, H, W, 3] -> the recorded float32 frames [n, s, 3, H, W] (bit-exact)."""
    x = raw.permute(0, 1, 4, 2, 3).double()
    return ((x - MEAN[:, None, None]) / STD[:, None, None]).float()


def load_recording(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    return {
        "config": config,
        "model": load_model(
            folder / "checkpoint.pt",
            image_size=tuple(config["model_input_hw"]),
            map_size=tuple(config["sils_hw"]),
        ),
        # the extra recordings ran on the shared recording's inputs (scripts/record_official_biggergait.py)
        "inputs": torch.load(FIXTURES / "inputs.pt", weights_only=True),
        "embeddings": torch.load(folder / "embeddings.pt", weights_only=True),
        "intermediates": torch.load(folder / "intermediates.pt", weights_only=True),
    }


@pytest.fixture(scope="module", params=[FIXTURES, *RECORDINGS], ids=lambda p: p.name)
def recording(request) -> dict:
    return load_recording(request.param)


def run(model: BiggerGait, case: dict) -> tuple[dict, dict]:
    """Our forward on one recorded input set; OpenGait's packed batch (seqL) as zero-padded sequences + lengths."""
    frames = frames_of(case["raw"])
    lengths = None
    if case["seqL"] is not None:
        lengths = [int(v) for v in case["seqL"][0]]
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        pad = max(lengths)
        frames = torch.stack(
            [
                torch.cat([frames[0, a : a + t], frames.new_zeros(pad - t, *frames.shape[2:])])
                for a, t in zip(starts, lengths, strict=True)
            ]
        )
        lengths = torch.tensor(lengths)
    with torch.no_grad():
        features = model.forward_features(frames)
        out = model.forward_head(features, lengths)
    return features, out


def test_recordings_cover_shared_heads_and_groups(recording: dict) -> None:
    cfg = recording["config"]
    model = recording["model"]
    assert isinstance(model, BiggerGait)
    assert model.head_of_group == cfg["head_of_group"]
    assert model.layers_per_group == cfg["group_layer_num"]


def test_embeddings_match_the_official_code(recording: dict) -> None:
    for name, case in recording["inputs"].items():
        _, out = run(recording["model"], case)
        assert rel(out["embeddings"], recording["embeddings"][name]) < 1e-4, name


def test_mask_and_humanspace_maps_match_the_official_code(recording: dict) -> None:
    """The intermediate tensors localise a mismatch: mask branch, foreground, masked HumanSpace maps."""
    for name, case in recording["inputs"].items():
        expected = recording["intermediates"][name]
        if case["seqL"] is not None:
            continue  # packed: the same frames as ccpg_256x128's first sequence, checked through the embeddings
        features, _ = run(recording["model"], case)
        assert rel(features["mask_probs"].flatten(0, 1)[:, 1], expected["mask_prob"]) < 1e-4, name
        # foreground = bilinear resize of the patch mask, > 0.5 (OpenGait `BiggerGait__DINOv2.forward`)
        assert torch.equal(features["foreground"].flatten(0, 1), (expected["human_mask"] > 0.5).float()), name
        if "humanspace" in expected:
            assert rel(features["humanspace"].transpose(1, 2), expected["humanspace"]) < 1e-4, name


def test_backbone_blocks_match_hf_dinov2() -> None:
    rec = load_recording(FIXTURES)
    model, case = rec["model"], rec["inputs"]["ccpg_256x128"]
    expected = rec["intermediates"]["ccpg_256x128"]
    images = torch.nn.functional.interpolate(
        frames_of(case["raw"]).flatten(0, 1), size=model.image_size, mode="bilinear", align_corners=False
    )
    with torch.no_grad():
        blocks = model.backbone.forward_blocks(images)
    assert rel(blocks[0], expected["hidden_first"]) < 1e-5
    assert rel(blocks[-1], expected["hidden_last"]) < 1e-5


def test_the_dinov2_repository_interpolation_would_not_match() -> None:
    """The official BiggerGait runs HF transformers' interpolation, not the DINOv2 repository's BigGait uses."""
    table = torch.randn(1, 1 + 37 * 37, 8)
    hf, dinov2 = interpolate_pos_embed_hf(table, (32, 16)), interpolate_pos_embed(table, (32, 16))
    assert hf.shape == dinov2.shape == (1, 1 + 32 * 16, 8)
    assert rel(hf, dinov2) > 1e-2
    assert torch.equal(interpolate_pos_embed_hf(table, (37, 37)), table)  # the stored grid: unchanged, as HF
    rec = load_recording(FIXTURES)
    model = rec["model"]
    model.backbone.pos_embed_interpolation = "dinov2"
    _, out = run(model, rec["inputs"]["ccpg_256x128"])
    assert rel(out["embeddings"], rec["embeddings"]["ccpg_256x128"]) > 1e-3


@pytest.mark.parametrize(
    ("groups", "heads", "expected"),
    [(12, 12, list(range(12))), (6, 2, [0, 0, 0, 1, 1, 1]), (4, 2, [0, 0, 1, 1]), (4, 1, [0, 0, 0, 0])],
)
def test_consecutive_groups_share_a_head(groups: int, heads: int, expected: list[int]) -> None:
    # OpenGait `Baseline_Share`: Gait_List[g] = real_gait[g // (num_FPN // head_num)]
    assert head_of_group(groups, heads) == expected


def test_heads_must_divide_the_groups_and_groups_the_layers() -> None:
    with pytest.raises(ConfigError, match="gait_heads=5"):
        head_of_group(12, 5)
    with pytest.raises(ConfigError, match="layers_per_group=3"):
        tiny(layers_per_group=3)


def tiny(**kwargs) -> BiggerGait:
    options = dict(
        backbone="tiny",
        num_classes=5,
        pretrained="random",
        mask_branch="random",
        image_size=(112, 56),
        map_size=(32, 16),
        gait_heads=2,
        humanspace_dim=4,
        channels=(8, 16, 32, 64),
        embed_dim=16,
        parts=8,
    )
    return BiggerGait(**{**options, **kwargs})


def test_shapes_groups_and_frozen_parts() -> None:
    model = tiny(layers_per_group=2, gait_heads=1)
    assert model.num_groups == 2 and model.head_of_group == [0, 0]
    out = model(torch.randn(3, 2, 3, 64, 32))
    assert out["embeddings"].shape == (3, 16, 2 * 8) and out["logits"].shape == (3, 5, 2 * 8)
    out["embeddings"].sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.mask_branch.parameters())
    assert all(p.grad is not None for p in model.human_space.parameters())
    assert model.backbone.training is False


@pytest.mark.parametrize(("statistics", "updates"), [("official", True), ("frozen", False)])
def test_mask_branch_statistics_while_training(statistics: str, updates: bool) -> None:
    """OpenGait's `model.train()` puts the loaded mask branch back in training mode: its BatchNorm uses and
    updates batch statistics (docs/fidelity.md); mask_statistics="frozen" keeps the pretrained ones."""
    model = tiny(mask_statistics=statistics).train()
    before = model.mask_branch.bn_in.running_mean.clone()
    model.forward_features(torch.randn(2, 2, 3, 64, 32))
    assert model.mask_branch.training is updates
    assert (not torch.equal(before, model.mask_branch.bn_in.running_mean)) is updates


def test_frames_are_stretched_whatever_their_ratio() -> None:
    """BiggerGait ignores the ratios (OpenGait `data_in_use: [True, False]`) and stretches every frame."""
    model = tiny().eval()
    frames = torch.randn(1, 2, 3, 64, 64)
    with torch.no_grad():
        a = model(frames, torch.full((1, 2), 1.0))["embeddings"]
        b = model(frames, torch.full((1, 2), 0.3))["embeddings"]
    assert torch.equal(a, b)


def test_mask_foreground_rule_picks_the_person_whatever_the_channel() -> None:
    """OpenGait's BiggerGait takes channel 1 as the foreground (true of MaskBranch_vits14.pt); a branch from
    another BigGait run may carry the person on channel 0 (BigGait decides per frame), and then channel 1 is the
    background. mask_foreground="border" applies BigGait's per-frame rule: the person either way."""
    person = torch.zeros(2, 1, 8, 4)
    person[:, :, 2:6, 1:3] = 1.0
    on_c1 = torch.cat([1 - person, person], 1) * 0.9 + 0.05  # [B, 2, h, w], channel 1 = the person
    on_c0 = on_c1.flip(1)
    official, border = tiny().eval(), tiny(mask_foreground="border").eval()
    expected = official.foreground(on_c1)
    assert 0 < expected.mean() < 0.5  # the person, not the background
    assert torch.equal(border.foreground(on_c1), expected) and torch.equal(border.foreground(on_c0), expected)
    assert torch.equal(official.foreground(on_c0), 1 - expected)  # the official rule keeps the background
    assert load_model_config_round_trip(border)["mask_foreground"] == "border"
    with pytest.raises(ConfigError, match="mask_foreground must be"):
        tiny(mask_foreground="channel0")


def load_model_config_round_trip(model: BiggerGait) -> dict:
    return BiggerGait(**model.config).config
