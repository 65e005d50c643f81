"""Export to ONNX and torch.export: equal to the eager model within 1e-4 relative (docs/export.md)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from biggait.checkpoint import load_model
from biggait.compat.opengait import export_lightning_checkpoint
from biggait.export import (
    EmbeddingModel,
    ExportError,
    check_exported,
    example_inputs,
    export_onnx,
    export_torch,
    main,
    relative_error,
)
from biggait.models import BigGait
from test_model_dense_gre import random_model as tiny_model

FRAME = (128, 64)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """The tiny model and its torch.export program (a few seconds)."""
    model = tiny_model()
    return {
        "model": model,
        "pt2": export_torch(model, tmp_path_factory.mktemp("pt2") / "tiny.pt2", frame_size=FRAME),
    }


@pytest.fixture(scope="module")
def exported_onnx(exported: dict, tmp_path_factory) -> dict:
    """... and its ONNX file (the ONNX exporter takes ~20 s on a 2-core CPU: slow tests only)."""
    return {
        **exported,
        "onnx": export_onnx(
            exported["model"], tmp_path_factory.mktemp("onnx") / "tiny.onnx", frame_size=FRAME
        ),
    }


def eager(model: BigGait, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x, r)["embeddings"]


@pytest.mark.parametrize("n, s", [(1, 1), (3, 7)])
def test_torch_export_matches_eager(exported: dict, n: int, s: int) -> None:
    x, r = example_inputs(FRAME, sequences=n, frames=s, seed=5)
    program = torch.export.load(str(exported["pt2"]))
    with torch.no_grad():
        got = program.module()(x, r)
    want = eager(exported["model"], x, r)
    assert got.shape == want.shape == (n, 32, 16)
    assert relative_error(got, want) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("n, s", [(1, 1), (3, 7)])
def test_onnx_runtime_matches_eager(exported_onnx: dict, n: int, s: int) -> None:
    exported = exported_onnx
    import onnxruntime

    x, r = example_inputs(FRAME, sequences=n, frames=s, seed=6)
    session = onnxruntime.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["frames", "ratios"]
    got = session.run(["embeddings"], {"frames": x.numpy(), "ratios": r.numpy()})[0]
    want = eager(exported["model"], x, r)
    assert got.shape == tuple(want.shape)
    assert relative_error(torch.from_numpy(got), want) < 1e-4


@pytest.mark.slow
def test_check_exported_catches_a_different_model(exported_onnx: dict) -> None:
    exported = exported_onnx
    errors = check_exported(
        exported["model"], onnx_path=exported["onnx"], torch_path=exported["pt2"], frame_size=FRAME
    )
    assert set(errors) == {"onnx", "torch.export"} and max(errors.values()) < 1e-4
    with pytest.raises(ExportError, match="differs from eager"):
        check_exported(tiny_model(seed=1), onnx_path=exported["onnx"], frame_size=FRAME)


def test_export_refuses_the_gather_scatter_model_and_uses_the_recorded_frame_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="static_shapes=True"):
        EmbeddingModel(tiny_model(static_shapes=False))
    program = torch.export.load(export_torch(tiny_model(frame_size=(112, 56)), tmp_path / "m.pt2"))
    frames = [n for n in program.graph.nodes if n.op == "placeholder" and n.name == "frames"][0]
    assert tuple(frames.meta["val"].shape[-2:]) == (112, 56)  # the size the model records, not a default


def test_cli_exports_a_checkpoint_and_checks_it(tmp_path: Path, capsys) -> None:
    ckpt = export_lightning_checkpoint(tiny_model(), tmp_path / "model.ckpt")
    rc = main([str(ckpt), "--torch-export", str(tmp_path / "m.pt2"), "--frame-size", "128", "64"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "torch.export: relative error against eager" in out
    assert (tmp_path / "m.pt2").is_file()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writer left nothing behind


class _Hostile:
    def __reduce__(self):
        return (print, ("pwned",))


def _bad_model_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "model.ckpt"
    if kind == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif kind == "truncated":
        good = export_lightning_checkpoint(tiny_model(), tmp_path / "good.ckpt").read_bytes()
        path.write_bytes(good[: len(good) // 2])
    elif kind == "pickle":  # a code-carrying pickle must be refused, never executed
        torch.save({"hyper_parameters": _Hostile()}, path)
    elif kind == "not-ours":
        torch.save({"model": {"w": torch.zeros(1)}}, path)
    return path


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "pickle", "not-ours"])
def test_cli_refuses_bad_model_files_with_one_line(tmp_path: Path, kind: str, capsys) -> None:
    path = _bad_model_file(tmp_path, kind)
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "--onnx", str(tmp_path / "x.onnx"), "--frame-size", "128", "64"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], captured.err
    assert "pwned" not in captured.out
    assert not (tmp_path / "x.onnx").exists()


def test_python_m_biggait_export_refuses_a_hostile_pickle(tmp_path: Path) -> None:
    path = _bad_model_file(tmp_path, "pickle")
    proc = subprocess.run(
        [sys.executable, "-m", "biggait.export", str(path), "--torch-export", str(tmp_path / "x.pt2")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "weights_only=True" in proc.stderr
    assert "pwned" not in proc.stdout and not (tmp_path / "x.pt2").exists()


def test_export_loads_through_load_model_without_the_original_backbone_file(tmp_path: Path) -> None:
    model = tiny_model()
    model.config["pretrained"] = str(tmp_path / "moved_away.pth")  # as if trained from a file now gone
    ckpt = export_lightning_checkpoint(model, tmp_path / "model.ckpt")
    loaded = load_model(ckpt)
    x, r = example_inputs(FRAME)
    assert torch.equal(eager(loaded, x, r), eager(model, x, r))


@pytest.mark.slow
def test_vits14_exports_match_eager(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = BigGait("vits14", 100).eval()
    onnx_path = export_onnx(model, tmp_path / "vits14.onnx", frame_size=(256, 128))
    pt2 = export_torch(model, tmp_path / "vits14.pt2", frame_size=(256, 128))
    errors = check_exported(
        model, onnx_path=onnx_path, torch_path=pt2, frame_size=(256, 128), sequences=1, frames=3
    )
    assert max(errors.values()) < 1e-4
