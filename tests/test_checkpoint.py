"""biggait.load_model for every model file, and every checkpoint loader refusing bad and hostile files."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from biggait import load_model
from biggait.checkpoint import CheckpointError, model_fingerprint, validate_checkpoint
from biggait.compat.opengait import (
    export_lightning_checkpoint,
    export_opengait_state_dict,
    load_opengait_checkpoint,
)
from biggait.gallery import GalleryError, load_gallery
from biggait.models import BigGait, DinoV2Backbone
from biggait.preprocess import normalize_frames

TINY = {
    "backbone": "tiny",
    "num_classes": 5,
    "image_size": (112, 56),
    "map_size": (32, 16),
    "channels": (8, 16, 32, 64),
    "embed_dim": 16,
    "fusion_squeeze": 4,
    "frame_size": (64, 32),
}


def tiny_model(seed: int = 0) -> BigGait:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BigGait(**TINY).eval()


def _embed(model: BigGait) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (1, 3, 3, 64, 32), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        return model(normalize_frames(frames), torch.full((1, 3), 0.45))["embeddings"]


class _RunsCode:
    """Unpickling this calls os.system: the payload of a code-carrying checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile(tmp_path: Path, wrap) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.ckpt"
    torch.save(wrap(_RunsCode(marker)), path)
    return path, marker


# ------------------------------------------------------------------------------------------ loading
def test_load_model_reads_ours_converted_and_official_files_alike(tmp_path: Path) -> None:
    model = tiny_model()
    ours = export_lightning_checkpoint(model, tmp_path / "ours.ckpt")
    official = tmp_path / "official.pt"
    torch.save({"model": export_opengait_state_dict(model), "iteration": 7}, official)
    converted = tmp_path / "converted.ckpt"
    from biggait.compat.opengait import main as convert

    assert (
        convert(
            [
                str(official),
                str(converted),
                "--image-size",
                "112x56",
                "--map-size",
                "32x16",
                "--frame-size",
                "64x32",
            ]
        )
        == 0
    )
    want = _embed(model)
    for path, overrides in (
        (ours, {}),
        (converted, {}),
        (official, {"image_size": (112, 56), "map_size": (32, 16)}),
    ):
        loaded = load_model(path, **overrides)
        assert not loaded.training
        torch.testing.assert_close(_embed(loaded), want, msg=str(path))
    assert load_model(converted).frame_size == (64, 32)  # the import CLI's --frame-size travels in the file
    assert model_fingerprint(load_model(ours)) == model_fingerprint(model)
    assert model_fingerprint(tiny_model(seed=1)) != model_fingerprint(model)


def test_checkpoints_of_older_versions_load_everywhere(tmp_path: Path, as_legacy_checkpoint) -> None:
    """Older checkpoints keep the model options under hyper_parameters["model"] and the weights under model.*."""
    from biggait.lit_module import load_module

    model = tiny_model()
    ours = export_lightning_checkpoint(model, tmp_path / "ours.ckpt")
    old = as_legacy_checkpoint(ours, tmp_path / "old.ckpt")
    blob = torch.load(old, weights_only=True)
    assert "net" not in blob["hyper_parameters"] and not any(k.startswith("net.") for k in blob["state_dict"])
    want = _embed(model)
    torch.testing.assert_close(_embed(load_model(old)), want)
    validate_checkpoint(old)
    module = load_module(old, protocol="ccpg")
    assert "model" not in module.hparams  # re-saved, it is a checkpoint of today's layout
    torch.testing.assert_close(_embed(module.net.eval()), want)
    assert model_fingerprint(module.net) == model_fingerprint(model)


