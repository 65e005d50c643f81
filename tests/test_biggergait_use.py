"""A BiggerGait checkpoint goes everywhere a BigGait one goes (embedding, the embed / identify CLIs, both exports,
evaluation), and a checkpoint handed to a run configured for the other architecture is one error line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from biggait.checkpoint import model_fingerprint
from biggait.compat.opengait import export_lightning_checkpoint
from biggait.embed import main as embed_main
from biggait.export import check_exported, example_inputs, export_onnx, export_torch, relative_error
from biggait.export import main as export_main
from biggait.formats import ArchitectureError
from biggait.gallery import load_gallery
from biggait.identify import main as identify_main
from biggait.inference import SequencePooler, embed_padded, embed_sequences
from biggait.models import BigGait, BiggerGait
from biggait.precision import resolve_precision
from biggait.preprocess import normalize_frames
from biggait.train import train
from test_checkpoint import TINY
from test_inference import _write_tree
from test_model_biggergait import tiny
from test_train import CONF, compose_train, evaluate, steps
from test_train import TINY as TRAIN_TINY

FRAME = (64, 32)


@pytest.fixture(scope="module")
def model() -> BiggerGait:
    """Random weights; a few training-mode passes give every BatchNorm running statistics of its own, so the
    foreground is neither empty nor everything and the embeddings differ between inputs."""
    torch.manual_seed(0)
    net = tiny(frame_size=FRAME).train()  # 4 groups of 1 layer sharing 2 heads
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(2, 3, 3, *FRAME))
    net.eval()
    with torch.no_grad():
        foreground = net.forward_features(torch.randn(2, 4, 3, *FRAME))["foreground"].mean()
    assert 0.1 < foreground < 0.9
    return net


@pytest.fixture(scope="module")
def checkpoint(model: BiggerGait, tmp_path_factory) -> Path:
    return export_lightning_checkpoint(model, tmp_path_factory.mktemp("bigger") / "biggergait.ckpt")


def _frames(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *FRAME, 3), dtype=np.uint8), np.full(n, 0.45, np.float32)


def _forward(model: BiggerGait, frames: np.ndarray) -> np.ndarray:
    x = normalize_frames(torch.from_numpy(frames).permute(0, 3, 1, 2)[None])
    with torch.no_grad():
        return model(x)["embeddings"][0].numpy()


# ------------------------------------------------------------------------------------------ embedding
@pytest.mark.parametrize("batch_frames", [1, 3, 64])
def test_chunked_batched_embedding_equals_one_forward_pass(model: BiggerGait, batch_frames: int) -> None:
    """Each layer group's maps are pooled over the chunks (biggait.inference): the same as one forward pass."""
    seqs = [_frames(7, 0), _frames(2, 1), _frames(5, 2)]
    out = list(embed_sequences(model, seqs, batch_frames=batch_frames, device="cpu"))
    assert [o.shape for o in out] == [(16, 4 * 8)] * 3  # embed_dim x (4 groups x 8 parts)
    for got, (f, _) in zip(out, seqs, strict=True):
        np.testing.assert_allclose(got, _forward(model, f), rtol=1e-4, atol=1e-5)
    assert np.abs(out[0] - out[1]).max() > 1e-3  # different sequences, different embeddings


def test_padded_batch_embedding_equals_the_evaluation_forward(model: BiggerGait) -> None:
    (a, _), (b, _) = _frames(5, 0), _frames(3, 1)
    frames = torch.zeros(2, 5, 3, *FRAME, dtype=torch.uint8)
    frames[0] = torch.from_numpy(a).permute(0, 3, 1, 2)
    frames[1, :3] = torch.from_numpy(b).permute(0, 3, 1, 2)
    lengths, ratios = torch.tensor([5, 3]), torch.full((2, 5), 0.45)
    x = normalize_frames(frames, lengths)
    with torch.no_grad():
        want = model(x, ratios, lengths)["embeddings"]
    got = embed_padded(model, x, ratios, lengths, batch_frames=2)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_precision_auto_runs_only_the_backbone_in_low_precision(model: BiggerGait) -> None:
    seqs = [_frames(5, 3)]
    pooler = SequencePooler(model, device=torch.device("cpu"), precision="auto")
    assert pooler.precision.precision == resolve_precision("auto", accelerator="cpu")
    fp32 = next(embed_sequences(model, seqs, device="cpu"))
    auto = next(embed_sequences(model, seqs, device="cpu", precision="auto"))
    if pooler.dtype is None:  # no bf16 units: auto is fp32, bit for bit
        assert np.array_equal(auto, fp32)
    else:  # exactly a bf16 backbone under HumanSpace convs and heads in fp32
        split = BiggerGait(**{**model.config, "backbone_precision": "bf16"}).eval()
        split.load_state_dict(model.state_dict())
        np.testing.assert_array_equal(auto, next(embed_sequences(split, seqs, device="cpu")))
        assert 0 < np.linalg.norm(auto - fp32) / np.linalg.norm(fp32) < 0.1
    assert model.eval_precision is None  # the pooler left the caller's model as it was


