"""Shard writer, sample format and manifest: round trip, resume, skip report, errors."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from biggait.data.pipeline import (
    ShardError,
    decode_frames,
    decode_silhouettes,
    iter_shard,
    parse_sample,
    without_silhouettes,
)
from biggait.data.records import SequenceRecord
from biggait.data.shards import read_manifest, write_shards
from biggait.errors import ConfigError, CorruptDataError, DatasetNotFoundError


def make_record(spec: tuple) -> SequenceRecord | None:
    """Deterministic random sequence for a spec (subject, type, view, n_frames, seed[, height, width])."""
    subject, seq_type, view, n, seed, *size = spec
    h, w = size or (64, 32)
    rng = np.random.default_rng(seed)
    return SequenceRecord(
        subject=subject,
        seq_type=seq_type,
        view=view,
        frames=rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8),
        ratios=rng.uniform(0.3, 0.7, n).astype(np.float32),
        silhouettes=(rng.random((n, h, w)) > 0.5).astype(np.uint8) * 255,
    )


def smooth_record(spec: tuple) -> SequenceRecord:
    """Smooth frames (gradients), the content JPEG is made for."""
    n = spec[3]
    yy, xx = np.mgrid[0:64, 0:32]
    frame = np.stack([yy * 4, xx * 8, (yy + xx) * 2], axis=-1).astype(np.uint8)
    return SequenceRecord(
        spec[0], spec[1], spec[2], np.repeat(frame[None], n, 0), np.full(n, 0.5, np.float32)
    )


def flaky_load(spec: tuple) -> SequenceRecord | None:
    """None for type 'none', an exception for type 'boom', otherwise a record."""
    if spec[1] == "none":
        return None
    if spec[1] == "boom":
        raise OSError(f"cannot read {spec[0]}")
    return make_record(spec)


def interrupting_load(spec: tuple) -> SequenceRecord:
    if spec[0] == "003":
        raise KeyboardInterrupt  # a user's Ctrl-C in the middle of a shard
    return make_record(spec)


def specs_for(n_subjects: int = 5, per_subject: int = 3) -> list[tuple]:
    return [
        (
            f"{s:03d}",
            f"nm-{k:02d}",
            "0.90",
            5 + (s + k) % 8,
            100 * s + k,
        )  # the dot in the view tests key sanitising
        for s in range(n_subjects)
        for k in range(per_subject)
    ]


def read_split(split_dir) -> dict[tuple, tuple]:
    out = {}
    for path in sorted(split_dir.glob("*.tar")):
        for key, fields in iter_shard(str(path)):
            assert "." not in key
            sample = parse_sample(key, fields, path.name, silhouettes=True)
            out[(sample.subject, sample.seq_type, sample.view)] = (sample, decode_frames(sample))
    return out


def test_record_validation_names_the_field() -> None:
    good = make_record(("1", "a", "v", 4, 0))
    with pytest.raises(CorruptDataError, match="frames must be a uint8"):
        SequenceRecord("1", "a", "v", good.frames.astype(np.float32), good.ratios)
    with pytest.raises(CorruptDataError, match="ratios must be a float32"):
        SequenceRecord("1", "a", "v", good.frames, good.ratios[:3])
    with pytest.raises(CorruptDataError, match="silhouettes"):
        SequenceRecord("1", "a", "v", good.frames, good.ratios, good.silhouettes[:, :10])
    with pytest.raises(CorruptDataError, match="subject"):
        SequenceRecord("", "a", "v", good.frames, good.ratios)


def test_round_trip_is_lossless_and_manifest_counts(tmp_path) -> None:
    specs = specs_for()
    manifest = write_shards(
        specs,
        make_record,
        tmp_path,
        dataset="toy",
        split="train",
        shard_size=4,
        shuffle_seed=0,
        workers=1,
        frame_size=(64, 32),
        progress=False,
    )
    split_dir = tmp_path / "train"
    assert manifest == read_manifest(split_dir)
    assert manifest["dataset"] == "toy" and manifest["split"] == "train" and manifest["format_version"] == 1
    assert manifest["frame_size"] == [64, 32] and manifest["has_silhouettes"]
    assert manifest["sequences_per_subject"] == {f"{s:03d}": 3 for s in range(5)}
    assert [s["name"] for s in manifest["shards"]] == [f"toy-train-{i:06d}.tar" for i in range(4)]
    assert [s["n_samples"] for s in manifest["shards"]] == [4, 4, 4, 3]
    samples = read_split(split_dir)
    assert len(samples) == len(specs)
    for spec in specs:
        record = make_record(spec)
        sample, frames = samples[(spec[0], spec[1], spec[2])]
        np.testing.assert_array_equal(frames, record.frames)
        np.testing.assert_array_equal(sample.ratios, record.ratios)
        np.testing.assert_array_equal(decode_silhouettes(sample), record.silhouettes)


def test_shards_follow_the_seeded_global_shuffle(tmp_path) -> None:
    specs = specs_for()
    write_shards(
        specs,
        make_record,
        tmp_path,
        dataset="toy",
        split="train",
        shard_size=4,
        shuffle_seed=7,
        workers=1,
        frame_size=None,
        progress=False,
    )
    order = np.random.default_rng(7).permutation(len(specs))
    for i in range(4):
        keys = [k for k, _ in iter_shard(str(tmp_path / "train" / f"toy-train-{i:06d}.tar"))]
        assert [int(k.split("_")[0]) for k in keys] == order[4 * i : 4 * i + 4].tolist()
    # shuffle_seed=None keeps the given order (test splits)
    write_shards(
        specs,
        make_record,
        tmp_path,
        dataset="toy",
        split="test",
        shard_size=4,
        shuffle_seed=None,
        workers=1,
        frame_size=None,
        progress=False,
    )
    keys = [k for k, _ in iter_shard(str(tmp_path / "test" / "toy-test-000000.tar"))]
    assert [int(k.split("_")[0]) for k in keys] == [0, 1, 2, 3]


def test_jpeg_option_is_close_and_recorded(tmp_path) -> None:
    specs = [("001", "nm-01", "090", 4, 3)]
    manifest = write_shards(
        specs,
        smooth_record,
        tmp_path,
        dataset="toy",
        split="train",
        shard_size=4,
        shuffle_seed=None,
        workers=1,
        frame_size=None,
        progress=False,
        image_format="jpg",
    )
    assert manifest["image_format"] == "jpg"
    ((sample, frames),) = read_split(tmp_path / "train").values()
    original = smooth_record(specs[0]).frames.astype(np.int16)
    assert frames.shape == (4, 64, 32, 3)
    assert 0 < np.abs(frames - original).mean() < 3  # lossy but close
    with pytest.raises(ConfigError, match="image_format"):
        write_shards(
            specs,
            make_record,
            tmp_path,
            dataset="toy",
            split="x",
            shard_size=4,
            shuffle_seed=None,
            workers=1,
            frame_size=None,
            progress=False,
            image_format="bmp",
        )


def test_rerun_reuses_complete_shards_and_rebuilds_missing_ones(tmp_path) -> None:
    kw = dict(
        dataset="toy", split="train", shard_size=4, shuffle_seed=1, workers=1, frame_size=None, progress=False
    )
    write_shards(specs_for(), make_record, tmp_path, **kw)
    split_dir = tmp_path / "train"
    tars = sorted(split_dir.glob("*.tar"))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tars}
    os.remove(tars[2])  # as if the run died before shard 2 was renamed into place
    write_shards(specs_for(), make_record, tmp_path, **kw)
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(split_dir.glob("*.tar"))}
    assert after.keys() == before.keys()
    for name in before:
        if name == tars[2].name:
            assert after[name][1] == before[name][1]  # rebuilt byte-identically
        else:
            assert after[name][0] == before[name][0]  # untouched
    # Different content for the same shard index invalidates it.
    write_shards(specs_for(per_subject=4), make_record, tmp_path, **kw)
    assert read_manifest(split_dir)["n_sequences"] == 20
    assert len(read_split(split_dir)) == 20
    # A smaller rebuild removes the shards it no longer lists.
    write_shards(specs_for(per_subject=1), make_record, tmp_path, **kw)
    assert sorted(p.name for p in split_dir.glob("*.tar")) == ["toy-train-000000.tar", "toy-train-000001.tar"]
    assert sorted(p.name for p in split_dir.glob("toy-*.json")) == [
        "toy-train-000000.json",
        "toy-train-000001.json",
    ]


def test_interrupted_run_leaves_no_whole_looking_shard(tmp_path) -> None:
    with pytest.raises(KeyboardInterrupt):
        write_shards(
            specs_for(),
            interrupting_load,
            tmp_path,
            dataset="toy",
            split="train",
            shard_size=20,
            shuffle_seed=None,
            workers=1,
            frame_size=None,
            progress=False,
        )
    split_dir = tmp_path / "train"
    assert not list(split_dir.iterdir())  # neither a shard, a temp file nor a manifest
    with pytest.raises(DatasetNotFoundError, match="make data DATASET=toy"):
        read_manifest(split_dir, dataset="toy")


@pytest.mark.parametrize("workers", [1, 2])
def test_failed_loads_are_skipped_and_reported(tmp_path, workers: int) -> None:
    specs = specs_for(3, 2) + [("007", "none", "000", 5, 1), ("008", "boom", "000", 5, 2)]
    specs.append(("009", "nm-01", "000", 5, 3, 32, 32))  # wrong frame size
    manifest = write_shards(
        specs,
        flaky_load,
        tmp_path,
        dataset="toy",
        split="train",
        shard_size=3,
        shuffle_seed=3,
        workers=workers,
        frame_size=(64, 32),
        progress=False,
    )
    assert manifest["n_sequences"] == 6 and manifest["n_skipped"] == 3
    assert set(manifest["sequences_per_subject"]) == {"000", "001", "002"}
    report = json.loads((tmp_path / "train" / "skipped.json").read_text())
    reasons = {item["spec"]: item["reason"] for item in report["skipped"]}
    assert "load returned None" in reasons[repr(specs[-3])]
    assert "OSError: cannot read 008" in reasons[repr(specs[-2])]
    assert "frame size [32, 32]" in reasons[repr(specs[-1])]


def test_mixed_frame_sizes_without_frame_size_is_an_error(tmp_path) -> None:
    specs = [("001", "a", "0", 4, 1), ("002", "a", "0", 4, 2, 32, 32)]
    with pytest.raises(CorruptDataError, match="different frame sizes"):
        write_shards(
            specs,
            make_record,
            tmp_path,
            dataset="toy",
            split="train",
            shard_size=1,
            shuffle_seed=None,
            workers=1,
            frame_size=None,
            progress=False,
        )


def test_bad_arguments_and_missing_data_are_clear_errors(tmp_path) -> None:
    kw = dict(split="train", shard_size=2, shuffle_seed=None, workers=1, frame_size=None, progress=False)
    with pytest.raises(ConfigError, match="no sequences"):
        write_shards([], make_record, tmp_path, dataset="toy", **kw)
    with pytest.raises(ConfigError, match="cannot be pickled"):
        write_shards(
            specs_for(), lambda spec: make_record(spec), tmp_path, dataset="toy", **(kw | {"workers": 2})
        )
    with pytest.raises(ConfigError, match="dataset"):
        write_shards(specs_for(), make_record, tmp_path, dataset="to.y", **kw)
    with pytest.raises(DatasetNotFoundError, match="does not exist.*make data DATASET=ccpg"):
        read_manifest(tmp_path / "nowhere" / "train", dataset="ccpg")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="holds no shards"):
        read_manifest(tmp_path / "empty" / "train")
    write_shards(specs_for(), make_record, tmp_path, dataset="toy", **kw)
    os.remove(tmp_path / "train" / "toy-train-000001.tar")
    with pytest.raises(DatasetNotFoundError, match="toy-train-000001.tar"):
        read_manifest(tmp_path / "train")


def _one_shard(tmp_path) -> str:
    write_shards(
        specs_for(2, 2),
        make_record,
        tmp_path,
        dataset="toy",
        split="train",
        shard_size=4,
        shuffle_seed=None,
        workers=1,
        frame_size=None,
        progress=False,
    )
    return str(tmp_path / "train" / "toy-train-000000.tar")


def test_truncated_tar_raises_in_the_reader(tmp_path) -> None:
    path = Path(_one_shard(tmp_path))
    complete = [key for key, _ in iter_shard(str(path))]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])
    got = []
    with pytest.raises(ShardError, match="unexpected end of data"):
        got.extend(key for key, _ in iter_shard(str(path)))
    assert len(complete) == 4 and got == complete[: len(got)] and len(got) < 4  # no partial sample


def test_reader_matches_tarfile_and_drops_only_silhouettes_when_asked(tmp_path) -> None:
    path = _one_shard(tmp_path)
    with tarfile.open(path) as tar:  # the standard library's view of the same file
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    samples = list(iter_shard(path))
    assert len(samples) == 4
    assert {f"{key}.{field}": data for key, fields in samples for field, data in fields.items()} == members
    light = list(iter_shard(path, select=without_silhouettes))
    for (key, full), (key2, fields) in zip(samples, light):
        assert key == key2 and fields == {k: v for k, v in full.items() if not k.startswith("s")}
        assert any(k.startswith("s") for k in full)
    # a sample read without silhouettes decodes to the same frames
    a = parse_sample(*light[1], "toy", silhouettes=False)
    b = parse_sample(*samples[1], "toy", silhouettes=True)
    np.testing.assert_array_equal(decode_frames(a), decode_frames(b))
    assert a.silhouettes is None and decode_silhouettes(b).shape[0] == len(b.frames)


def test_unreadable_shard_is_one_shard_error(tmp_path) -> None:
    with pytest.raises(ShardError, match="FileNotFoundError"):
        list(iter_shard(str(tmp_path / "nowhere.tar")))
    with pytest.raises(ShardError, match="exited with status 3"):
        list(iter_shard("pipe:exit 3"))
    (tmp_path / "not.tar").write_bytes(b"hello" * 200)
    with pytest.raises(ShardError, match="ReadError"):
        list(iter_shard(str(tmp_path / "not.tar")))
