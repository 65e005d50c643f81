"""`biggait annotate` on the synthetic scene video: the MOT output read back names the right walkers, the drawn
boxes carry each identity's colour, the contact sheet has a row per track, and the open-set decision turns a
walker who is not enrolled into "unknown"."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from biggait.annotate import annotate, identity_colour
from biggait.compat.opengait import export_lightning_checkpoint
from biggait.data_prep.synthetic import SyntheticConfig, write_scene_video
from biggait.embed import embed_inputs
from biggait.gallery import Gallery
from biggait.models import BigGait
from test_checkpoint import TINY

CFG = SyntheticConfig(num_train_ids=1, num_test_ids=2, views=(30, 90), frame_size=(64, 32), canvas=96)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, Path, object]:
    folder = tmp_path_factory.mktemp("scene")
    s = write_scene_video(folder / "scene.mkv", cfg=CFG, walkers=2, length=36, size=(112, 200))
    return folder / "scene.mkv", folder / "scene.txt", s


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = BigGait(**TINY).eval()
    from biggait import load_model

    return load_model(export_lightning_checkpoint(net, tmp_path_factory.mktemp("m") / "tiny.ckpt"))


def _gallery(model, video: Path, tracks: Path, tmp: Path, keep: set[int] | None = None) -> Path:
    """The walkers enrolled from the same windows of the scene under a name per track (`walker-<id>`)."""
    g = embed_inputs(model, [video], tracks=tracks, window=8, stride=4, device="cpu")
    tids = [int(label.split("@")[0].rsplit("/", 1)[1]) for label in g.labels]
    rows = [i for i, t in enumerate(tids) if keep is None or t in keep]
    named = Gallery(g.embeddings, g.labels, [f"walker-{t}" for t in tids], g.sources, g.model).select(rows)
    return named.save(tmp / "gallery.npz")


def _mot(path: Path) -> list[tuple[int, int, str, float]]:
    rows = [line.split(",") for line in path.read_text().splitlines()]
    assert all(len(r) == 12 and r[6:10] == ["1", "-1", "-1", "-1"] for r in rows)
    return [(int(r[0]), int(r[1]), r[10], float(r[11])) for r in rows]


def test_annotated_outputs_name_the_walkers(model, scene, tmp_path: Path) -> None:
    video, tracks, s = scene
    gallery = _gallery(model, video, tracks, tmp_path)
    result = annotate(model, gallery, video, tracks, tmp_path / "out", window=8, stride=4, closed_set=True,
                      device="cpu")  # fmt: skip
    out = {k: Path(v) for k, v in result["outputs"].items()}
    mot = _mot(out["identities.txt"])
    assert [(f, t) for f, t, _, _ in mot] == sorted((f, t) for f, t, *_ in s.tracks)  # every box, once
    assert all(name == f"walker-{tid}" and dist < 1e-3 for _, tid, name, dist in mot)
    assert {t["identity"] for t in result["tracks"]} == {f"walker-{t}" for t in s.walkers}
    assert all(t["switches"] == 0 for t in result["tracks"])
    # the drawn box of each walker carries its identity's colour (the left edge, 2 px wide)
    cap = cv2.VideoCapture(str(out["annotated.mp4"]))
    frames = []
    while (ok_frame := cap.read())[0]:
        frames.append(ok_frame[1][..., ::-1])
    assert len(frames) == 36
    for frame, tid, x, y, _w, h in s.tracks[::7]:
        edge = frames[frame - 1][y + h // 3 : y + h - 2, x : x + 2].reshape(-1, 3).astype(float)
        colour = np.array(identity_colour(f"walker-{tid}"), float)
        assert np.abs(np.median(edge, 0) - colour).max() < 40, (frame, tid)
    sheet = cv2.imread(str(out["contact.png"]))
    assert sheet is not None and sheet.shape[0] == 2 * (96 + 14 + 4)  # one row per track


def test_a_walker_who_is_not_enrolled_is_unknown(model, scene, tmp_path: Path) -> None:
    video, tracks, s = scene
    enrolled, stranger = sorted(s.walkers)
    gallery = _gallery(model, video, tracks, tmp_path, keep={enrolled})
    result = annotate(model, gallery, video, tracks, tmp_path / "out", window=8, stride=4, threshold=1e-2,
                      device="cpu")  # fmt: skip
    names = {(tid, name) for _, tid, name, _ in _mot(Path(result["outputs"]["identities.txt"]))}
    assert names == {(enrolled, f"walker-{enrolled}"), (stranger, "unknown")}
