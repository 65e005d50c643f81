"""Identity-level identification: distinct people per probe (nearest template), its score against the
evaluator's, open-set decisions and their calibration, windows over tracks (no model needed: embeddings are
drawn at random around one centre per person)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from biggait.calibrate import main as calibrate_main
from biggait.errors import ConfigError
from biggait.evaluation import evaluate_detailed, part_euclidean
from biggait.gallery import Gallery, load_gallery, read_gallery_meta
from biggait.identify import main as identify_main
from biggait.openset import UNKNOWN, attempts, calibrate, decide, operating_point
from biggait.ranking import rank_identities, score
from biggait.windows import track_summary, window_bounds

MODEL = "f" * 64


def _people(n_ids: int, per_id: int, *, seed: int = 0, spread: float = 0.6, first: int = 0) -> Gallery:
    """`per_id` walks of each of `n_ids` people: a centre per person plus noise, [N, 8, 4]."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1000 + first).normal(size=(first + n_ids, 8, 4))[first:]
    emb = np.concatenate([c + spread * rng.normal(size=(per_id, 8, 4)) for c in centres])
    ids = [f"{first + i:03d}" for i in range(n_ids) for _ in range(per_id)]
    labels = [f"{ident}/walk{k}" for ident in ids[::per_id] for k in range(per_id)]
    return Gallery(emb.astype(np.float32), labels, ids, ["test"] * len(ids), MODEL)


def test_rank_identities_lists_distinct_people_by_their_nearest_template(tmp_path: Path) -> None:
    gallery, probes = _people(12, 4, seed=1), _people(12, 2, seed=2)
    ranking = rank_identities(gallery, probes, top_k=5)
    d = part_euclidean(torch.from_numpy(probes.embeddings), torch.from_numpy(gallery.embeddings)).numpy()
    ids = np.asarray(gallery.identities)
    for p in range(len(probes)):
        per_person = {i: d[p, ids == i].min() for i in set(gallery.identities)}
        expected = sorted(per_person, key=per_person.get)[:5]
        assert ranking.identities[p] == expected and len(set(ranking.identities[p])) == 5
        np.testing.assert_allclose(ranking.distances[p], [per_person[i] for i in expected], rtol=1e-5)
        best_rows = [int(np.flatnonzero(ids == i)[d[p, ids == i].argmin()]) for i in expected]
        assert ranking.templates[p] == [gallery.labels[r] for r in best_rows]
    # from the file, 5 gallery rows at a time: the same ranking (exact, not approximate)
    gallery.save(tmp_path / "g.npz")
    chunked = rank_identities(tmp_path / "g.npz", probes, top_k=5, budget=5 * len(probes))
    assert chunked.identities == ranking.identities and chunked.templates == ranking.templates


@pytest.mark.filterwarnings("ignore:.*view pairs have no probe")
def test_score_equals_the_evaluator_on_the_same_split() -> None:
    """identify --score's rank-1 / rank-5 / mAP are the evaluator's numbers: one probe view and one gallery
    view, so the evaluator's view-pair cell and ReID protocol see exactly these probes and this gallery."""
    gallery, probes = _people(10, 3, seed=3, spread=1.1), _people(10, 2, seed=4, spread=1.1)
    ours = score(gallery, probes)
    assert 20 < ours["rank1"] < 100 and ours["rank1"] <= ours["rank5"]  # a case where ranks and mAP differ
    emb = np.concatenate([gallery.embeddings, probes.embeddings])
    labels = gallery.identities + probes.identities
    n_g, n_p = len(gallery), len(probes)
    ccpg = evaluate_detailed(
        "ccpg",
        emb,
        labels,
        ["U0_D0"] * n_g + ["U0_D0_BG"] * n_p,
        ["1_0"] * n_g + ["2_0"] * n_p,
        partial=["test"],
    )
    assert ours["rank1"] == pytest.approx(ccpg.metrics["BG"], abs=0.006)  # the evaluator rounds to 0.01
    assert ours["mAP"] == pytest.approx(ccpg.metrics["reid/BG/mAP"], abs=1e-6)
    sustech = evaluate_detailed(
        "sustech1k",
        emb,
        labels,
        ["00-nm"] * n_g + ["01-nm"] * n_p,
        ["0"] * n_g + ["1"] * n_p,
        partial=["test"],
    )
    assert ours["rank5"] == pytest.approx(sustech.metrics["rank5/Normal"], abs=0.006)
    assert ours["rank1"] == pytest.approx(sustech.metrics["Normal"], abs=0.006)
    # probes of people who are not enrolled are counted apart, not as misses
    strangers = _people(3, 2, seed=5, first=50)
    mixed = Gallery(np.concatenate([probes.embeddings, strangers.embeddings]), probes.labels + strangers.labels,
                    probes.identities + strangers.identities, ["t"] * (n_p + 6), MODEL)  # fmt: skip
    assert score(gallery, mixed) == {**ours, "unknown": 6.0}


def test_open_set_decision_needs_the_threshold_and_the_margin() -> None:
    gallery, probes = _people(4, 2, seed=6), _people(4, 1, seed=7)
    ranking = rank_identities(gallery, probes, top_k=3)
    assert decide(ranking) == [ids[0] for ids in ranking.identities]  # closed set: always a name
    d1 = np.array([ds[0] for ds in ranking.distances])
    gap = np.array([ds[1] - ds[0] for ds in ranking.distances])
    cut = float(np.median(d1))
    by_threshold = decide(ranking, threshold=cut)
    assert [n != UNKNOWN for n in by_threshold] == list(d1 <= cut)
    m = float(np.median(gap))
    both = decide(ranking, threshold=cut, margin=m)
    assert [n != UNKNOWN for n in both] == list((d1 <= cut) & (gap >= m))
    with pytest.raises(ConfigError, match="threshold"):
        decide(ranking, threshold=float("nan"))
    with pytest.raises(ConfigError, match="margin"):
        decide(ranking, margin=-1.0)


