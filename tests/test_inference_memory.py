"""Memory set by design, never by the input (issue #22): peak RSS of the real `embed` CLI in a child process.

Each measurement runs the CLI under a small wrapper process whose only child it is, so
`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` is that CLI's own peak, not the largest child pytest ever had.
Limits are relative to a baseline run of the same CLI on a three-frame folder (what importing torch and
loading the model cost), so they hold on any machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from biggait.compat.opengait import export_lightning_checkpoint
from test_checkpoint import tiny_model
from test_inference_faults import png, write_frames

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
# a hostile input may cost at most this much more than the baseline (the old code: 2.6 to 9.3 GB more)
SLACK = 150 * MiB

_WRAPPER = (
    "import resource, subprocess, sys\n"
    "proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stderr.write(proc.stderr)\n"
    "print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
)


def peak_rss(*args: object) -> tuple[int, int, str]:
    """(exit status, peak RSS in bytes, stderr) of `python -m biggait.embed *args` in a fresh child."""
    cmd = [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "biggait.embed", *map(str, args)]
    env = os.environ | {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    code, rss = proc.stdout.split()[-2:]
    return int(code), int(rss), proc.stderr


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return export_lightning_checkpoint(tiny_model(), tmp_path_factory.mktemp("model") / "model.ckpt")


@pytest.fixture(scope="module")
def baseline(ckpt: Path, tmp_path_factory) -> int:
    root = tmp_path_factory.mktemp("baseline")
    code, rss, err = peak_rss(ckpt, write_frames(root / "walk"), "--out", root / "g.npz", "--device", "cpu")
    assert code == 0, err
    return rss


def test_hostile_model_options_cost_no_memory(ckpt: Path, baseline: int, tmp_path: Path) -> None:
    """A 2 KB checkpoint claiming a 16384-wide, 48-deep backbone: refused from its options (was 9.3 GB)."""
    import torch

    bad = tmp_path / "huge.ckpt"
    net = {**tiny_model().config, "backbone": None, "backbone_width": 16384, "backbone_depth": 48}
    torch.save({"hyper_parameters": {"net": net}, "state_dict": {}}, bad)
    assert bad.stat().st_size < 4096
    code, rss, err = peak_rss(
        bad, write_frames(tmp_path / "walk"), "--out", tmp_path / "g.npz", "--device", "cpu"
    )
    assert code == 2 and err.startswith("error:") and "backbone_width" in err, err
    print(f"peak RSS: baseline {baseline / MiB:.0f} MiB, hostile checkpoint {rss / MiB:.0f} MiB")
    assert rss < baseline + SLACK, (rss / MiB, baseline / MiB)


def test_frames_declaring_absurd_sizes_cost_no_memory(ckpt: Path, baseline: int, tmp_path: Path) -> None:
    """Valid 65535 x 1 and 1,000,000 x 1 frames (a few hundred bytes each) are embedded within the baseline
    (were 4.6 GB, and a 49 GB allocation and a traceback); a 40000 x 40000 header is skipped and counted."""
    folder = write_frames(tmp_path / "walk")
    (folder / "0007.png").write_bytes(png(65535, 1, valid=True))
    (folder / "0008.png").write_bytes(png(1_000_000, 1, valid=True))
    (folder / "0009.png").write_bytes(png(40000, 40000))
    code, rss, err = peak_rss(ckpt, folder, "--out", tmp_path / "g.npz", "--device", "cpu")
    assert code == 0 and "Traceback" not in err, err
    assert "warning: 1 frames could not be used" in err and "40000x40000" in err, err
    print(f"peak RSS: baseline {baseline / MiB:.0f} MiB, absurd frame headers {rss / MiB:.0f} MiB")
    assert rss < baseline + SLACK, (rss / MiB, baseline / MiB)


def _scene(path: Path, frames: int, *, size: tuple[int, int] = (480, 640)) -> Path:
    """A mostly static MJPG scene video and its tracks file: two walkers, 300 x 400 boxes, in every frame."""
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (w, h))
    rng = np.random.default_rng(0)
    background = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for t in range(frames):
        frame = background.copy()
        frame[40:440, 20 + t % 50 : 320 + t % 50] //= 2
        writer.write(frame)
    writer.release()
    lines = [
        f"{t},{tid},{x},40,300,400,1,-1,-1,-1" for t in range(1, frames + 1) for tid, x in ((1, 0), (2, 320))
    ]
    path.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_footage_length_does_not_decide_memory(ckpt: Path, baseline: int, tmp_path: Path) -> None:
    """A 500-frame 640x480 video of one person and one with two tracks, `--max-frames` applied while reading:
    peak RSS as for a 20-frame one (the old code held every frame and every crop: +0.35 to 0.4 GB here). Both use
    16-frame batches: the batch, not the footage, sets the activations' size."""
    short, long = _scene(tmp_path / "short.avi", 20), _scene(tmp_path / "long.avi", 500)
    rss = {}
    for name, video in (("short", short), ("long", long)):
        for mode, extra in (
            ("tracks", ["--tracks", video.with_suffix(".txt"), "--max-frames", "15"]),
            ("plain", []),
        ):
            out = tmp_path / f"{name}-{mode}.npz"
            args = [*extra, "--out", out, "--device", "cpu", "--batch-frames", "16"]
            code, rss[name, mode], err = peak_rss(ckpt, video, *args)
            assert code == 0, err
    print("peak RSS MiB:", {f"{k[0]}-{k[1]}": round(v / MiB) for k, v in rss.items()})
    for mode in ("tracks", "plain"):
        assert rss["long", mode] < rss["short", mode] + 40 * MiB, {k: v / MiB for k, v in rss.items()}


@pytest.mark.slow
def test_a_two_million_line_tracks_file_is_parsed_in_bounded_memory(tmp_path: Path) -> None:
    """65 MB of valid MOT lines become 56 bytes a line of arrays (the old dict-of-dicts reader held ~1 GB and
    every crop of every box; with a short video it ran past 10 GB)."""
    tracks = tmp_path / "big.txt"
    with tracks.open("w") as f:
        for start in range(0, 2_000_000, 100_000):
            f.writelines(
                f"{1 + i % 500},{i // 500},{i % 97}.5,20,30.25,60,0.9,-1,-1,-1\n"
                for i in range(start, start + 100_000)
            )
    code = "import sys; from pathlib import Path; from biggait.tracks import parse_tracks\n"
    base = [sys.executable, "-c", _WRAPPER, sys.executable, "-c", code]
    parse = [
        *base[:-1],
        code + "t = parse_tracks(Path(sys.argv[1])); assert len(t.frames) == 2_000_000",
        str(tracks),
    ]
    rss = {}
    for name, cmd in (("import", base), ("parse", parse)):
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        status, rss[name] = (int(v) for v in proc.stdout.split()[-2:])
        assert status == 0, proc.stderr
    assert tracks.stat().st_size > 60 * MiB
    print("peak RSS MiB:", {k: round(v / MiB) for k, v in rss.items()})
    assert rss["parse"] < rss["import"] + 300 * MiB, {k: v / MiB for k, v in rss.items()}
