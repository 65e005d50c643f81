"""Streaming embedding and what it promises besides memory (issue #22): identities and spans of tracks, the
progress bar, NaN refused at the source, outputs that keep their file mode and are replaced only by a checked
file, console-script names, the export extras, Ctrl-C."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from biggait.cli import main as cli_main
from biggait.compat.opengait import export_lightning_checkpoint
from biggait.embed import embed_inputs
from biggait.errors import ConfigError
from biggait.export import export_torch
from biggait.gallery import Gallery, load_gallery
from biggait.inference import SequencePooler
from biggait.io import atomic_write_bytes
from biggait.models import BigGait
from biggait.sources import discover_inputs
from test_checkpoint import TINY, tiny_model
from test_inference_faults import write_frames, write_video

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> BigGait:
    return tiny_model()


def _scene(tmp: Path) -> tuple[Path, Path]:
    video = write_video(tmp / "street.avi", 8)
    lines = [f"{f},3,10,10,30,60,1,-1,-1,-1" for f in range(2, 7)] + [f"{f},9,80,20,30,70,1" for f in (4, 5)]
    (tmp / "street.txt").write_text("\n".join(lines) + "\n")
    return video, tmp / "street.txt"


def test_tracks_of_a_scene_are_unknown_people_with_their_track_and_frame_span(
    model: BigGait, tmp_path: Path
) -> None:
    video, tracks = _scene(tmp_path)
    g = embed_inputs(model, [video], tracks=tracks, device="cpu")
    assert g.labels == ["street/3", "street/9"]
    assert g.identities == ["unknown", "unknown"]  # not the video's name: a scene does not say who walks
    assert g.sources == [f"{video}#track=3&frames=2-6", f"{video}#track=9&frames=4-5"]
    limited = embed_inputs(model, [video], tracks=tracks, device="cpu", max_frames=2, identity="suspect")
    assert limited.identities == ["suspect", "suspect"]
    assert limited.sources[0] == f"{video}#track=3&frames=2-3"  # --max-frames: the first two of the track
    # one decoding pass for every track gives what each track's own crops give
    for row, seq in enumerate(discover_inputs(video, tracks=tracks)):
        alone = embed_inputs(model, [write_crops(tmp_path / f"t{row}", seq.read())], device="cpu")
        np.testing.assert_allclose(g.embeddings[row], alone.embeddings[0], rtol=1e-4, atol=1e-5)


def write_crops(folder: Path, crops: list[np.ndarray]) -> Path:
    import cv2

    folder.mkdir(parents=True)
    for k, crop in enumerate(crops):
        cv2.imwrite(str(folder / f"{k:04d}.png"), np.ascontiguousarray(crop[..., ::-1]))
    return folder


def test_streamed_windows_equal_one_pass(model: BigGait) -> None:
    """A sequence fed frame by frame among other sequences' frames (as tracks arrive) embeds as in one pass."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (n, 64, 32, 3), dtype=np.uint8) for n in (5, 3)]
    ratios = [np.full(len(f), 0.4, np.float32) for f in frames]
    whole = {}
    for i in range(2):
        pooler = SequencePooler(model, batch_frames=64, device=torch.device("cpu"))
        whole[i] = dict(pooler.add(i, frames[i], ratios[i]) + pooler.finish())[i]
    pooler = SequencePooler(model, batch_frames=2, device=torch.device("cpu"))
    out = {}
    for t in range(5):
        for i in range(2):
            if t < len(frames[i]):
                out.update(pooler.extend(i, frames[i][t : t + 1], ratios[i][t : t + 1]))
            if t == len(frames[i]) - 1:
                out.update(pooler.close(i))
    out.update(pooler.finish())
    for i in range(2):
        torch.testing.assert_close(out[i], whole[i], rtol=1e-4, atol=1e-5)


def test_progress_bar_counts_frames_and_sequences(model: BigGait, tmp_path: Path, capsys) -> None:
    write_frames(tmp_path / "tree" / "a", 3)
    write_frames(tmp_path / "tree" / "b", 4)
    embed_inputs(model, [tmp_path / "tree"], device="cpu", progress=True)
    err = capsys.readouterr().err
    assert "7/7" in err and "frame" in err and "sequences=2/2" in err, err


