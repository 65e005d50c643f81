"""Official OpenGait checkpoint import / export and the conversion CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from biggait.checkpoint import CheckpointError
from biggait.compat.opengait import (
    OpenGaitCheckpointError,
    export_opengait_state_dict,
    infer_config,
    load_opengait_checkpoint,
    main,
)
from biggait.models import BigGait

# Recorded by the official OpenGait code (tests/fixtures/README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures"
OFFICIAL_TINY = FIXTURES / "official_tiny"


DTYPES = {"float32": torch.float32, "int64": torch.int64}


def official_layout() -> dict[str, tuple[list[int], torch.dtype]]:
    lines = (FIXTURES / "opengait_biggait_state_dict.tsv").read_text().splitlines()[1:]
    layout = {}
    for line in lines:
        key, shape, dtype = line.split("\t")
        layout[key] = ([int(s) for s in shape.strip("[]").split(",") if s.strip()], DTYPES[dtype])
    return layout


def random_official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, (shape, dtype) in official_layout().items():
        if dtype == torch.int64:
            state[key] = torch.randint(0, 10_000, shape, generator=g)
        else:
            state[key] = torch.randn(shape, generator=g)
    return state


@pytest.fixture(scope="module")
def paper_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = random_official_state()
    path = tmp_path_factory.mktemp("ckpt") / "BigGait__Dinov2_Gaitbase_Frame30-40000.pt"
    torch.save({"model": state, "iteration": 40000}, path)
    return path, state


def test_paper_state_dict_names_and_shapes_match_tsv() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = export_opengait_state_dict(BigGait("vits14", 100))
    layout = official_layout()
    assert set(exported) == set(layout)
    for key, (shape, dtype) in layout.items():
        assert list(exported[key].shape) == shape, key
        assert exported[key].dtype == dtype, key


def test_official_checkpoint_round_trips_exactly(paper_checkpoint) -> None:
    path, state = paper_checkpoint
    model = load_opengait_checkpoint(path)
    assert not model.training
    assert model.config["backbone"] == "vits14" and model.config["num_classes"] == 100
    exported = export_opengait_state_dict(model)
    assert set(exported) == set(state)
    for key, value in state.items():
        assert exported[key].dtype == value.dtype, key
        assert torch.equal(exported[key], value), key
    # the 37x37 table is kept; the 32x16 grid is interpolated from it on the fly
    assert model.backbone.pos_embed.shape == (1, 1370, 384)


def test_infers_every_size_of_official_tiny() -> None:
    state = torch.load(OFFICIAL_TINY / "checkpoint.pt", weights_only=True)["model"]
    cfg = infer_config(state)
    assert cfg["backbone"] is None
    assert (cfg["backbone_width"], cfg["backbone_depth"], cfg["backbone_heads"]) == (32, 8, 2)
    assert cfg["channels"] == (16, 32, 64, 128) and cfg["fusion_squeeze"] == 4
    assert (cfg["embed_dim"], cfg["parts"], cfg["num_classes"]) == (32, 16, 10)
    assert (cfg["denoising_dim"], cfg["denoising_hidden"], cfg["appearance_dim"]) == (16, 64, 16)


@pytest.fixture()
def tiny_state() -> dict[str, torch.Tensor]:
    return torch.load(OFFICIAL_TINY / "checkpoint.pt", weights_only=True)["model"]


def _save(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "ckpt.pt"
    torch.save({"model": state, "iteration": 1}, path)
    return path


def test_missing_tensor_is_listed(tmp_path: Path, tiny_state) -> None:
    del tiny_state["gait_net.BNNecks.bn1d.running_var"]
    del tiny_state["Mask_Branch.bn_t.num_batches_tracked"]
    with pytest.raises(OpenGaitCheckpointError, match="missing tensors \\(2\\)") as err:
        load_opengait_checkpoint(_save(tmp_path, tiny_state))
    assert "gait_net.BNNecks.bn1d.running_var" in str(err.value)
    assert "Mask_Branch.bn_t.num_batches_tracked" in str(err.value)


def test_extra_tensor_is_listed(tmp_path: Path, tiny_state) -> None:
    tiny_state["gait_net.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(OpenGaitCheckpointError, match="gait_net.extra_head.weight"):
        load_opengait_checkpoint(_save(tmp_path, tiny_state))


def test_mis_shaped_tensor_is_listed(tmp_path: Path, tiny_state) -> None:
    tiny_state["gait_net.fusion.conv.forward_block.3.weight"] = torch.zeros(4, 4, 1, 1)
    with pytest.raises(OpenGaitCheckpointError, match="fusion.conv.forward_block.3.weight: checkpoint"):
        load_opengait_checkpoint(_save(tmp_path, tiny_state))


def test_not_an_opengait_file(tmp_path: Path, tiny_state) -> None:
    path = tmp_path / "plain.pt"
    torch.save(tiny_state, path)
    with pytest.raises(OpenGaitCheckpointError, match="OpenGait format"):
        load_opengait_checkpoint(path)
    with pytest.raises(CheckpointError, match="absent.pt does not exist"):
        load_opengait_checkpoint(tmp_path / "absent.pt")


def test_cli_writes_a_lightning_checkpoint(tmp_path: Path) -> None:
    src = OFFICIAL_TINY / "checkpoint.pt"
    out = tmp_path / "sub" / "tiny.ckpt"
    assert main([str(src), str(out)]) == 0
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["pytorch-lightning_version"] == "2.6.6"
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 0
    assert all(k.startswith("net.") for k in ckpt["state_dict"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BigGait(**ckpt["hyper_parameters"]["net"])
    model.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()}, strict=True)
    reference = load_opengait_checkpoint(src)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not list(out.parent.glob(".*tmp"))  # atomic write leaves no temp file


def test_cli_as_module_reports_errors(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    bad = tmp_path / "bad.pt"
    torch.save({"weights": {}}, bad)
    proc = subprocess.run(
        [sys.executable, "-m", "biggait.compat.opengait", str(bad), str(tmp_path / "o.ckpt")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "OpenGait format" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.ckpt").exists()