def test_calibration_meets_the_target_far_and_identify_applies_it(tmp_path: Path, capsys) -> None:
    gallery = _people(20, 3, seed=8, spread=0.9)
    known, strangers = _people(20, 4, seed=9, spread=0.9), _people(10, 4, seed=10, spread=0.9, first=100)
    calib = Gallery(np.concatenate([known.embeddings, strangers.embeddings]), known.labels + strangers.labels,
                    known.identities + strangers.identities, ["t"] * 120, MODEL)  # fmt: skip
    tries = attempts(rank_identities(gallery, calib, top_k=3))
    assert (
        len(tries.genuine) == 80 and len(tries.impostor) == 120
    )  # strangers + known with themselves left out
    for far in (0.0, 0.05, 0.2):
        chosen = calibrate(tries, far=far)
        assert chosen["FAR"] <= 100 * far + 1e-9
        assert operating_point(tries, chosen["threshold"], chosen["margin"])["FRR"] == chosen["FRR"]
    loose, tight = calibrate(tries, far=0.2), calibrate(tries, far=0.0)
    assert loose["FRR"] <= tight["FRR"] and tight["FRR"] < 100  # a stricter FAR costs false rejects
    gallery.save(tmp_path / "g.npz")
    calib.save(tmp_path / "calib.npz")
    assert calibrate_main([str(tmp_path / "g.npz"), str(tmp_path / "calib.npz"), "--far", "0.05",
                           "--plot", str(tmp_path / "det.png")]) == 0  # fmt: skip
    assert (tmp_path / "det.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = read_gallery_meta(tmp_path / "g.npz")["openset"]
    assert stored["threshold"] == pytest.approx(calibrate(tries, far=0.05)["threshold"])
    assert len(load_gallery(tmp_path / "g.npz")) == 60  # the templates are untouched
    capsys.readouterr()
    # identify picks the calibration up: a stranger far away is unknown, a known walk is named
    test = _people(20, 1, seed=11, spread=0.5)
    test.save(tmp_path / "test.npz")
    assert identify_main([str(tmp_path / "g.npz"), str(tmp_path / "test.npz"), "--score", "--json",
                          str(tmp_path / "r.json")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "the gallery's calibration" in out and "FAR" in out and "rank-1" in out
    records = json.loads((tmp_path / "r.json").read_text())
    assert [r["probe_identity"] for r in records] == test.identities
    expected = decide(
        rank_identities(gallery, test, top_k=3), threshold=stored["threshold"], margin=stored["margin"]
    )
    assert [r["decision"] for r in records] == expected


def test_windows_cover_the_track_and_the_summary_shows_a_switch() -> None:
    assert window_bounds(40, 16, 8) == [(0, 16), (8, 24), (16, 32), (24, 40)]
    assert window_bounds(30, 16, 8) == [(0, 16), (8, 24), (14, 30)]  # the tail is covered
    assert window_bounds(5, 16, 8) == [(0, 5)]
    with pytest.raises(ConfigError, match="stride"):
        window_bounds(10, 4, 0)
    labels = [f"cam/1@{a}-{a + 15}" for a in (1, 9, 17, 25, 33)] + ["cam/2@1-16"]
    names = ["ann", "ann", "bob", "bob", "bob", UNKNOWN]
    summary = {s["track"]: s for s in track_summary(labels, names, [0.1, 0.2, 0.3, 0.3, 0.4, 0.9])}
    one = summary["cam/1"]
    assert (one["identity"], one["votes"], one["switches"]) == ("bob", 3, 1)
    assert one["mean_distance"] == pytest.approx(1 / 3) and one["timeline"] == "annx2 bobx3"
    assert summary["cam/2"]["identity"] == UNKNOWN and summary["cam/2"]["switches"] == 0


def test_identify_cli_summarises_windowed_tracks(tmp_path: Path, capsys) -> None:
    gallery = _people(3, 2, seed=12, spread=0.3)
    walks = _people(3, 3, seed=13, spread=0.3)  # 3 windows of each of 3 people ...
    labels = [f"cam/1@{1 + 8 * k}-{16 + 8 * k}" for k in range(6)] + [
        f"cam/2@{1 + 8 * k}-{16 + 8 * k}" for k in range(3)
    ]
    probes = Gallery(walks.embeddings, labels, ["cam"] * 9, ["t"] * 9, MODEL)  # track 1 shows 000 then 001
    gallery.save(tmp_path / "g.npz")
    probes.save(tmp_path / "p.npz")
    assert (
        identify_main([str(tmp_path / "g.npz"), str(tmp_path / "p.npz"), "--json", str(tmp_path / "r.json")])
        == 0
    )
    out = capsys.readouterr().out
    tracks = {t["track"]: t for t in json.loads((tmp_path / "r.json").read_text())["tracks"]}
    assert tracks["cam/1"]["timeline"] == "000x3 001x3" and tracks["cam/1"]["switches"] == 1
    assert tracks["cam/2"]["identity"] == "002" and tracks["cam/2"]["switches"] == 0
    assert "000x3 001x3" in out and "9 probes against 3 gallery identities" in out
