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
from biggait.index import MappedGallery
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
    info = summary(g)
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
    assert [(e["identity"], e["templates"]) for e in merged["identities"]] == [("ann", 2), ("carl", 2)]
    assert load_gallery(tmp_path / "m.npz").identities == ["ann", "ann", "carl", "carl"]
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


def test_merge_finds_a_template_label_shared_across_any_two_inputs(tmp_path: Path) -> None:
    """Labels are compared through 8-byte hashes confirmed on the strings: a label stored at another width
    (a longer label elsewhere in its file) still matches, and distinct labels never do."""
    a, b, c = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    append(a, _templates("ann", 3, seed=0))
    append(b, _templates("bob", 2, seed=1, prefix="a-much-longer-template-name"))
    append(c, _templates("carl", 2, seed=2))
    merged = merge(tmp_path / "abc.npz", [a, b, c])
    assert merged["templates"] == 7 and load_gallery(tmp_path / "abc.npz").labels[3:5] == [
        "bob/a-much-longer-template-name0",
        "bob/a-much-longer-template-name1",
    ]
    append(b, _templates("ann", 1, seed=3, prefix="walk"))  # "ann/walk0" is in a too, b is wider
    with pytest.raises(
        GalleryError, match=r"gallery .*b\.npz has template 'ann/walk0' that gallery .*a\.npz"
    ):
        merge(tmp_path / "out.npz", [a, c, b])
    assert not (tmp_path / "out.npz").exists()


_EDITS = {
    "append": lambda bad, out: append(bad, _templates("bob", 1, seed=1)),
    "remove": lambda bad, out: remove(bad, ["ann"]),
    "merge": lambda bad, out: merge(out, [bad]),
    "list": lambda bad, out: summary(bad),
}


@pytest.mark.parametrize("edit", _EDITS)
@pytest.mark.parametrize("field", ["labels", "identities", "embeddings"])
def test_a_gallery_whose_fields_disagree_is_refused_and_left_as_it_was(tmp_path: Path, field, edit) -> None:
    """Labels fewer than embeddings, identities that are numbers, float64 embeddings: one error naming the field."""
    fields = dict(np.load(_templates("ann", 3, seed=0).save(tmp_path / "g.npz"), allow_pickle=False))
    broken = {
        "labels": fields["labels"][:2],
        "identities": np.arange(3),
        "embeddings": fields["embeddings"] * 1.0,
    }
    broken["embeddings"] = broken["embeddings"].astype(np.float64)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{**fields, field: broken[field]})
    before = bad.read_bytes()
    with pytest.raises(GalleryError, match=field):
        _EDITS[edit](bad, tmp_path / "m.npz")
    assert bad.read_bytes() == before and not (tmp_path / "m.npz").exists()


_EDIT = """
import sys
import numpy as np
from biggait.gallery import Gallery
from biggait.gallery_cli import append, main, merge, remove
from biggait.index import from_gallery
path, other, out = sys.argv[1:]
append(path, Gallery(np.ones((2, 64, 16), np.float32), ["new/0", "new/1"], ["new"] * 2, ["s"] * 2, "e" * 64))
remove(path, ["new"])
merge(out, [path, other])
from_gallery(out, out + ".mapped")
sys.exit(main(["list", path]))
"""
_PEAK = (
    "import resource, subprocess, sys\n"
    "proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stderr.write(proc.stderr)\n"
    "print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
)


def _edit_peak(path: Path, other: Path, out: Path) -> int:
    """Peak RSS of a child that enrols into, removes from, merges and lists gallery `path`."""
    cmd = [sys.executable, "-c", _PEAK, sys.executable, "-c", _EDIT, str(path), str(other), str(out)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    code, rss = proc.stdout.split()[-2:]
    assert code == "0", proc.stderr
    return int(rss)


def _big(path: Path, n: int, who: str) -> Path:
    emb = np.concatenate([np.full((min(4096, n - s), 64, 16), s, np.float32) for s in range(0, n, 4096)])
    labels, identities = [f"{who}/{k}" for k in range(n)], [f"{who}{k % 500}" for k in range(n)]
    return Gallery(emb, labels, identities, ["s"] * n, "e" * 64).save(path)


def test_gallery_edits_stream_the_file_in_bounded_memory(tmp_path: Path) -> None:
    """enrol, remove, merge, list and indexing (the mapped folder of biggait.index) of a 120 MB gallery cost
    about what they cost on a 240 KB one: the rows
    are streamed chunk by chunk (+20 MiB measured; the whole-file edits they replace held the gallery two or
    three times)."""
    small = _edit_peak(
        _big(tmp_path / "s.npz", 60, "a"), _big(tmp_path / "s2.npz", 60, "b"), tmp_path / "sm.npz"
    )
    big_file = _big(tmp_path / "b.npz", 30_000, "a")
    big = _edit_peak(big_file, _big(tmp_path / "b2.npz", 30_000, "b"), tmp_path / "bm.npz")
    assert big_file.stat().st_size > 120e6
    assert big - small < 60 * (1 << 20), f"peak RSS {big / 2**20:.0f} MiB vs {small / 2**20:.0f} MiB"
    assert len(load_gallery(tmp_path / "bm.npz")) == 60_000
    mapped = MappedGallery(tmp_path / "bm.npz.mapped")
    assert (
        len(mapped) == 60_000 and mapped.labels[-1] == "b/29999" and mapped.names[mapped.codes[-1]] == "b499"
    )