def test_loading_never_reads_the_pretrained_file_and_says_nothing_about_random_weights(
    tmp_path: Path,
) -> None:
    backbone_file = tmp_path / "backbone.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DinoV2Backbone(preset="tiny", image_size=(112, 56)).save(backbone_file)
    torch.manual_seed(0)
    model = BigGait(**{**TINY, "pretrained": str(backbone_file)}).eval()
    ckpt = export_lightning_checkpoint(model, tmp_path / "m.ckpt")
    backbone_file.rename(tmp_path / "moved.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither "NO pretrained weights" nor any other warning
        loaded = load_model(ckpt)
        official = tmp_path / "official.pt"
        torch.save({"model": export_opengait_state_dict(model)}, official)
        load_opengait_checkpoint(official, image_size=(112, 56), map_size=(32, 16))
    torch.testing.assert_close(_embed(loaded), _embed(model))


# ------------------------------------------------------------------------------ bad and hostile files
def _lightning(tmp_path: Path, name: str, **blob) -> Path:
    path = tmp_path / name
    torch.save(blob, path)
    return path


@pytest.fixture()
def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = export_lightning_checkpoint(tiny_model(), tmp_path / "good.ckpt").read_bytes()
    text = tmp_path / "notes.ckpt"
    text.write_text("this is not a checkpoint\n")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good[: len(good) // 2])
    hostile, _ = _hostile(tmp_path, lambda evil: {"state_dict": {}, "hyper_parameters": evil})
    other = _lightning(
        tmp_path,
        "other.ckpt",
        state_dict={"net.fc.weight": torch.zeros(2, 2)},
        hyper_parameters={"net": TINY},
    )
    bare = _lightning(tmp_path, "bare.ckpt", state_dict={"net.fc.weight": torch.zeros(2, 2)})
    return {
        "text": (text, "neither a zip archive nor a pickle"),
        "truncated": (truncated, "truncated or corrupt"),
        "code": (hostile, "refused unopened"),
        "architecture": (other, "not a BigGait of the architecture"),
        "no_hyper_parameters": (bare, "no hyper_parameters"),
    }


@pytest.mark.parametrize("case", ["text", "truncated", "code", "architecture", "no_hyper_parameters"])
def test_bad_checkpoint_is_one_error_naming_the_file(case: str, bad_files) -> None:
    path, why = bad_files[case]
    for loader in (load_model, validate_checkpoint):
        with pytest.raises(CheckpointError) as err:
            loader(path)
        message = str(err.value)
        assert str(path) in message and why in message and "\n" not in message, message


LOADERS = {
    "load_model": lambda p: load_model(p),
    "validate_checkpoint (make eval, ckpt_path=)": lambda p: validate_checkpoint(p),
    "load_opengait_checkpoint (import CLI)": lambda p: load_opengait_checkpoint(p),
    "backbone pretrained=<file>": lambda p: DinoV2Backbone(
        preset="tiny", image_size=(112, 56), pretrained=str(p)
    ),
    "BigGait.load_mask_branch": lambda p: tiny_model().load_mask_branch(p),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("layout", ["lightning", "opengait"])
def test_every_loader_refuses_a_code_carrying_pickle_without_running_it(
    loader: str, layout: str, tmp_path: Path
) -> None:
    wrap = (
        (lambda e: {"state_dict": {}, "hyper_parameters": e})
        if layout == "lightning"
        else (lambda e: {"model": e})
    )
    path, marker = _hostile(tmp_path, wrap)
    with pytest.raises(Exception) as err:  # noqa: B017 - each loader has its own error type; none may run the code
        LOADERS[loader](path)
    assert "Weights only load failed" in str(err.value) or "refused unopened" in str(err.value), str(
        err.value
    )
    assert not marker.exists(), "the pickle's code ran"


def test_gallery_loader_refuses_a_pickled_object_array(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "gallery.npz"
    evil = np.empty(1, dtype=object)
    evil[0] = _RunsCode(marker)
    np.savez(path, format=np.str_("biggait-gallery/1"), model=np.str_("x"), embeddings=evil,
             labels=np.array(["a"]), identities=np.array(["a"]), sources=np.array(["a"]))  # fmt: skip
    with pytest.raises(GalleryError, match="gallery.npz"):
        load_gallery(path)
    assert not marker.exists()


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize("entry", ["eval", "train", "import"])
def test_clis_turn_a_bad_checkpoint_into_one_error_line(
    entry: str, bad_files, tiny_shards: Path, tmp_path: Path
) -> None:
    case = {"eval": "text", "train": "code", "import": "truncated"}[entry]
    path, why = bad_files[case]
    hydra = [f"data.root={tiny_shards}", "logger=none", "data_prep=none", f"hydra.run.dir={tmp_path / 'run'}"]
    args = {
        "eval": ["-m", "biggait.eval", f"ckpt_path={path}", *hydra],
        "train": ["-m", "biggait.train", f"ckpt_path={path}", *hydra],
        "import": ["-m", "biggait.compat.opengait", str(path), str(tmp_path / "out.ckpt")],
    }[entry]
    run = _run(*args, cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and str(path) in errors[0] and why in errors[0], run.stderr[-2000:]
    assert "Traceback" not in run.stderr
