"""The synthetic world as raw footage: CCPG crop tree, wide scene video and its MOTChallenge tracks."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from biggait.data_prep import ccpg
from biggait.data_prep.layout import discover
from biggait.data_prep.synthetic import (
    SyntheticConfig,
    list_sequences,
    main,
    render_scene,
    render_sequence,
    write_raw_crops,
    write_scene_video,
)
from biggait.errors import ConfigError

# the CCPG converter's frame size, so the direct build and the converted tree can be compared frame by frame
CCPG_SIZED = SyntheticConfig(
    num_train_ids=2, num_test_ids=2, views=(30, 90), frame_size=(256, 128), length=(3, 4)
)
SCENE = dict(walkers=2, length=40, size=(192, 320))


def test_ccpg_converter_on_the_raw_crops_gives_the_direct_build(tmp_path: Path) -> None:
    specs = [s for s in list_sequences(CCPG_SIZED, "test") if s[1] in ("U0_D0", "U0_D0_BG")]
    write_raw_crops(tmp_path, CCPG_SIZED, specs=specs)
    found, ignored = discover(tmp_path, ccpg.LAYOUT)
    assert sorted((f.subject, f.seq_type, f.view) for f in found) == sorted(
        (f"{s[0]:03d}", s[1], CCPG_SIZED.view_name(s[2])) for s in specs
    )
    assert not any(ignored.values())
    for raw in found:
        converted = ccpg.load_sequence(raw)
        direct = render_sequence((int(raw.subject), raw.seq_type, int(raw.view.split("_")[1]), 0), CCPG_SIZED)
        assert converted.frames.shape == direct.frames.shape
        assert np.array_equal(converted.frames, direct.frames)  # exactly the same pixels
        assert np.array_equal(converted.ratios, direct.ratios)
    # the crops are the un-resized person crops: their aspect ratio is the recorded ratio
    first = sorted(
        (tmp_path / f"{specs[0][0]:03d}" / specs[0][1] / CCPG_SIZED.view_name(specs[0][2])).iterdir()
    )[0]
    h, w = cv2.imread(str(first)).shape[:2]
    assert w / h == pytest.approx(float(render_sequence(specs[0], CCPG_SIZED).ratios[0]), rel=1e-6)


def test_raw_crops_cli(tmp_path: Path) -> None:
    args = [
        "--raw-crops",
        str(tmp_path),
        "--train-ids",
        "1",
        "--test-ids",
        "1",
        "--views",
        "30",
        "90",
        "--length",
        "2",
        "2",
    ]
    assert main(args) == 0
    assert len(list(tmp_path.glob("001/*/*/*.png"))) == 7 * 2 * 2  # test id 001: 7 types x 2 views x 2 frames
    assert not list(tmp_path.glob("000"))  # the train identity is not written (--raw-split test)
    with pytest.raises(ConfigError, match="seqs_per_type"):
        write_raw_crops(tmp_path, SyntheticConfig(seqs_per_type=2))


def test_scene_is_deterministic_and_has_overlapping_walkers() -> None:
    a, b = render_scene(CCPG_SIZED, **SCENE), render_scene(CCPG_SIZED, **SCENE)
    assert np.array_equal(a.frames, b.frames) and a.tracks == b.tracks
    c = render_scene(CCPG_SIZED, **SCENE, seed=1)
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.shape == (40, 192, 320, 3)
    ids = {t[1] for t in a.tracks}
    assert ids == set(a.walkers) and len(ids) == 2
    assert all(a.walkers[i][0] == i and i >= CCPG_SIZED.num_train_ids for i in ids)  # test-split identities
    per_frame = collections.Counter(t[0] for t in a.tracks)
    assert max(per_frame.values()) >= 2  # two walkers in view at once
    assert min(t[0] for t in a.tracks) >= 1 and max(t[0] for t in a.tracks) <= 40  # 1-based frames


def test_track_boxes_contain_their_walkers() -> None:
    scene = render_scene(CCPG_SIZED, **SCENE)
    assert len(scene.tracks) > 20
    for frame, track, x, y, w, h in scene.tracks:
        ys, xs = np.nonzero(scene.labels[frame - 1] == track)
        assert len(ys) > 500  # the walker is there
        # inside the box read as 0-based pixels, and still inside read as 1-based (slack >= 2 px)
        for shift in (0, 1):
            assert (xs >= x - shift).all() and (xs < x + w - shift).all(), (frame, track)
            assert (ys >= y - shift).all() and (ys < y + h - shift).all(), (frame, track)
        assert x >= 0 and x + w <= 320 and y >= 0 and y + h <= 192


def test_scene_video_and_tracks_files(tmp_path: Path) -> None:
    scene = write_scene_video(tmp_path / "scene.mkv", cfg=CCPG_SIZED, **SCENE)
    lines = (tmp_path / "scene.txt").read_text().splitlines()
    assert len(lines) == len(scene.tracks)
    rows = [[int(v) for v in line.split(",")] for line in lines]
    assert all(len(r) == 10 and r[6:] == [1, -1, -1, -1] for r in rows)
    assert [tuple(r[:6]) for r in rows] == scene.tracks
    capture = cv2.VideoCapture(str(tmp_path / "scene.mkv"))
    decoded = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        decoded.append(bgr[..., ::-1])
    assert len(decoded) == 40
    assert np.abs(np.stack(decoded).astype(int) - scene.frames).mean() < 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.mkv", "scene.txt"]  # no temp files left


def test_scene_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="video suffix"):
        write_scene_video(tmp_path / "scene.gif", cfg=CCPG_SIZED, **SCENE)
    with pytest.raises(ConfigError, match="walkers"):
        render_scene(CCPG_SIZED, walkers=3)
    proc = subprocess.run(
        [sys.executable, "-m", "biggait.data_prep", "synthetic", "--scene-video", str(tmp_path / "v.gif")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1
