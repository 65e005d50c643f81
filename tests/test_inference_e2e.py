"""A short-trained checkpoint used on footage: after its `pretrained` file moved it still evaluates and embeds,
identify's rank-1 per condition equals the evaluator's on the same split, and a scene video with two walkers
plus MOT tracks gives one embedding per track, each identified against a gallery of those walkers."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from biggait import load_model
from biggait.data_prep import synthetic
from biggait.data_prep.synthetic import SyntheticConfig
from biggait.embed import embed_inputs
from biggait.evaluation import PROTOCOLS
from biggait.gallery import Gallery
from biggait.identify import identify
from biggait.inference import embed_sequences
from biggait.models import DinoV2Backbone
from biggait.train import train
from biggait.viz import read_sequences
from test_train import compose_train, evaluate, steps

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A small synthetic world (walkers rendered as converted person crops, 64x32 frames)."""
    out = tmp_path_factory.mktemp("synthetic")
    cfg = SyntheticConfig(num_train_ids=6, num_test_ids=4, views=(30, 90), frame_size=(64, 32), length=(6, 8))
    synthetic.prepare(out, cfg, workers=1, shard_size=16, progress=False)
    return out


@pytest.fixture(scope="module")
def trained(root: Path, tmp_path_factory) -> Path:
    """4 training steps from a backbone weight file, which is then moved away: the checkpoint must not need it."""
    tmp = tmp_path_factory.mktemp("trained")
    backbone = tmp / "backbone.pt"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the stand-in LVM's weights, so that the walkers dominate the features (README "The model")
        DinoV2Backbone(preset="tiny", image_size=(112, 56), pretrained="synthetic").save(backbone)
    cfg = compose_train(
        tmp / "run",
        root,
        *steps(4, 2),
        "logger=none",
        "test_after_fit=false",
        "callbacks.feature_maps.every_n_steps=0",
        f"model.net.pretrained={backbone}",
    )
    train(cfg)
    backbone.rename(tmp / "moved.pt")
    return tmp / "run" / "checkpoints" / "last.ckpt"


def _person_crop(frame: np.ndarray, ratio: float) -> np.ndarray:
    """The person region of a stored (pad-and-resized) frame: the columns the converter filled."""
    h, w = frame.shape[:2]
    new_w = min(w, int(ratio * h + 1e-3))  # the converter's int(w * H / h), from the float32 ratio
    left = (w - new_w) // 2
    return frame[:, left : left + new_w]


def _write_frames_tree(root: Path, records) -> None:
    for r in records:
        folder = root / r.subject / r.seq_type / r.view
        folder.mkdir(parents=True)
        for t, (frame, ratio) in enumerate(zip(r.frames, r.ratios)):
            cv2.imwrite(
                str(folder / f"{t:04d}.png"), np.ascontiguousarray(_person_crop(frame, ratio)[..., ::-1])
            )


def _rank1_via_identify(gallery: Gallery, condition: str) -> float:
    """The evaluator's rank-1 of `condition` from identify's top-1: per (probe view, gallery view) cell, identical
    views excluded, mean over gallery views, then over probe views (OpenGait's de_diag)."""
    probe_types, gallery_types = PROTOCOLS["ccpg"].conditions[condition]
    parts = [label.split("/") for label in gallery.labels]
    views = sorted({v.split("_")[0] for _, _, v in parts})
    per_probe_view = []
    for pv in views:
        cells = []
        for gv in views:
            if gv == pv:
                continue
            probes = gallery.select(
                np.array([t in probe_types and v.split("_")[0] == pv for _, t, v in parts])
            )
            subset = gallery.select(
                np.array([t in gallery_types and v.split("_")[0] == gv for _, t, v in parts])
            )
            top1 = identify(subset, probes, top_k=1)
            hits = [e["matches"][0]["identity"] == probes.identities[i] for i, e in enumerate(top1)]
            cells.append(round(100 * float(np.mean(hits)), 2))
        per_probe_view.append(np.mean(cells))
    return float(np.mean(per_probe_view))