def test_nan_embeddings_are_refused_at_the_source(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        broken = BigGait(**TINY).eval()
    with torch.no_grad():
        broken.head.fcs.weight.fill_(float("nan"))
    with pytest.raises(ConfigError, match="NaN or inf"):
        embed_inputs(broken, [write_frames(tmp_path / "walk")], device="cpu")


# ------------------------------------------------------------------------------------------ outputs
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_keep_the_replaced_files_mode_else_the_umasks(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        new = atomic_write_bytes(tmp_path / "new.bin", b"1")
        assert _mode(new) == 0o644  # what open() gives under the umask, not mkstemp's 0600
        os.umask(0o027)
        assert _mode(atomic_write_bytes(tmp_path / "group.bin", b"1")) == 0o640
        shared = tmp_path / "shared.npz"
        shared.write_bytes(b"old")
        shared.chmod(0o664)
        Gallery(np.zeros((1, 2, 2), np.float32), ["a"], ["a"], ["a"], "m").save(shared)
        assert _mode(shared) == 0o664 and load_gallery(shared).labels == ["a"]
    finally:
        os.umask(old)


def test_a_failed_export_check_never_replaces_the_file(model: BigGait, tmp_path: Path) -> None:
    good = tmp_path / "model.pt2"
    good.write_bytes(b"a good export")

    def refuse(tmp: Path) -> None:
        assert tmp.exists() and tmp != good  # checked complete, before the rename
        raise ValueError("check failed")

    with pytest.raises(ValueError, match="check failed"):
        export_torch(model, good, verify=refuse)
    assert good.read_bytes() == b"a good export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2"]  # no temporary left behind


# ------------------------------------------------------------------------------------------ the console script
def test_console_script_names_itself_and_has_export(capsys) -> None:
    for command in ("embed", "identify", "export"):
        with pytest.raises(SystemExit):
            cli_main([command, "--help"])
        assert capsys.readouterr().out.startswith(f"usage: biggait {command} "), command
    cli_main(["--help"])
    assert "  export " in capsys.readouterr().out


def test_onnx_export_without_the_extras_names_them(model: BigGait, tmp_path: Path) -> None:
    ckpt = export_lightning_checkpoint(model, tmp_path / "m.ckpt")
    code = (
        "import sys; sys.modules['onnxscript'] = None\n"  # as in an install without biggait[export]
        "from biggait.export import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ckpt), "--onnx", str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error:") and "pip install 'biggait[export]'" in proc.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_ctrl_c_is_one_error_line_and_writes_nothing(model: BigGait, tmp_path: Path) -> None:
    ckpt = export_lightning_checkpoint(model, tmp_path / "m.ckpt")
    # long enough that the interrupt lands mid-run on a fast, quiet machine too (400 frames once took < 1 s)
    frames = write_frames(tmp_path / "long", 3000, size=(64, 32))
    out = tmp_path / "g.npz"
    args = [
        str(ckpt),
        str(frames),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--precision",
        "auto",
        "--batch-frames",
        "2",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "biggait.embed", *args],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        # a suite started in the background (`cmd &` without job control) ignores SIGINT, and so would the child
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    line = proc.stderr.readline()  # "precision auto -> ...": the model is loaded, embedding starts
    assert line.startswith("precision auto"), line
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, err
    assert err.strip().splitlines() == [
        "error: interrupted (Ctrl-C); outputs not yet written were not written"
    ]
    assert not out.exists()


def test_shards_and_manifests_are_readable_by_others_under_the_usual_umask(tmp_path: Path) -> None:
    """Shards published for other nodes or users of a shared cluster: mkstemp's 0600 made them unreadable."""
    from conftest import write_tiny_dataset

    old = os.umask(0o022)
    try:
        root = write_tiny_dataset(tmp_path / "data", train_ids=2, test_ids=2)
    finally:
        os.umask(old)
    written = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".tar" for p in written) and any(p.name == "manifest.json" for p in written)
    assert {_mode(p) for p in written} == {0o644}
