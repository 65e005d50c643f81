"""`biggait gallery enrol|remove|list|merge`: round trips, concurrent enrolment, a killed enrolment, and embed
refusing to replace a gallery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from biggait.checkpoint import load_model, model_fingerprint
from biggait.compat.opengait import export_lightning_checkpoint
from biggait.embed import main as embed_main
from biggait.gallery import Gallery, GalleryError, load_gallery
from biggait.gallery_cli import append, main, merge, remove, summary
from biggait.models import BigGait
from test_checkpoint import TINY

MODEL = "e" * 64


def _templates(identity: str, n: int, *, seed: int, prefix: str = "walk") -> Gallery:
    rng = np.random.default_rng(seed)
    return Gallery(rng.normal(size=(n, 8, 4)).astype(np.float32), [f"{identity}/{prefix}{k}" for k in range(n)],
                   [identity] * n, ["test"] * n, MODEL)  # fmt: skip


def test_append_remove_merge_list_round_trip(tmp_path: Path) -> None:
    g = tmp_path / "g.npz"
    append(g, _templates("ann", 2, seed=0))
    append(g, _templates("bob", 3, seed=1))
    append(g, _templates("ann", 1, seed=2, prefix="outfit"))  # a second template kind for ann
    gallery = load_gallery(g)
    assert gallery.identities == ["ann", "ann", "bob", "bob", "bob", "ann"]
    info = summary(gallery)
    assert [(e["identity"], e["templates"]) for e in info["identities"]] == [("ann", 3), ("bob", 3)]
    assert info["model"] == MODEL and info["identities"][0]["first"] <= info["identities"][0]["last"]
    np.testing.assert_array_equal(gallery.embeddings[2:5], _templates("bob", 3, seed=1).embeddings)
    with pytest.raises(GalleryError, match="already holds"):
        append(g, _templates("ann", 1, seed=3))  # the same template label twice
    with pytest.raises(GalleryError, match="different models"):
        append(g, Gallery(np.zeros((1, 8, 4), np.float32), ["x/1"], ["x"], ["s"], "d" * 64))
    remove(g, ["bob"])
    assert load_gallery(g).identities == ["ann"] * 3
    remove(g, labels=["ann/outfit0"])
    assert load_gallery(g).labels == ["ann/walk0", "ann/walk1"]
    with pytest.raises(GalleryError, match="no identity or template 'carl'"):
        remove(g, ["carl"])
    append(tmp_path / "h.npz", _templates("carl", 2, seed=4))
    merged = merge(tmp_path / "m.npz", [g, tmp_path / "h.npz"])
    assert merged.identities == ["ann", "ann", "carl", "carl"] and len(load_gallery(tmp_path / "m.npz")) == 4
    assert set(load_gallery(tmp_path / "m.npz").meta["enrolled"]) == {"ann", "carl"}


_APPEND_LOOP = """
import sys
import numpy as np
from biggait.gallery import Gallery
from biggait.gallery_cli import append
path, who, n, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for k in range(n):
    emb = np.full((rows, 64, 16), k, np.float32)
    append(path, Gallery(emb, [f"{who}/{k}/{r}" for r in range(rows)], [who] * rows, ["s"] * rows, "e" * 64))
    print(k, flush=True)
"""


def test_two_processes_enrolling_at_once_lose_no_entry(tmp_path: Path) -> None:
    g = tmp_path / "g.npz"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _APPEND_LOOP, str(g), who, "15", "50"], stdout=subprocess.DEVNULL
        )
        for who in ("ann", "bob")
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    gallery = load_gallery(g)
    for who in ("ann", "bob"):  # every template of both, in each one's own order
        assert [label for label in gallery.labels if label.startswith(who)] == [
            f"{who}/{k}/{r}" for k in range(15) for r in range(50)
        ]


def test_a_killed_enrolment_leaves_the_gallery_intact(tmp_path: Path) -> None:
    g = tmp_path / "g.npz"
    append(g, _templates("ann", 2, seed=0))
    proc = subprocess.Popen([sys.executable, "-c", _APPEND_LOOP, str(g), "bob", "1000", "2000"],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.readline()  # one append has landed; the next ones are being written
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gallery = load_gallery(g)  # whole and readable: the old file or a complete new one
    assert gallery.labels[:2] == ["ann/walk0", "ann/walk1"] and (len(gallery) - 2) % 2000 == 0
    append(g, _templates("carl", 1, seed=1))  # the next writer works and sweeps the dead writer's temporary
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert load_gallery(g).identities[-1] == "carl"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BigGait(**TINY).eval()
    return export_lightning_checkpoint(model, tmp_path_factory.mktemp("m") / "m.ckpt")


def _walk(folder: Path, seed: int, n: int = 3) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for t in range(n):
        cv2.imwrite(str(folder / f"{t:04d}.png"), rng.integers(0, 256, (60, 26, 3), dtype=np.uint8))
    return folder


def test_enrol_list_remove_clis_and_embed_never_replaces_silently(ckpt: Path, tmp_path: Path, capsys) -> None:
    g = str(tmp_path / "g.npz")
    walk = _walk(tmp_path / "walk1", 0)
    with pytest.raises(SystemExit) as exit_:
        main(["enrol", g, str(ckpt), str(walk)])  # no name: a folder's name is never a person's name
    assert exit_.value.code == 2 and "--identity" in capsys.readouterr().err
    assert main(["enrol", g, str(ckpt), str(walk), "--identity", "ann", "--device", "cpu"]) == 0
    assert (
        main(["enrol", g, str(ckpt), str(_walk(tmp_path / "tree" / "bob" / "w1", 1)), "--identity", "bob"])
        == 0
    )
    gallery = load_gallery(g)
    assert gallery.labels == ["ann/walk1", "bob/w1"] and gallery.model == model_fingerprint(load_model(ckpt))
    capsys.readouterr()
    assert main(["list", g, "--json", str(tmp_path / "l.json")]) == 0
    out = capsys.readouterr().out
    assert "2 templates of 2 identities" in out and "ann" in out and "bob" in out
    assert [e["identity"] for e in json.loads((tmp_path / "l.json").read_text())["identities"]] == [
        "ann",
        "bob",
    ]
    assert main(["remove", g, "ann"]) == 0 and load_gallery(g).identities == ["bob"]
    # embed --out onto an existing gallery: refused, the gallery is unchanged; --overwrite replaces it
    before = (tmp_path / "g.npz").read_bytes()
    with pytest.raises(SystemExit) as exit_:
        embed_main([str(ckpt), str(walk), "--out", g])
    assert exit_.value.code == 2 and "gallery enrol" in capsys.readouterr().err
    assert (tmp_path / "g.npz").read_bytes() == before
    assert embed_main([str(ckpt), str(walk), "--out", g, "--overwrite", "--device", "cpu"]) == 0
    assert load_gallery(g).labels == ["walk1"]


@pytest.mark.parametrize("meta", [np.str_("{not json"), np.str_("[1, 2]"), np.arange(3)])
def test_a_broken_or_hostile_gallery_meta_is_one_error(tmp_path: Path, meta) -> None:
    g = _templates("ann", 2, seed=0)
    fields = dict(np.load(g.save(tmp_path / "g.npz"), allow_pickle=False))
    np.savez(tmp_path / "bad.npz", **{**fields, "meta": meta})
    with pytest.raises(GalleryError, match="meta is not a JSON object"):
        load_gallery(tmp_path / "bad.npz")
    with pytest.raises(GalleryError, match="meta is not a JSON object"):
        append(tmp_path / "bad.npz", _templates("bob", 1, seed=1))  # never overwritten on top of it
