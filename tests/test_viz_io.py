"""biggait.viz.io: reading whole sequences back from shards, batching them, atomic PNG writes."""

from __future__ import annotations

import io
import re
import tarfile
import zlib

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from biggait import load_model
from biggait.checkpoint import CheckpointError
from biggait.data import SequenceRecord, write_shards
from biggait.errors import CorruptDataError
from biggait.viz import (
    VizInputError,
    comparison_indices,
    read_labels,
    read_sequences,
    records_to_batch,
    save_png,
)


def _record(spec: tuple[str, str, int]) -> SequenceRecord:
    subject, seq_type, t = spec
    rng = np.random.default_rng(zlib.crc32(repr(spec).encode()))  # hash() of a str is salted per process
    sil = np.zeros((t, 32, 16), np.uint8)
    sil[:, 4:28, 4:12] = 255
    return SequenceRecord(
        subject=subject,
        seq_type=seq_type,
        view="0_0",
        frames=rng.integers(0, 255, (t, 32, 16, 3), dtype=np.uint8),
        ratios=np.full(t, 0.5, np.float32),
        silhouettes=sil,
    )


SPECS = [("001", "U0_D0", 6), ("001", "U3_D3", 4), ("002", "U0_D0", 5), ("003", "U1_D1", 3)]


def test_read_sequences_round_trip_filter_and_limits(tmp_path):
    write_shards(SPECS, _record, tmp_path, dataset="toy", split="test", shard_size=2, progress=False)
    records = read_sequences(tmp_path)
    assert [(r.subject, r.seq_type, r.n_frames) for r in records] == SPECS
    expected = _record(SPECS[1])
    np.testing.assert_array_equal(records[1].frames, expected.frames)
    np.testing.assert_array_equal(records[1].silhouettes, expected.silhouettes)
    some = read_sequences(tmp_path, where=lambda s, t, v: s != "001", limit=1, max_frames=2)
    assert [(r.subject, r.n_frames) for r in some] == [("002", 2)]


def test_records_to_batch_pads_normalises_and_keeps_silhouettes(tmp_path):
    records = [_record(s) for s in SPECS]
    batch = records_to_batch(records)
    assert batch["frames"].shape == (4, 6, 3, 32, 16) and batch["frames"].dtype == torch.float32
    assert batch["lengths"].tolist() == [6, 4, 5, 3]
    assert batch["frames"][1, 4:].abs().sum() == 0
    # as in the evaluation stream (one batch builder): padding repeats the last ratio
    assert (batch["ratios"][1, 4:] == float(records[1].ratios[-1])).all()
    assert batch["silhouettes"].shape == (4, 6, 32, 16)
    assert comparison_indices(batch["subjects"], batch["types"]) == [0, 1, 2]
    with pytest.raises(VizInputError, match="no sequences"):
        records_to_batch([])


