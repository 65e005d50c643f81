"""The synthetic gait world: determinism, exact silhouettes, identity statistics, CCPG naming, shards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from biggait.data.shards import read_manifest
from biggait.data_prep.synthetic import (
    CCPG_TYPES,
    SyntheticConfig,
    gait_parameters,
    identity_parameters,
    list_sequences,
    prepare,
    render_sequence,
)
from biggait.errors import ConfigError
from biggait.preprocess import pad_and_resize

SMALL = SyntheticConfig(num_train_ids=3, num_test_ids=2, views=(60, 90), length=(8, 10), canvas=128)


def test_same_seed_same_pixels_other_seed_other_pixels() -> None:
    spec = (1, "U1_D1", 90, 0)
    a, b = render_sequence(spec, SMALL), render_sequence(spec, SMALL)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.silhouettes, b.silhouettes)
    np.testing.assert_array_equal(a.ratios, b.ratios)
    c = render_sequence(spec, SyntheticConfig(**{**SMALL.__dict__, "seed": 1}))
    assert not np.array_equal(a.frames[: len(c.frames)], c.frames[: len(a.frames)])


def test_silhouette_is_exactly_the_drawn_body() -> None:
    """Swap only the background: pixels change exactly outside the silhouette, never inside.

    The crop is resized bilinearly (as CCPG's frames), so the two-pixel rim where body and background are
    blended is allowed to change; everything two pixels inside the silhouette must not.
    """
    import cv2

    spec = (0, "U0_D0_BG", 60, 0)
    a = render_sequence(spec, SMALL)
    b = render_sequence(spec, SMALL, background=7)
    np.testing.assert_array_equal(a.silhouettes, b.silhouettes)
    kernel = np.ones((5, 5), np.uint8)
    body = a.silhouettes > 0
    interior = np.stack([cv2.erode(s.astype(np.uint8), kernel) for s in body]) > 0
    grown = np.stack([cv2.dilate(s.astype(np.uint8), kernel) for s in body]) > 0
    changed = np.any(a.frames != b.frames, axis=-1)
    assert not changed[interior].any(), "a body pixel depends on the background"
    inside_crop = np.any(a.frames > 0, axis=-1) & np.any(b.frames > 0, axis=-1)
    outside = ~grown & inside_crop
    assert changed[outside].mean() > 0.9, "background pixels should change with the background"
    assert 0.05 < body.mean() < 0.6


def test_identities_differ_but_agree_with_themselves() -> None:
    cfg = SyntheticConfig()
    params = [identity_parameters(cfg, i) | gait_parameters(cfg, i) for i in range(40)]
    keys = sorted(params[0])
    table = np.array([[p[k] for k in keys] for p in params])
    # no single parameter separates all identities: their ranges overlap (many near ties per parameter)
    for j, key in enumerate(keys):
        gaps = np.diff(np.sort(table[:, j])) / (np.ptp(table[:, j]) + 1e-12)
        assert gaps.min() < 0.01, key

    # measured from the pixels: the dominant period of the silhouette width follows the identity's cadence
    def period(spec, c):
        # the lag at which the silhouette sequence best repeats itself (a full or half gait cycle)
        sil = (render_sequence(spec, c).silhouettes > 0).astype(np.float32)
        lags = np.arange(8, len(sil) // 2)
        diff = [np.abs(sil[lag:] - sil[:-lag]).mean() for lag in lags]
        return lags[int(np.argmin(diff))]

    long = SyntheticConfig(num_train_ids=4, num_test_ids=1, length=(80, 80), views=(60, 90, 120), canvas=128)
    cycles = []
    for s in range(4):
        cycle = 2 * np.pi / gait_parameters(long, s)["cadence"]  # frames per gait cycle of this identity
        cycles.append(cycle)
        for t in ("U0_D0", "U3_D3"):
            for v in (60, 90, 120):
                # the width of a walker peaks once or twice per cycle (two steps), whatever the outfit or view
                measured = period((s, t, v, 0), long) / cycle
                assert min(abs(measured - 0.5), abs(measured - 1.0)) < 0.12, (s, t, v, measured)
    assert max(cycles) / min(cycles) > 1.1, "identities should walk at different cadences"


def test_ccpg_naming_split_and_sizes() -> None:
    train, test = list_sequences(SMALL, "train"), list_sequences(SMALL, "test")
    assert {s[0] for s in train} == {0, 1, 2} and {s[0] for s in test} == {3, 4}
    assert len(train) == 3 * len(CCPG_TYPES) * 2
    rec = render_sequence(test[0], SMALL)
    assert rec.subject == "003" and rec.seq_type in CCPG_TYPES and rec.view == "1_060"
    assert rec.frames.shape[1:] == (128, 64, 3) and rec.silhouettes.shape[1:] == (128, 64)
    assert 8 <= len(rec.frames) <= 10 and np.all((rec.ratios > 0.1) & (rec.ratios < 1.5))
    with pytest.raises(ConfigError, match="missing"):
        SyntheticConfig(types=("U0_D0",))
    with pytest.raises(ConfigError, match="views"):
        SyntheticConfig(views=(90,))


def test_pad_and_resize_matches_spec() -> None:
    crop = np.arange(40 * 10, dtype=np.uint8).reshape(40, 10)
    out = pad_and_resize(
        crop, (80, 40)
    )  # new width int(10 * 80 / 40) = 20, centred: 10 black columns each side
    assert out.shape == (80, 40) and not out[:, :10].any() and not out[:, 30:].any()
    wide = np.ones((10, 40), np.uint8)
    assert pad_and_resize(wide, (20, 10)).shape == (20, 10)  # wider than 2:1: centre crop


def test_prepare_writes_readable_shards_and_cli(tmp_path: Path) -> None:
    manifests = prepare(tmp_path / "a", SMALL, workers=1, shard_size=8, progress=False)
    assert manifests["train"]["n_sequences"] == len(list_sequences(SMALL, "train"))
    test_manifest = read_manifest(tmp_path / "a" / "test")
    assert test_manifest["has_silhouettes"] and sorted(test_manifest["sequences_per_subject"]) == [
        "003",
        "004",
    ]
    cmd = [
        sys.executable,
        "-m",
        "biggait.data_prep",
        "synthetic",
        "--out",
        str(tmp_path / "b"),
        "--workers",
        "1",
        "--train-ids",
        "2",
        "--test-ids",
        "2",
        "--views",
        "60",
        "90",
        "--length",
        "4",
        "5",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert read_manifest(tmp_path / "b" / "train")["n_sequences"] == 2 * len(CCPG_TYPES) * 2
