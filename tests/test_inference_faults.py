"""Fault injection for inference inputs: broken and hostile checkpoints, videos, tracks files, frames folders,
gallery `.npz` files, output paths and options, through the real `embed` / `identify` / `export` CLIs.

Every case ends one of three ways (docs/reliability.md, issue #22): OK, OK with the bad part counted (a
`warning:` line saying how many frames were skipped), or exit status 2 with exactly one `error:` line naming
the thing, no traceback, and no output file written or replaced.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from biggait.compat.opengait import export_lightning_checkpoint
from biggait.embed import main as embed_main
from biggait.export import main as export_main
from biggait.gallery import GALLERY_FORMAT, read_gallery_model
from biggait.identify import main as identify_main
from test_checkpoint import tiny_model

CKPT = "model.ckpt"


# ------------------------------------------------------------------------------------------ helpers
def png(width: int, height: int, *, valid: bool = False) -> bytes:
    """A PNG declaring width x height; `valid` makes its pixel data real (all black), else a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = (b"\0" + b"\0" * 3 * width) * height if valid else b"\0" * 64
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def write_frames(folder: Path, n: int = 3, seed: int = 0, size: tuple[int, int] = (90, 40)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        cv2.imwrite(str(folder / f"{k:04d}.png"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return folder


def write_video(path: Path, n: int, size: tuple[int, int] = (120, 160), codec: str = "MJPG") -> Path:
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), 10, (w, h))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(n):
        writer.write(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    writer.release()
    return path


def run(main: Callable, args: list, capsys) -> tuple[int, str, str]:
    """A CLI `main` in process: (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_error(result: tuple[int, str, str], *patterns: str) -> str:
    code, _, err = result
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert all(p in errors[0] for p in patterns), errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return export_lightning_checkpoint(tiny_model(), tmp_path_factory.mktemp("model") / CKPT)


@pytest.fixture(scope="module")
def gallery(ckpt: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gallery")
    out = root / "g.npz"
    assert (
        embed_main([str(ckpt), str(write_frames(root / "walk")), "--out", str(out), "--device", "cpu"]) == 0
    )
    return out


# ------------------------------------------------------------------------------------------ checkpoints
def _lightning(path: Path, *, net: dict | None = None, state: dict | None = None) -> Path:
    base = tiny_model()
    blob = {
        "hyper_parameters": {"net": {**base.config, **(net or {})}},
        "state_dict": state if state is not None else {f"net.{k}": v for k, v in base.state_dict().items()},
    }
    torch.save(blob, path)
    return path


def _nan_weights(path: Path) -> Path:
    state = {f"net.{k}": v.clone() for k, v in tiny_model().state_dict().items()}
    state["net.head.fcs.weight"].fill_(float("nan"))
    return _lightning(path, state=state)


CHECKPOINT_FAULTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    # 2 KB files whose options claim a model of gigabytes: refused before anything is built
    "huge_backbone": (
        lambda p: _lightning(
            p,
            net={"backbone": None, "backbone_width": 16384, "backbone_depth": 48, "backbone_heads": 64},
            state={},
        ),
        "backbone_width",
    ),
    "num_classes_1e10": (lambda p: _lightning(p, net={"num_classes": 1e10}, state={}), "num_classes"),
    "huge_frame_size": (lambda p: _lightning(p, net={"frame_size": [100000, 50000]}), "frame_size"),
    "bool_as_int": (lambda p: _lightning(p, net={"parts": True}), "parts"),
    "nan_weights": (_nan_weights, "NaN"),
    "non_tensor_weight": (
        lambda p: _lightning(p, state={"net.head.fcs.weight": [1, 2, 3]}),
        "head.fcs.weight is a list",
    ),
    "official_non_tensor": (
        lambda p: torch.save({"model": {"backbone.cls_token": 3}}, p) or p,
        "not a tensor",
    ),
}


@pytest.mark.parametrize("fault", sorted(CHECKPOINT_FAULTS))
def test_checkpoint_faults_are_one_error_line_in_embed_and_export(
    fault: str, tmp_path: Path, capsys, ckpt: Path
) -> None:
    make, pattern = CHECKPOINT_FAULTS[fault]
    bad = make(tmp_path / "bad.ckpt")
    frames = write_frames(tmp_path / "walk")
    out = tmp_path / "g.npz"
    assert_one_error(run(embed_main, [bad, frames, "--out", out, "--device", "cpu"], capsys), pattern)
    assert not out.exists()
    good = tmp_path / "good.pt2"
    good.write_bytes(b"a good export from before")
    assert_one_error(run(export_main, [bad, "--torch-export", good], capsys), pattern)
    assert good.read_bytes() == b"a good export from before"  # a failed export never replaces a good file


# ------------------------------------------------------------------------------------------ footage
def _truncated_video(tmp: Path) -> list:
    video = write_video(tmp / "walk.avi", 12)
    data = video.read_bytes()
    video.write_bytes(data[: int(len(data) * 0.5)])
    return [video]


def _folder_with(tmp: Path, name: str, data: bytes, good: int = 3) -> list:
    folder = write_frames(tmp / "walk", good)
    (folder / name).write_bytes(data)
    return [folder]


def _truncated_jpeg(tmp: Path) -> list:
    ok, buf = cv2.imencode(".jpg", np.random.default_rng(1).integers(0, 256, (90, 40, 3), dtype=np.uint8))
    return _folder_with(tmp, "0009.jpg", buf.tobytes()[:-400])


def _tracked(tmp: Path, text: str, n: int = 6) -> list:
    video = write_video(tmp / "scene.avi", n)
    (tmp / "scene.txt").write_text(text)
    return [video, "--tracks", tmp / "scene.txt"]


def _tracks_text(first: str = "1", x: str = "10", ident: str = "1") -> str:
    return f"{first},{ident},{x},10,20,50,1,-1,-1,-1\n" + "".join(
        f"{f},1,10,10,20,50,1,-1,-1,-1\n" for f in range(2, 6)
    )


# name -> (inputs, expected): an int = OK with that many frames counted as skipped, a str = the error pattern
FOOTAGE_FAULTS: dict[str, tuple[Callable[[Path], list], int | str]] = {
    "truncated_video": (_truncated_video, -1),  # some frames lost, counted
    "junk_video": (
        lambda t: [t / "junk.mp4"] if (t / "junk.mp4").write_bytes(os.urandom(4096)) else [],
        "junk.mp4",
    ),
    "empty_video": (lambda t: [t / "e.avi"] if (t / "e.avi").write_bytes(b"") is not None else [], "e.avi"),
    "oversized_png_header": (lambda t: _folder_with(t, "0009.png", png(40000, 40000)), 1),
    "only_an_oversized_frame": (
        lambda t: _folder_with(t, "0000.png", png(40000, 40000), good=0),
        "40000x40000",
    ),
    "wide_frame_65535x1": (lambda t: _folder_with(t, "0009.png", png(65535, 1, valid=True)), 0),
    "truncated_jpeg": (_truncated_jpeg, 1),
    "text_as_frame": (lambda t: _folder_with(t, "0009.png", b"hello"), 1),
    "empty_folder": (lambda t: [t / "empty"] if (t / "empty").mkdir() is None else [], "holds no frames"),
    "mot_fractional_frame": (lambda t: _tracked(t, _tracks_text(first="1.9")), "line 1: frame '1.9'"),
    "mot_inf_field": (lambda t: _tracked(t, _tracks_text(x="inf")), "line 1"),
    "mot_1e308_field": (lambda t: _tracked(t, _tracks_text(x="1e308")), "line 1"),
    "mot_inf_id": (lambda t: _tracked(t, _tracks_text(ident="inf")), "line 1: track id"),
    "mot_huge_frame": (lambda t: _tracked(t, _tracks_text(first="1e300")), "line 1"),
    "mot_binary": (lambda t: _tracked(t, "\x00\xff\xfe garbage\n"), "scene.txt"),
    "mot_duplicate_box": (
        lambda t: _tracked(t, _tracks_text() + "3,1,1,1,20,40,1\n"),
        "two boxes in frame 3",
    ),
    "mot_beyond_video": (lambda t: _tracked(t, _tracks_text() + "99,1,1,1,20,40,1\n"), "has only 6 frames"),
    "mot_outside_frame": (lambda t: _tracked(t, "1,1,900,900,20,40,1\n"), "lies outside"),
    "tracks_with_a_folder": (lambda t: [write_frames(t / "w"), "--tracks", t / "x.txt"], "goes with a video"),
}


@pytest.mark.parametrize("fault", sorted(FOOTAGE_FAULTS))
def test_footage_faults_are_ok_counted_or_one_error_line(
    fault: str, tmp_path: Path, capsys, ckpt: Path
) -> None:
    make, expected = FOOTAGE_FAULTS[fault]
    inputs = make(tmp_path)
    out = tmp_path / "g.npz"
    result = run(embed_main, [ckpt, *inputs, "--out", out, "--device", "cpu"], capsys)
    if isinstance(expected, str):
        assert_one_error(result, expected)
        assert not out.exists()
        return
    code, stdout, err = result
    assert code == 0 and "Traceback" not in err and "error:" not in err, err[-3000:]
    assert out.exists()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    if expected == 0:
        assert not warnings, err
    else:
        assert len(warnings) == 1, err
        count = int(warnings[0].split()[1])
        assert count == expected if expected > 0 else count > 0, warnings[0]
        assert f"{count} unusable frames skipped" in stdout


# ------------------------------------------------------------------------------------------ gallery files
def _npz(path: Path, **arrays) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    return path


def _gallery_arrays(embeddings: np.ndarray, model: str) -> dict:
    n = embeddings.shape[0]
    return dict(
        format=np.str_(GALLERY_FORMAT),
        model=np.str_(model),
        embeddings=embeddings,
        labels=np.asarray(["a"] * n),
        identities=np.asarray(["a"] * n),
        sources=np.asarray(["a"] * n),
    )


def _terabyte_header(path: Path, model: str) -> Path:
    """A valid .npz whose embeddings header claims [10**9, 256, 16] float32 (16 TB) over a few bytes."""
    _npz(path, **_gallery_arrays(np.zeros((1, 2, 2), np.float32), model))
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 256, 16), }"
    header += b" " * (118 - len(header)) + b"\n"
    members["embeddings.npy"] = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 64
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


# each maker gets the path and the fingerprint of the good side's model (so that only the fault can fail)
GALLERY_FAULTS: dict[str, tuple[Callable[[Path, str], Path], str]] = {
    "terabyte_array_header": (_terabyte_header, "claims"),
    "zero_dimension": (
        lambda p, m: _npz(p, **_gallery_arrays(np.zeros((2, 0, 16), np.float32), m)),
        "empty dimension",
    ),
    "directory": (lambda p, m: p if p.mkdir() is None else p, "is a directory"),
    "text_file": (lambda p, m: p if p.write_text("id,embedding\n1,0.5\n") else p, "not a zip archive"),
    "missing": (lambda p, m: p, "does not exist"),
}


@pytest.mark.parametrize("role", ["gallery", "probes"])
@pytest.mark.parametrize("fault", sorted(GALLERY_FAULTS))
def test_gallery_file_faults_are_one_error_line_naming_its_role(
    fault: str, role: str, tmp_path: Path, capsys, gallery: Path
) -> None:
    make, pattern = GALLERY_FAULTS[fault]
    bad = make(tmp_path / "bad.npz", read_gallery_model(gallery))
    args = [bad, gallery] if role == "gallery" else [gallery, bad]
    line = assert_one_error(run(identify_main, args, capsys), pattern, f"{role} {bad}")
    assert "pickle" not in line


# ------------------------------------------------------------------------------------------ output paths
def _under_a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("x")
    return tmp / "afile" / "out.npz"


OUTPUT_FAULTS: dict[str, Callable[[Path], Path]] = {
    "a_directory": lambda t: t,
    "under_a_file": _under_a_file,
    "in_proc": lambda t: Path("/proc/biggait_out.npz"),
}


@pytest.mark.parametrize("fault", sorted(OUTPUT_FAULTS))
def test_unwritable_outputs_are_refused_before_any_work(
    fault: str, tmp_path: Path, capsys, ckpt: Path, gallery: Path
) -> None:
    out = OUTPUT_FAULTS[fault](tmp_path)
    frames = write_frames(tmp_path / "walk")
    # the model path does not exist: only a check made before loading it can name the output
    assert_one_error(
        run(embed_main, [tmp_path / "nowhere.ckpt", frames, "--out", out], capsys), "--out", str(out)
    )
    assert_one_error(run(identify_main, [gallery, gallery, "--json", out], capsys), "--json", str(out))
    assert_one_error(run(export_main, [ckpt, "--torch-export", out], capsys), "--torch-export", str(out))


# ------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--threshold", "nan"], "--threshold"),
        (["--threshold", "-1"], "--threshold"),
        (["--threshold", "inf"], "--threshold"),
        (["--top-k", "0"], "--top-k"),
    ],
)
def test_invalid_identify_options_are_refused(args: list, pattern: str, capsys, gallery: Path) -> None:
    assert_one_error(run(identify_main, [gallery, gallery, *args], capsys), pattern)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--max-frames", "0"], "--max-frames"),
        (["--batch-frames", "0"], "--batch-frames"),
        (["--device", "nonsense"], "--device"),
        (["--device", "cuda:7"], "--device"),
    ],
)
def test_invalid_embed_options_are_refused(
    args: list, pattern: str, tmp_path: Path, capsys, ckpt: Path
) -> None:
    if "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    out = tmp_path / "g.npz"
    assert_one_error(
        run(embed_main, [ckpt, write_frames(tmp_path / "w"), "--out", out, *args], capsys), pattern
    )
    assert not out.exists()


@pytest.mark.parametrize("tolerance", ["nan", "-1"])
def test_export_refuses_a_tolerance_it_cannot_check(
    tolerance: str, tmp_path: Path, capsys, ckpt: Path
) -> None:
    out = tmp_path / "m.pt2"
    assert_one_error(
        run(export_main, [ckpt, "--torch-export", out, "--tolerance", tolerance], capsys), "--tolerance"
    )
    assert not out.exists()


def test_the_importer_checks_its_output_before_reading_the_checkpoint(tmp_path: Path, capsys) -> None:
    from biggait.compat.opengait import main as import_main

    line = assert_one_error(
        run(import_main, [tmp_path / "nowhere.pt", tmp_path], capsys), "output", str(tmp_path)
    )
    assert "is a directory" in line


def test_the_importer_names_a_mismatched_official_checkpoint_in_one_line(tmp_path: Path, capsys) -> None:
    from biggait.compat.opengait import export_opengait_state_dict
    from biggait.compat.opengait import main as import_main

    state = export_opengait_state_dict(tiny_model())
    del state[next(k for k in sorted(state) if k.endswith("running_var"))]
    torch.save({"model": state}, tmp_path / "official.pt")
    out = tmp_path / "out.ckpt"
    args = [
        tmp_path / "official.pt",
        out,
        "--image-size",
        "112x56",
        "--map-size",
        "32x16",
        "--frame-size",
        "64x32",
    ]
    assert_one_error(run(import_main, args, capsys), "missing tensors (1)")
    assert not out.exists()