def test_save_png_is_atomic_and_leaves_no_temp_files(tmp_path):
    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1])
    path = save_png(fig, tmp_path / "a" / "b.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in path.parent.iterdir()] == ["b.png"]


def test_load_model_restores_weights_and_the_frozen_mask_branch(tmp_path):
    from biggait.models import BigGait

    kwargs = {"backbone": "tiny", "num_classes": 5, "image_size": (224, 112), "map_size": (32, 16)}
    torch.manual_seed(0)
    with pytest.warns(UserWarning):  # random backbone: the model says so
        model = BigGait(**kwargs)
    model.freeze_mask_branch()
    ckpt = {
        "state_dict": {f"net.{k}": v for k, v in model.state_dict().items()}
        | {"val_metric.x": torch.zeros(1)},
        "hyper_parameters": {"net": kwargs, "protocol": "ccpg"},
        "biggait": {"mask_branch_frozen": True},
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    torch.manual_seed(1)  # a different init, so equal outputs prove the weights were loaded
    with pytest.warns(UserWarning):
        loaded = load_model(tmp_path / "last.ckpt")
    assert not loaded.training and loaded.mask_branch_frozen
    frames, ratios = torch.randn(1, 2, 3, 64, 32), torch.full((1, 2), 0.5)
    with torch.no_grad():
        a = model.eval().forward_features(frames, ratios)
        b = loaded.forward_features(frames, ratios)
    for key in ("f_last", "foreground", "denoising", "appearance"):
        torch.testing.assert_close(a[key], b[key])
    torch.save({"state_dict": ckpt["state_dict"]}, tmp_path / "bare.ckpt")
    with pytest.raises(CheckpointError, match="hyper_parameters"):
        load_model(tmp_path / "bare.ckpt")
    with pytest.raises(CheckpointError, match="make train"):
        load_model(tmp_path / "missing.ckpt")


def test_demo_shards_are_the_synthetic_world_with_ground_truth_and_a_comparison_trio(tmp_path):
    from biggait.data_prep.synthetic import render_sequence
    from biggait.evaluation.protocols import CCPG_TYPES
    from biggait.viz.demo import demo_world, make_demo_shards

    make_demo_shards(tmp_path, subjects=2)
    records = read_sequences(tmp_path, split="test")
    assert len(records) == 2 * len(CCPG_TYPES) * 2
    r = records[0]
    assert r.silhouettes is not None and r.silhouettes.shape == r.frames.shape[:3]
    body = r.silhouettes > 0
    assert 0.02 < body.mean() < 0.5  # a figure, not an empty or full frame
    # the walkers are the synthetic world's (one generator), so the silhouettes are exact
    world = demo_world(subjects=2)
    spec = (int(r.subject), r.seq_type, world.views[int(r.view.split("_")[0]) - 1], 0)
    np.testing.assert_array_equal(r.silhouettes, render_sequence(spec, world).silhouettes)
    trio = comparison_indices([x.subject for x in records], [x.seq_type for x in records])
    a, b, c = (records[i] for i in trio)
    assert a.subject == b.subject != c.subject and a.seq_type != b.seq_type


def test_comparison_trio_comes_from_the_whole_split_like_real_data(tmp_path):
    """Real test splits hold every sequence of one subject in a row (CCPG: dozens): the trio must still be one
    person in two different outfits and another person, whatever the split's order."""
    from biggait.data_prep.synthetic import SyntheticConfig, prepare
    from biggait.viz.demo import comparison_sequences, tiny_random_model
    from biggait.viz.panels import outfit_difference

    # 3 test subjects x 7 CCPG types x 4 views, written in order: the first 28 sequences are all subject 001
    cfg = SyntheticConfig(
        num_train_ids=1, num_test_ids=3, views=(0, 30, 60, 90), frame_size=(32, 16), length=(2, 2), canvas=96
    )
    prepare(tmp_path, cfg, workers=1, shard_size=64, progress=False)
    records = read_sequences(tmp_path, split="test", max_frames=1)
    assert {r.subject for r in records[:24]} == {"001"}  # what the first-24 choice used to see
    seqs = comparison_sequences(tiny_random_model(), tmp_path, split="test", max_frames=2)
    (sa, ta, va), (sb, tb, vb), (sc, tc, vc) = (s.label.split() for s in seqs)
    assert sa == sb != sc
    assert outfit_difference(ta, tb) == 2 and va == vb  # both outfit parts change, in one view
    assert (tc, vc) == (ta, va)  # the other person in A's first outfit state and view
    assert seqs[0].frames.shape[0] == 2

    # the same choice whatever order the labels come in
    labels = [(r.subject, r.seq_type, r.view) for r in records]
    picks = comparison_indices(*zip(*labels))
    order = np.random.default_rng(0).permutation(len(labels))
    shuffled = [labels[i] for i in order]
    assert [shuffled[i] for i in comparison_indices(*zip(*shuffled))] == [labels[i] for i in picks]


def test_read_labels_lists_the_split_from_headers_and_refuses_broken_shards(tmp_path):
    write_shards(SPECS, _record, tmp_path, dataset="toy", split="test", shard_size=2, progress=False)
    labels = read_labels(tmp_path)
    assert labels == [(r.subject, r.seq_type, r.view) for r in read_sequences(tmp_path)]
    shard = sorted((tmp_path / "test").glob("*.tar"))[1]
    intact = shard.read_bytes()
    # broken: cut in the middle of a sample
    shard.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(
        CorruptDataError, match=rf"shard {re.escape(str(shard))} (cannot be read|holds 1 samples)"
    ):
        read_labels(tmp_path)
    # hostile: a huge meta.json (and a symlink posing as one) where the manifest promises two samples
    with tarfile.open(shard, "w") as tar:
        big = tarfile.TarInfo("x.meta.json")
        big.size = 2 << 20
        tar.addfile(big, io.BytesIO(b" " * big.size))
        link = tarfile.TarInfo("y.meta.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(CorruptDataError, match="x.meta.json is 2097152 bytes"):
        read_labels(tmp_path)
