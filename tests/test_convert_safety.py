"""Untrusted input: the restricted unpickler and the one-message layout validation of RAW paths."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from biggait.data_prep import casiab, ccpg, sustech1k
from biggait.data_prep.safe_pickle import UnsafePickleError, load_pickle, loads_pickle
from biggait.errors import CorruptDataError, DatasetNotFoundError


class _MakesADirectory:
    """Unpickling this would call os.mkdir: stands in for any code a pickle can run."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (os.mkdir, (self.target,))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_arrays_and_containers_load_under_every_protocol(protocol: int) -> None:
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros((2, 3, 5, 5), np.uint8)]
    obj = {"frames": arrays, "meta": ("nm-01", 3, 0.5, None), "hw": np.float64(2.0), "dt": np.dtype("u1")}
    back = loads_pickle(pickle.dumps(obj, protocol=protocol))
    for a, b in zip(arrays, back["frames"], strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    assert back["meta"] == obj["meta"] and back["hw"] == 2.0 and back["dt"] == np.uint8


def test_pickle_that_would_run_code_is_refused(tmp_path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"rgbs": _MakesADirectory(target)}))
    pickle.loads(path.read_bytes())
    assert target.exists()  # plain pickle really runs it
    target.rmdir()
    with pytest.raises(
        UnsafePickleError, match=r"evil\.pkl: refusing to load posix\.mkdir|refusing to load os"
    ):
        load_pickle(path)
    assert not target.exists()


def test_garbage_pickle_is_one_corrupt_data_error(tmp_path) -> None:
    (tmp_path / "x.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CorruptDataError, match=r"x\.pkl: not a readable pickle"):
        load_pickle(tmp_path / "x.pkl")


def test_malicious_sequence_is_skipped_and_reported_by_the_converter(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for subject in ("001", "002", "080"):
        folder = tmp_path / "raw" / subject / "nm-01" / "090"
        folder.mkdir(parents=True)
        rgbs = rng.integers(0, 256, (2, 3, 128, 128), dtype=np.uint8)
        payload = _MakesADirectory(tmp_path / "pwned") if subject == "002" else rgbs
        (folder / "090-rgbs.pkl").write_bytes(pickle.dumps(payload))
        (folder / "090-ratios.pkl").write_bytes(pickle.dumps(np.float32([0.4, 0.5])))
        (folder / "090-sils.pkl").write_bytes(pickle.dumps(np.zeros((2, 128, 128), np.uint8)))
    report = casiab.prepare(tmp_path / "raw", tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "pwned").exists()
    assert report["splits"]["train"]["n_sequences_written"] == 1
    skipped = json.loads((tmp_path / "out" / "train" / "skipped.json").read_text())["skipped"]
    assert len(skipped) == 1 and "002" in skipped[0]["spec"] and "refusing to load" in skipped[0]["reason"]


def test_missing_raw_names_the_path_and_the_layout(tmp_path) -> None:
    with pytest.raises(
        DatasetNotFoundError, match=r"(?s)RAW=.*nowhere is not a directory.*U\{0-3\}_D\{0-3\}"
    ):
        ccpg.prepare(tmp_path / "nowhere", tmp_path / "out")


def test_raw_one_level_too_high_shows_expected_and_found(tmp_path) -> None:
    frame = tmp_path / "datasets" / "CCPG" / "000" / "U0_D0" / "1_1" / "00001.jpg"
    frame.parent.mkdir(parents=True)
    cv2.imwrite(str(frame), np.zeros((20, 10, 3), np.uint8))
    with pytest.raises(DatasetNotFoundError) as info:
        ccpg.prepare(tmp_path / "datasets", tmp_path / "out")
    message = str(info.value)
    assert "does not match the CCPG layout" in message and "subject-id pattern" in message
    assert "expected: <id 000-199>/<type U{0-3}_D{0-3}[_BG]>" in message
    assert "e.g." in message and "CCPG/000/U0_D0/1_1/00001.jpg" in message  # what was really found
    assert "Traceback" not in message and message.count("\n") <= 4


def test_a_casiab_tree_given_to_the_ccpg_converter(tmp_path) -> None:
    folder = tmp_path / "raw" / "001" / "nm-01" / "000"
    folder.mkdir(parents=True)
    (folder / "000-rgbs.pkl").write_bytes(pickle.dumps(np.zeros((1, 3, 8, 8), np.uint8)))
    with pytest.raises(
        DatasetNotFoundError, match=r"(?s)no <id>/<type>/<view>/ folders match.*001/nm-01/000/000-rgbs"
    ):
        ccpg.prepare(tmp_path / "raw", tmp_path / "out")


def test_sequence_folders_without_the_named_pickles(tmp_path) -> None:
    folder = tmp_path / "raw" / "0000" / "00-nm" / "000"
    folder.mkdir(parents=True)
    (folder / "00-000-LiDAR-PCDs.pkl").write_bytes(pickle.dumps([]))
    with pytest.raises(
        DatasetNotFoundError, match=r"(?s)1 sequence folder\(s\) hold none.*Camera-RGB_raw.*found"
    ):
        sustech1k.prepare(tmp_path / "raw", tmp_path / "out")


def test_right_names_wrong_contents_fail_before_the_conversion(tmp_path) -> None:
    for subject in ("001", "002"):
        folder = tmp_path / "raw" / subject / "nm-01" / "000"
        folder.mkdir(parents=True)
        (folder / "000-rgbs.pkl").write_bytes(
            pickle.dumps(np.zeros((2, 128, 128, 3), np.uint8))
        )  # HWC, not CHW
        (folder / "000-ratios.pkl").write_bytes(pickle.dumps(np.float32([0.4, 0.5])))
        (folder / "000-sils.pkl").write_bytes(pickle.dumps(np.zeros((2, 128, 128), np.uint8)))
    with pytest.raises(
        CorruptDataError, match=r"(?s)none of the first 2 sequences.*expected frames \[T,3,H,W\]"
    ):
        casiab.prepare(tmp_path / "raw", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "train").exists()
