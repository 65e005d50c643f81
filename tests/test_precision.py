"""precision=auto picks what the hardware has; the frozen backbone's own precision; channels_last; compile."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from biggait.lit_module import BigGaitModule
from biggait.models import BigGait
from biggait.models.gaitbase import GaitBaseHead
from biggait.precision import (
    autocast_dtype,
    choose_precision,
    cpu_flags,
    describe_precision,
    resolve_precision,
)
from biggait.train import resolve_trainer_precision

# real /proc/cpuinfo flag strings (abridged) of the CPU kinds the choice depends on
SAPPHIRE_RAPIDS = "fpu sse2 avx2 avx512f avx512bw avx_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"
ZEN4 = "fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni"
SKYLAKE_X = "fpu sse2 avx2 avx512f avx512bw avx512cd"
ZEN2 = "fpu sse2 avx2 fma sha_ni"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (SAPPHIRE_RAPIDS, "bf16-mixed"),
        (ZEN4, "bf16-mixed"),
        ("fpu amx_bf16 amx_tile", "bf16-mixed"),
        (SKYLAKE_X, "32-true"),
        (ZEN2, "32-true"),
        ("", "32-true"),
        ("avx512_bf16x", "32-true"),  # whole flags only
    ],
)
def test_auto_on_cpu_follows_the_bf16_flags(flags: str, expected: str) -> None:
    choice = choose_precision("cpu", flags=flags.split())
    assert choice.precision == expected
    assert choice.reason


@pytest.mark.parametrize(
    ("capability", "expected"),
    [
        ((9, 0), "bf16-mixed"),
        ((8, 0), "bf16-mixed"),
        ((8, 6), "bf16-mixed"),
        ((7, 5), "16-mixed"),
        ((7, 0), "16-mixed"),
        ((6, 1), "16-mixed"),
    ],
)
def test_auto_on_gpu_follows_the_compute_capability(capability: tuple[int, int], expected: str) -> None:
    choice = choose_precision("gpu", capability=capability)
    assert choice.precision == expected
    assert f"{capability[0]}.{capability[1]}" in choice.reason


def test_auto_on_this_machine_matches_proc_cpuinfo() -> None:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else None
    if text is None:
        pytest.skip("no /proc/cpuinfo on this platform")
    has_bf16 = re.search(r"^flags\s*:.*\b(amx_bf16|avx512_bf16)\b", text, flags=re.M) is not None
    assert resolve_precision("auto", accelerator="cpu") == ("bf16-mixed" if has_bf16 else "32-true")


def test_cpu_flags_reads_x86_and_arm_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(x86) == frozenset({"fpu", "avx2", "avx512_bf16"})
    assert cpu_flags(arm) == frozenset({"fp", "asimd", "bf16"})
    assert cpu_flags(tmp_path / "missing") is None
    assert choose_precision("cpu", flags=None).precision == "32-true"


def test_explicit_precisions_pass_through() -> None:
    assert resolve_precision("bf16") == "bf16-mixed"
    assert resolve_precision("fp32") == "32-true"
    assert resolve_precision("16-mixed") == "16-mixed"
    assert describe_precision("32-true").reason == "requested"
    assert autocast_dtype("bf16-mixed") is torch.bfloat16
    assert autocast_dtype("fp16") is torch.float16
    assert autocast_dtype("32-true") is None
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        autocast_dtype("int8")


def test_trainer_precision_auto_becomes_a_string_lightning_accepts() -> None:
    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "auto"}})
    picked = resolve_trainer_precision(cfg)
    assert cfg.trainer.precision == picked == resolve_precision("auto", accelerator="cpu")
    trainer = L.Trainer(accelerator="cpu", precision=picked, logger=False, enable_checkpointing=False)
    assert trainer.precision == picked


def _tiny(**kw) -> BigGait:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="BigGait backbone has NO pretrained weights")
        torch.manual_seed(0)
        return BigGait(
            backbone="tiny",
            num_classes=8,
            image_size=(112, 56),
            map_size=(16, 8),
            channels=(8, 16, 16, 32),
            fusion_squeeze=4,
            embed_dim=16,
            **kw,
        ).eval()


def test_backbone_precision_runs_only_the_backbone_in_bf16() -> None:
    fp32, bf16 = _tiny(), _tiny(backbone_precision="bf16")
    bf16.load_state_dict(fp32.state_dict())
    frames, ratios = torch.randn(2, 3, 3, 128, 64), torch.full((2, 3), 0.5)
    with torch.no_grad():
        ref, low = fp32.forward_features(frames, ratios), bf16.forward_features(frames, ratios)
    for key in ("f_last", "f_mid4", "denoising"):
        assert low[key].dtype == torch.float32  # the trainable parts get fp32 maps
    rel = float((low["f_mid4"] - ref["f_mid4"]).norm() / ref["f_mid4"].norm())
    assert 0 < rel < 2e-2  # bf16 did run (not bit-equal), and stayed close


def test_backbone_precision_fp32_opts_out_of_the_surrounding_autocast() -> None:
    fp32, pinned = _tiny(), _tiny(backbone_precision="fp32")
    pinned.load_state_dict(fp32.state_dict())
    frames, ratios = torch.randn(1, 2, 3, 128, 64), torch.full((1, 2), 0.5)
    with torch.no_grad():
        ref = fp32.backbone(torch.nn.functional.interpolate(frames[0], size=(112, 56), mode="bilinear"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = pinned.forward_features(frames, ratios)
            free = fp32.forward_features(frames, ratios)
    assert torch.equal(out["f_last"][0], ref[0])
    assert not torch.equal(free["f_last"][0], ref[0])


def test_bad_backbone_precision_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="backbone_precision must be"):
        _tiny(backbone_precision="int8")
    with pytest.raises(ValueError, match="eval_precision must be"):
        _tiny(eval_precision="bf16")


def test_eval_precision_fp32_leaves_only_the_backbone_in_low_precision() -> None:
    """Under bf16 autocast, `eval_precision="fp32"` in eval mode computes exactly what a bf16 backbone with an
    fp32 GRE + GaitBase computes; in training mode the trainable parts stay in mixed precision."""
    plain, split, reference = (
        _tiny(parts=8),
        _tiny(parts=8, eval_precision="fp32"),
        _tiny(parts=8, backbone_precision="bf16"),
    )
    for model in (split, reference):
        model.load_state_dict(plain.state_dict())
    frames, ratios = torch.randn(2, 3, 3, 128, 64), torch.full((2, 3), 0.5)
    with torch.no_grad():
        want = reference(frames, ratios)["embeddings"]  # no autocast: bf16 backbone, fp32 rest
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = split(frames, ratios)
            everything_bf16 = plain(frames, ratios)
            split.train()
            trained = split.forward_features(frames, ratios)
    assert got["embeddings"].dtype == torch.float32
    assert torch.equal(got["embeddings"], want)
    assert everything_bf16["embeddings"].dtype == torch.bfloat16
    assert trained["denoising"].dtype == torch.bfloat16  # training keeps the mixed precision


@pytest.mark.parametrize(
    ("accelerator", "kwargs", "expected"),
    [
        ("cpu", {"flags": ZEN4.split()}, "fp32"),
        ("cpu", {"flags": SAPPHIRE_RAPIDS.split()}, "fp32"),
        ("cpu", {"flags": ZEN2.split()}, None),
        ("gpu", {"capability": (9, 0)}, "fp32"),
        ("gpu", {"capability": (7, 5)}, "fp32"),
    ],
)
def test_auto_evaluates_the_trainable_parts_in_fp32_where_it_lowers_precision(
    accelerator: str, kwargs: dict, expected: str | None
) -> None:
    choice = choose_precision(accelerator, **kwargs)
    assert choice.eval_precision == expected
    assert ("evaluation: GRE + GaitBase in fp32" in str(choice)) == (expected is not None)
    assert describe_precision("bf16-mixed").eval_precision is None  # an explicit precision is taken as is


@pytest.mark.parametrize("preset", [None, "fp32"])
def test_trainer_precision_auto_sets_an_unset_eval_precision(preset: str | None) -> None:
    cfg = OmegaConf.create(
        {"trainer": {"accelerator": "cpu", "precision": "auto"}, "model": {"net": {"eval_precision": preset}}}
    )
    picked = resolve_trainer_precision(cfg)
    lowered = picked != "32-true"  # this machine's CPU decides (bf16 units or not)
    assert cfg.model.net.eval_precision == ("fp32" if lowered or preset else None)
    explicit = OmegaConf.create(
        {"trainer": {"accelerator": "cpu", "precision": "bf16"}, "model": {"net": {"eval_precision": None}}}
    )
    resolve_trainer_precision(explicit)
    assert explicit.model.net.eval_precision is None


def test_channels_last_head_gives_the_same_embeddings() -> None:
    torch.manual_seed(0)
    ref = GaitBaseHead(channels=(8, 16, 16, 32), fusion_squeeze=4, embed_dim=16, num_classes=5).eval()
    cl = GaitBaseHead(
        channels=(8, 16, 16, 32), fusion_squeeze=4, embed_dim=16, num_classes=5, channels_last=True
    ).eval()
    cl.load_state_dict(ref.state_dict())
    assert cl.denoising_stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    den, app = torch.rand(2, 3, 16, 32, 16), torch.rand(2, 3, 16, 32, 16)
    with torch.no_grad():
        a, b = ref(den, app)["embeddings"], cl(den, app)["embeddings"]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stage", ["fit", "test", "predict"])
def test_compile_options_apply_to_every_stage_and_keep_checkpoint_names(stage: str) -> None:
    model = {
        "backbone": "tiny",
        "num_classes": 4,
        "pretrained": None,
        "image_size": [112, 56],
        "map_size": [16, 8],
        "channels": [8, 16, 16, 32],
        "fusion_squeeze": 4,
        "embed_dim": 16,
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="BigGait backbone has NO pretrained weights")
        module = BigGaitModule(net=model, compile_backbone=True, compile_head=True)
    names = list(module.state_dict())
    module.setup(stage)
    module.setup(stage)  # idempotent
    assert module.net.backbone._compiled_call_impl is not None
    assert module.net.head._compiled_call_impl is not None
    assert module.net.mask_branch._compiled_call_impl is None
    assert list(module.state_dict()) == names
