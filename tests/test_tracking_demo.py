"""Tracks without downloaded weights (MOG2 + motpy) follow a synthetic walker, and the real-clip demo runs end to
end on OpenCV's vtest.avi where Debian's opencv-doc is installed (`make vtest`; skipped otherwise)."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from biggait.compat.opengait import export_lightning_checkpoint
from biggait.data_prep.synthetic import SyntheticConfig, write_scene_video
from biggait.demo import VTEST, run_demo, split_tracks
from biggait.gallery import load_gallery
from biggait.models import BigGait
from biggait.sources import read_tracks
from test_checkpoint import TINY

pytest.importorskip("motpy", reason="the tracker is in the demo extra (pip install 'biggait[demo]')")

CFG = SyntheticConfig(num_train_ids=1, num_test_ids=1, views=(30, 90), frame_size=(64, 32), canvas=96)


def _iou(a: tuple, b: tuple) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


def test_tracks_follow_a_walker_of_the_synthetic_scene(tmp_path: Path) -> None:
    from biggait.tracking import track_video

    scene = write_scene_video(tmp_path / "scene.mkv", cfg=CFG, walkers=1, length=50, size=(112, 240))
    rows, frames = track_video(tmp_path / "scene.mkv", min_length=8, min_area=150)
    assert frames == 50 and rows
    truth = {f: (x, y, w, h) for f, _, x, y, w, h in scene.tracks}
    longest = max({r[1] for r in rows}, key=lambda t: sum(r[1] == t for r in rows))
    found = {f: (x, y, w, h) for f, t, x, y, w, h in rows if t == longest}
    common = sorted(set(found) & set(truth))
    assert len(common) >= len(truth) // 2  # the walker is tracked over most of its walk, as one track
    assert np.median([_iou(found[f], truth[f]) for f in common]) > 0.5
    first, second = split_tracks(rows)
    assert sorted(first + second) == sorted(rows) and max(r[0] for r in first if r[1] == longest) < min(
        r[0] for r in second if r[1] == longest
    )


@pytest.mark.slow
@pytest.mark.skipif(
    not VTEST.is_file(), reason=f"{VTEST} is absent: `make vtest` installs Debian's opencv-doc"
)
def test_vtest_clip_end_to_end(tmp_path: Path) -> None:
    """The first 200 frames of vtest.avi: tracks, enrol the first halves, identify and draw the second halves."""
    cap, writer = cv2.VideoCapture(str(VTEST)), None
    for _ in range(200):
        ok, bgr = cap.read()
        assert ok
        if writer is None:
            writer = cv2.VideoWriter(
                str(tmp_path / "clip.mkv"), cv2.VideoWriter_fourcc(*"FFV1"), 10, bgr.shape[1::-1]
            )
        writer.write(bgr)
    assert writer is not None
    writer.release()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BigGait(**TINY).eval()
    from biggait import load_model

    model = load_model(export_lightning_checkpoint(model, tmp_path / "tiny.ckpt"))
    s = run_demo(
        model, tmp_path / "clip.mkv", tmp_path / "out", min_length=16, window=8, stride=4, device="cpu"
    )
    assert s["frames"] == 200 and s["tracks"] >= 2
    enrolled = set(load_gallery(tmp_path / "out" / "gallery.npz").identities)
    second = read_tracks(tmp_path / "out" / "second_half.txt")
    names = [line.split(",") for line in (tmp_path / "out" / "clip.identities.txt").read_text().splitlines()]
    assert len(names) == sum(len(b) for b in second.values())  # every second-half box is named
    assert {n[10] for n in names} <= enrolled and enrolled == {f"track-{t}" for t in second}
    assert cv2.imread(s["outputs"]["contact.png"]).shape[0] == s["tracks"] * (96 + 14 + 4)
