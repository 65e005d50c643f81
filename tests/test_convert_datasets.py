"""Raw dataset converters on small generated trees: shard contents, split, pad-and-resize, reports, CLI."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from biggait.data.pipeline import decode_frames, decode_silhouettes, iter_shard, parse_sample
from biggait.data_prep import casiab, ccpg, opengait, sustech1k
from biggait.data_prep.layout import REPORT
from biggait.errors import ConfigError, DatasetNotFoundError
from biggait.preprocess import pad_and_resize

ROOT = Path(__file__).resolve().parents[1]


def read_split(split_dir: Path) -> dict[tuple, tuple]:
    """(subject, type, view) -> (sample, frames [T,H,W,3], silhouettes or None), from the written tars."""
    out = {}
    for path in sorted(split_dir.glob("*.tar")):
        for key, fields in iter_shard(str(path)):
            sample = parse_sample(key, fields, path.name, silhouettes=True)
            sils = decode_silhouettes(sample) if sample.silhouettes else None
            out[(sample.subject, sample.seq_type, sample.view)] = (sample, decode_frames(sample), sils)
    return out


def dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=4))


# ----------------------------------------------------------------------------------------------- CCPG
CCPG_SIZES = ((256, 64), (256, 200), (90, 40), (50, 80))  # pad (identity resize), crop (identity), any, wide


def make_ccpg(raw: Path, rng: np.random.Generator) -> dict[tuple, list[np.ndarray]]:
    """Frames as RGB arrays per sequence; one PNG per size, plus a lossy JPEG and an unreadable file."""
    truth = {}
    for subject in ("000", "001", "100", "101"):
        for seq_type in ("U0_D0", "U1_D0_BG"):
            for view in ("1_1", "2_90"):
                folder = raw / subject / seq_type / view
                folder.mkdir(parents=True)
                frames = []
                for t, (h, w) in enumerate(CCPG_SIZES):
                    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                    cv2.imwrite(str(folder / f"{t:05d}.png"), rgb[..., ::-1])
                    frames.append(rgb)
                cv2.imwrite(str(folder / "00010.jpg"), rng.integers(0, 256, (120, 60, 3), dtype=np.uint8))
                (folder / "00011.jpg").write_bytes(b"not a jpeg")  # unreadable: skipped and counted
                truth[(subject, seq_type, view)] = frames
    (raw / "000" / "U0_D0" / "3_0").mkdir()  # a view folder without frames: ignored, reported
    return truth


def test_pad_and_resize_matches_a_hand_computed_frame() -> None:
    rng = np.random.default_rng(0)
    narrow = rng.integers(0, 256, (256, 64, 3), dtype=np.uint8)  # height already 256: no resampling
    expected = np.zeros((256, 128, 3), np.uint8)
    expected[:, 32:96] = narrow  # centred on black at (128 - 64) // 2
    np.testing.assert_array_equal(pad_and_resize(narrow, (256, 128)), expected)
    wide = rng.integers(0, 256, (256, 201, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        pad_and_resize(wide, (256, 128)), wide[:, 36:164]
    )  # centre crop (201-128)//2
    half = rng.integers(0, 256, (512, 100, 3), dtype=np.uint8)  # 512x100 -> int(100*256/512) = 50 wide
    out = pad_and_resize(half, (256, 128))
    assert out.shape == (256, 128, 3)
    assert not out[:, :39].any() and not out[:, 89:].any() and out[:, 39:89].any()  # left pad (128-50)//2


def test_ccpg_shards_split_frames_and_report(tmp_path) -> None:
    truth = make_ccpg(tmp_path / "raw", np.random.default_rng(1))
    report = ccpg.prepare(tmp_path / "raw", tmp_path / "out", workers=1, shard_size=3, progress=False)
    train, test = read_split(tmp_path / "out" / "train"), read_split(tmp_path / "out" / "test")
    assert {k[0] for k in train} == {"000", "001"} and {k[0] for k in test} == {"100", "101"}
    assert set(train) | set(test) == set(truth)
    for key, (sample, frames, sils) in (train | test).items():
        src = truth[key]
        assert frames.shape == (len(CCPG_SIZES) + 1, 256, 128, 3) and sils is None
        np.testing.assert_array_equal(frames[0], pad_and_resize(src[0], (256, 128)))
        np.testing.assert_array_equal(frames[0][:, 32:96], src[0])  # lossless PNG round trip, exact pad
        np.testing.assert_array_equal(frames[1], src[1][:, 36:164])
        want = [w / h for h, w in CCPG_SIZES] + [60 / 120]
        np.testing.assert_allclose(sample.ratios, np.float32(want))
    split = report["splits"]["train"]
    assert split["n_sequences_written"] == 8 and split["n_frames_skipped"] == 8
    assert all(n["frames"] == ["00011.jpg"] for n in split["skipped_frames"])
    assert report["ignored_folders"]["no_data"] == ["000/U0_D0/3_0"]
    on_disk = json.loads((tmp_path / "out" / REPORT).read_text())
    assert on_disk["splits"]["test"]["n_frames_skipped"] == 8


def test_ccpg_command_line_with_workers_and_resume(tmp_path) -> None:
    make_ccpg(tmp_path / "raw", np.random.default_rng(2))
    cmd = [sys.executable, "-m", "biggait.data_prep", "ccpg", "--raw", str(tmp_path / "raw")]
    cmd += ["--out", str(tmp_path / "out"), "--workers", "2", "--shard-size", "4", "--no-progress"]
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "ccpg/train: 8/8 sequences" in first.stdout
    tars = sorted((tmp_path / "out").glob("*/*.tar"))
    stamps = {p: p.stat().st_mtime_ns for p in tars}
    tars[0].unlink()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert all(p.stat().st_mtime_ns == stamps[p] for p in tars[1:])  # complete shards are reused
    assert tars[0].is_file()
    report = json.loads((tmp_path / "out" / REPORT).read_text())
    assert report["splits"]["train"]["n_frames_skipped"] == 8  # notes survive shards that were reused


# --------------------------------------------------------------------------------------------- CASIA-B*
def make_casiab(raw: Path, rng: np.random.Generator) -> dict[tuple, dict]:
    truth = {}
    for subject in ("001", "074", "075", "124"):
        for seq_type in ("nm-01", "cl-02"):
            for view in ("000", "090"):
                t = int(rng.integers(2, 5))
                seq = {
                    "rgbs": rng.integers(0, 256, (t, 3, 128, 128), dtype=np.uint8),
                    "ratios": rng.uniform(0.2, 0.8, t).astype(np.float32),
                    "sils": (rng.random((t, 128, 128)) > 0.5).astype(np.uint8) * 255,
                    "aligned-sils": np.zeros((t, 64, 44), np.uint8),
                }
                for name, array in seq.items():
                    dump(raw / subject / seq_type / view / f"{view}-{name}.pkl", array)
                truth[(subject, seq_type, view)] = seq
    return truth


def test_casiab_shards_are_bit_exact_and_split(tmp_path) -> None:
    truth = make_casiab(tmp_path / "raw", np.random.default_rng(3))
    casiab.prepare(tmp_path / "raw", tmp_path / "out", workers=1, shard_size=5, progress=False)
    train, test = read_split(tmp_path / "out" / "train"), read_split(tmp_path / "out" / "test")
    assert {k[0] for k in train} == {"001", "074"} and {k[0] for k in test} == {"075", "124"}
    assert list(test) == sorted(test)  # test shards keep the sorted order
    for key, (sample, frames, sils) in (train | test).items():
        seq = truth[key]
        np.testing.assert_array_equal(frames, seq["rgbs"].transpose(0, 2, 3, 1))  # CHW -> HWC, lossless
        np.testing.assert_array_equal(sample.ratios, seq["ratios"])  # already w/h
        np.testing.assert_array_equal(sils, seq["sils"])
        assert (sample.seq_type, sample.view) == key[1:]


# -------------------------------------------------------------------------------------------- SUSTech1K
def make_sustech(raw: Path, rng: np.random.Generator) -> dict[tuple, dict]:
    truth = {}
    for subject in ("0000", "0001", "0002", "0003"):
        for seq_type, view in (("00-nm", "000"), ("01-bg", "090-far")):
            t = int(rng.integers(2, 5))
            hw = np.stack([rng.integers(100, 300, t), rng.integers(30, 120, t)], 1).astype(np.float64)
            rgb = rng.integers(0, 256, (t, 64, 64, 3), dtype=np.uint8)
            folder = raw / subject / seq_type / view
            dump(folder / f"04-{view}-Camera-Ratios-HW.pkl", hw)
            dump(folder / f"05-{view}-Camera-RGB_raw.pkl", rgb)
            dump(folder / f"00-{view}-LiDAR-PCDs.pkl", [np.zeros((5, 3), np.float32)] * t)  # ignored modality
            truth[(subject, seq_type, view)] = {"hw": hw, "rgb": rgb}
    return truth


def test_sustech1k_partition_file_ratios_and_frames(tmp_path) -> None:
    raw = tmp_path / "raw"
    truth = make_sustech(raw, np.random.default_rng(4))
    (raw / "SUSTech1K.json").write_text(
        json.dumps({"TRAIN_SET": ["0001", "0003"], "TEST_SET": ["0000", "0002"]})
    )
    sustech1k.prepare(raw, tmp_path / "out", workers=1, progress=False)
    train, test = read_split(tmp_path / "out" / "train"), read_split(tmp_path / "out" / "test")
    assert {k[0] for k in train} == {"0001", "0003"} and {k[0] for k in test} == {"0000", "0002"}
    for key, (sample, frames, _) in (train | test).items():
        np.testing.assert_array_equal(frames, truth[key]["rgb"])
        hw = truth[key]["hw"]
        np.testing.assert_allclose(sample.ratios, (hw[:, 1] / hw[:, 0]).astype(np.float32))  # w/h


def test_sustech1k_without_partition_uses_the_documented_rule(tmp_path, monkeypatch) -> None:
    make_sustech(tmp_path / "raw", np.random.default_rng(5))
    monkeypatch.setattr(sustech1k, "N_TRAIN", 3)
    with pytest.warns(UserWarning, match="first 3 sorted ids"):
        sustech1k.prepare(tmp_path / "raw", tmp_path / "out", workers=1, progress=False)
    assert {k[0] for k in read_split(tmp_path / "out" / "train")} == {"0000", "0001", "0002"}
    assert {k[0] for k in read_split(tmp_path / "out" / "test")} == {"0003"}


# ---------------------------------------------------------------------------------- generic OpenGait tree
def test_opengait_selects_modalities_by_name_not_position(tmp_path) -> None:
    raw, rng = tmp_path / "raw", np.random.default_rng(6)
    truth = {}
    for subject in ("000", "150"):
        view = "2_1"
        aligned = rng.integers(0, 256, (3, 3, 256, 128), dtype=np.uint8)
        ratios = np.float32([0.3, 0.4, 0.5])
        folder = raw / subject / "U0_D0" / view
        dump(folder / f"{view}-aligned-rgbs.pkl", aligned)  # sorts before ratios and rgbs
        dump(folder / f"{view}-ratios.pkl", ratios)
        dump(
            folder / f"{view}-rgbs.pkl", np.zeros((3, 3, 128, 128), np.uint8)
        )  # squashed decoy (docs/fidelity.md)
        truth[subject] = (aligned, ratios)
    part = tmp_path / "part.json"
    part.write_text(json.dumps({"TRAIN_SET": ["000"], "TEST_SET": ["150"]}))
    modalities = opengait.PickleModalities(frames="aligned-rgbs", ratios="ratios")
    opengait.prepare(raw, tmp_path / "out", modalities=modalities, partition=part, workers=1, progress=False)
    for split, subject in (("train", "000"), ("test", "150")):
        ((sample, frames, _),) = read_split(tmp_path / "out" / split).values()
        np.testing.assert_array_equal(frames, truth[subject][0].transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(sample.ratios, truth[subject][1])
    with pytest.raises(
        DatasetNotFoundError, match=r"(?s)expected: .*\{sils, ratios\}.*found: .*aligned-rgbs"
    ):
        opengait.prepare(
            raw,
            tmp_path / "o2",
            modalities=opengait.PickleModalities(frames="sils", ratios="ratios"),
            partition=part,
        )


def test_opengait_needs_a_partition(tmp_path) -> None:
    dump(tmp_path / "raw" / "001" / "nm-01" / "000" / "000-rgbs.pkl", np.zeros((1, 3, 8, 8), np.uint8))
    dump(tmp_path / "raw" / "001" / "nm-01" / "000" / "000-ratios.pkl", np.ones(1, np.float32))
    with pytest.raises(ConfigError, match="--partition"):
        opengait.prepare(
            tmp_path / "raw",
            tmp_path / "out",
            modalities=opengait.PickleModalities(frames="rgbs", ratios="ratios"),
        )


def test_modality_names() -> None:
    assert opengait.modality_name("04-000-Camera-Ratios-HW.pkl", "000") == "Camera-Ratios-HW"
    assert opengait.modality_name("000-rgbs.pkl", "090") == "rgbs"
    assert opengait.modality_name("2_1-aligned-rgbs.pkl", "2_1") == "aligned-rgbs"