def test_embed_and_identify_clis_on_a_biggergait_checkpoint(
    model: BiggerGait, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    _write_tree(tmp_path / "tree")
    gallery, probes = tmp_path / "g.npz", tmp_path / "p.npz"
    assert (
        embed_main([str(checkpoint), str(tmp_path / "tree"), "--out", str(gallery), "--device", "cpu"]) == 0
    )
    probe_dir = tmp_path / "tree" / "024" / "U1_D1" / "1_1"
    assert embed_main([str(checkpoint), str(probe_dir), "--out", str(probes), "--identity", "someone"]) == 0
    g, p = load_gallery(gallery), load_gallery(probes)
    assert g.identities == ["023", "023", "024", "024"] and g.model == p.model == model_fingerprint(model)
    assert g.embeddings.shape[1:] == (16, 32)
    capsys.readouterr()
    out = tmp_path / "r.json"
    assert identify_main([str(gallery), str(probes), "--top-k", "2", "--json", str(out)]) == 0
    best = json.loads(out.read_text())[0]["matches"][0]
    assert best["label"] == "024/U1_D1/1_1" and best["distance"] < 1e-3
    assert json.loads(out.read_text())[0]["matches"][1]["distance"] > 1e-3  # the others are elsewhere


# --------------------------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def exported(model: BiggerGait, tmp_path_factory) -> Path:
    return export_torch(model, tmp_path_factory.mktemp("pt2") / "biggergait.pt2", frame_size=FRAME)


@pytest.mark.parametrize("n, s", [(1, 1), (3, 7)])
def test_torch_export_matches_eager(model: BiggerGait, exported: Path, n: int, s: int) -> None:
    x, r = example_inputs(FRAME, sequences=n, frames=s, seed=5)
    with torch.no_grad():
        got = torch.export.load(str(exported)).module()(x, r)
        want = model(x, r)["embeddings"]
    assert got.shape == want.shape == (n, 16, 32)
    assert relative_error(got, want) < 1e-4


def test_export_cli_on_a_biggergait_checkpoint(checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert export_main([str(checkpoint), "--torch-export", str(tmp_path / "m.pt2")]) == 0
    assert "torch.export: relative error against eager" in capsys.readouterr().out


@pytest.mark.slow
def test_onnx_runtime_matches_eager(model: BiggerGait, tmp_path: Path) -> None:
    """The ONNX exporter takes ~20 s on a 2-core CPU; `check_exported` runs it on other n, s than exported."""
    path = export_onnx(model, tmp_path / "biggergait.onnx", frame_size=FRAME)
    errors = check_exported(model, onnx_path=path, frame_size=FRAME, sequences=3, frames=7)
    assert errors["onnx"] < 1e-4


# ------------------------------------------------------------- evaluation, resuming, the other architecture
def _bigger_train(tmp_path: Path, root: Path, mask_branch: Path):
    """A 2-step tiny BiggerGait run on the tiny shards, its frozen mask branch from `mask_branch`."""
    overrides = [
        "model=biggergait_tiny",
        "model.net.pretrained=random",
        f"model.net.mask_branch={mask_branch}",
        "model.net.image_size=[112,56]",
        "model.net.humanspace_dim=4",
        "model.net.channels=[8,16,32,64]",
        "model.net.embed_dim=16",
        "model.net.parts=8",
        "logger=csv",
        *steps(2, 2),
    ]
    # test_train's TINY overrides without BigGait's own option (fusion_squeeze)
    tiny = [o for o in TRAIN_TINY if not o.startswith("model.net.")]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="train", overrides=[*tiny, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.data.root = str(root)
    return cfg


@pytest.mark.slow
def test_train_then_eval_reproduces_the_numbers_without_the_mask_branch_file(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """`make eval MODEL=biggergait` on a `make train MODEL=biggergait` checkpoint prints the same table, with the
    mask-branch file gone: the checkpoint is self-contained (the branch's weights travel in it)."""
    torch.manual_seed(0)
    donor = export_lightning_checkpoint(BigGait(**TINY, pretrained="random"), tmp_path / "biggait.ckpt")
    trained = train(_bigger_train(tmp_path / "run", tiny_shards, donor))
    donor.unlink()
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    evaluated, cfg = evaluate(last, tmp_path / "eval", tiny_shards, "model=biggergait_tiny")
    assert cfg.model.architecture == "biggergait"
    keys = [k for k in trained if k.startswith("test/") and "rank1" in k]
    assert keys and "test/foreground_iou" in trained
    for key in [*keys, "test/foreground_iou"]:
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-9), key


def test_eval_with_the_other_architectures_config_is_one_error(
    model: BiggerGait, checkpoint: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    with pytest.raises(
        ArchitectureError, match=r"is a BiggerGait checkpoint, but this needs a BigGait one.*MODEL=biggergait"
    ):
        evaluate(checkpoint, tmp_path / "a", tiny_shards)  # make eval without MODEL=biggergait
    torch.manual_seed(0)
    biggait = export_lightning_checkpoint(BigGait(**TINY, pretrained="random"), tmp_path / "biggait.ckpt")
    with pytest.raises(
        ArchitectureError, match=r"is a BigGait checkpoint, but this needs a BiggerGait one.*MODEL=biggait"
    ):
        evaluate(biggait, tmp_path / "b", tiny_shards, "model=biggergait_tiny")


def test_resuming_with_the_other_architectures_config_is_one_error(
    checkpoint: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    cfg = compose_train(tmp_path / "run", tiny_shards, *steps(2, 2), "logger=none", f"ckpt_path={checkpoint}")
    with pytest.raises(ArchitectureError, match=r"ckpt_path=.* is a BiggerGait checkpoint.*MODEL=biggergait"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything ran


def test_eval_cli_of_the_other_architecture_is_one_error_line(checkpoint: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "biggait.eval",
            f"ckpt_path={checkpoint}",
            f"hydra.run.dir={tmp_path / 'run'}",
            f"data.root={tmp_path / 'nowhere'}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"},
        cwd=CONF.parent,
        timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "is a BiggerGait checkpoint" in errors[0] and "MODEL=biggergait" in errors[0]