def test_identify_rank1_matches_the_evaluator_after_the_pretrained_file_moved(
    trained: Path, root: Path, tmp_path: Path
) -> None:
    metrics, _ = evaluate(trained, tmp_path / "eval", root)  # make eval: works without the backbone file
    tree = tmp_path / "frames"
    _write_frames_tree(tree, read_sequences(root, split="test"))
    model = load_model(trained)
    assert model.frame_size == (64, 32)  # from the train manifest, through the checkpoint
    gallery = embed_inputs(model, [tree], device="cpu")
    assert len(gallery) == 4 * 7 * 2
    # the folder path gives the embeddings of the shards' own frames (those the evaluator scores)
    records = read_sequences(root, split="test")
    direct = np.stack(list(embed_sequences(model, [(r.frames, r.ratios) for r in records], device="cpu")))
    rows = [gallery.labels.index(f"{r.subject}/{r.seq_type}/{r.view}") for r in records]
    np.testing.assert_allclose(gallery.embeddings[rows], direct, rtol=1e-4, atol=1e-3)
    # rank-1 is well defined only without ties: no two sequences share an embedding
    flat = gallery.embeddings.reshape(len(gallery), -1)
    gaps = np.abs(flat[:, None] - flat[None]).max(-1) + np.eye(len(gallery))
    assert (gaps > 1e-3).all()
    for condition in ("CL", "UP", "DN", "BG"):
        ours = _rank1_via_identify(gallery, condition)
        assert ours == pytest.approx(metrics[f"test/{condition}"], abs=0.5), condition


def test_scene_video_with_two_walkers_and_mot_tracks(trained: Path, root: Path, tmp_path: Path) -> None:
    records = read_sequences(root, split="test")
    walkers = [next(r for r in records if r.subject == s and r.seq_type == "U0_D0") for s in ("006", "008")]
    n = min(len(w.frames) for w in walkers)
    scene_h, scene_w = 96, 160
    writer = cv2.VideoWriter(
        str(tmp_path / "scene.avi"), cv2.VideoWriter_fourcc(*"FFV1"), 10, (scene_w, scene_h)
    )
    lines = []
    for t in range(n):
        canvas = np.full((scene_h, scene_w, 3), 90, np.uint8)
        for tid, (walker, x0) in enumerate(
            zip(walkers, (10 + 4 * t, 110 - 4 * t)), 1
        ):  # both in view at once
            crop = _person_crop(walker.frames[t], walker.ratios[t])
            y0 = 16
            canvas[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
            lines.append(f"{t + 1},{tid},{x0},{y0},{crop.shape[1]},{crop.shape[0]},1,-1,-1,-1")
        writer.write(np.ascontiguousarray(canvas[..., ::-1]))
    writer.release()
    (tmp_path / "scene.txt").write_text("\n".join(lines) + "\n")

    model = load_model(trained)
    probes = embed_inputs(model, [tmp_path / "scene.avi"], tracks=tmp_path / "scene.txt", device="cpu")
    assert probes.labels == ["scene/1", "scene/2"] and probes.embeddings.shape[0] == 2
    tree = tmp_path / "gallery"
    # a gallery of the same two walkers, from frames folders of the frames the video shows
    _write_frames_tree(
        tree, [replace(w, frames=w.frames[:n], ratios=w.ratios[:n], silhouettes=None) for w in walkers]
    )
    gallery = embed_inputs(model, [tree], device="cpu")
    results = identify(gallery, probes, top_k=2)
    assert [r["matches"][0]["identity"] for r in results] == ["006", "008"]
    # the same frames, cut from the scene by the tracks: float-noise distance, far below the other walker's
    assert all(r["matches"][0]["distance"] < 1e-2 * r["matches"][1]["distance"] for r in results)
