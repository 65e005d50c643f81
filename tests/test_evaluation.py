"""Evaluator: brute-force references written from OpenGait `opengait/evaluation/evaluator.py`, hand-computed cases, torchmetrics cross-checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP

from biggait.evaluation import GaitRetrievalMetric, ProtocolError, evaluate, evaluate_detailed, part_euclidean
from biggait.evaluation.report import rank1_heatmap, results_markdown, save_figure, write_results_json


# ---------------------------------------------------------------- brute-force references (loops, OpenGait `opengait/evaluation/evaluator.py`)
def ref_dist(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean([np.linalg.norm(x[:, p] - y[:, p]) for p in range(x.shape[1])]))


def ref_gait(emb, subj, types, views, probe_types, gallery_types, rank=1, substring=False):
    """OpenGait's view-pair rank-k matrix (cells rounded to 2 decimals), then de_diag."""

    def is_type(t, wanted):
        return any(w in t for w in wanted) if substring else t in wanted

    vlist = sorted(set(views))
    acc = np.zeros((len(vlist), len(vlist)))
    for a, pv in enumerate(vlist):
        probes = [i for i in range(len(subj)) if is_type(types[i], probe_types) and views[i] == pv]
        for b, gv in enumerate(vlist):
            gallery = [j for j in range(len(subj)) if is_type(types[j], gallery_types) and views[j] == gv]
            hits = 0
            for i in probes:
                ranked = sorted(gallery, key=lambda j: ref_dist(emb[i], emb[j]))
                hits += any(subj[j] == subj[i] for j in ranked[:rank])
            acc[a, b] = np.round(hits * 100 / len(probes), 2)
    v = len(vlist)
    return float(np.mean((acc.sum(1) - np.diag(acc)) / (v - 1)))


def ref_reid(emb, subj, types, views, probe_types, gallery_types):
    probes = [i for i in range(len(subj)) if types[i] in probe_types]
    gallery = [j for j in range(len(subj)) if types[j] in gallery_types]
    r1, aps, inps = [], [], []
    for i in probes:
        ranked = sorted(gallery, key=lambda j: ref_dist(emb[i], emb[j]))
        ranked = [j for j in ranked if not (subj[j] == subj[i] and views[j] == views[i])]
        good = [k for k, j in enumerate(ranked) if subj[j] == subj[i]]
        if not good:
            continue
        r1.append(good[0] == 0)
        aps.append(np.mean([(n + 1) / (k + 1) for n, k in enumerate(good)]))
        inps.append(len(good) / (good[-1] + 1))
    return 100 * np.mean(r1), 100 * np.mean(aps), 100 * np.mean(inps)


def _random_set(types_list, views_list, n_ids=5, seed=0, noise=1.0):
    g = np.random.default_rng(seed)
    centers = g.normal(size=(n_ids, 6, 4))
    emb, subj, types, views = [], [], [], []
    for s in range(n_ids):
        for t in types_list:
            for v in views_list:
                emb.append(centers[s] + noise * g.normal(size=(6, 4)))
                subj.append(f"{s:03d}")
                types.append(t)
                views.append(v)
    return np.stack(emb).astype(np.float32), subj, types, views


CCPG_TYPES = ["U0_D0", "U0_D0_BG", "U1_D0", "U1_D1", "U2_D2", "U3_D3", "U0_D3"]
CCPG_CONDS = {
    "CL": (("U0_D0_BG", "U0_D0"), ("U1_D1", "U2_D2", "U3_D3")),
    "UP": (("U3_D3",), ("U0_D3",)),
    "DN": (("U1_D0",), ("U1_D1",)),
    "BG": (("U0_D0_BG",), ("U0_D0",)),
}


def test_part_euclidean_is_mean_of_per_part_norms_and_chunking_is_exact() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 5, 3, generator=g), torch.randn(11, 5, 3, generator=g)
    want = torch.stack([torch.cdist(x[:, :, p], y[:, :, p]) for p in range(3)]).mean(0)
    torch.testing.assert_close(part_euclidean(x, y), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(part_euclidean(x, y, budget=7), want, rtol=1e-5, atol=1e-5)
    flat = torch.cdist(x.flatten(1), y.flatten(1))
    assert not torch.allclose(part_euclidean(x, y), flat)  # not the 4096-d flat distance


def test_ccpg_matches_brute_force_reference() -> None:
    views = ["1_a", "2_b", "3_c"]
    emb, subj, types, view_names = _random_set(CCPG_TYPES, views, n_ids=6, seed=1, noise=1.3)
    got = evaluate("ccpg", emb, subj, types, view_names)
    short = [v.split("_")[0] for v in view_names]
    for cond, (p, gal) in CCPG_CONDS.items():
        assert got[cond] == pytest.approx(ref_gait(emb, subj, types, short, p, gal), abs=1e-9), cond
        r1, mean_ap, minp = ref_reid(emb, subj, types, short, p, gal)
        assert got[f"reid/{cond}/rank1"] == pytest.approx(r1, abs=1e-6)
        assert got[f"reid/{cond}/mAP"] == pytest.approx(mean_ap, abs=1e-6)
        assert got[f"reid/{cond}/mINP"] == pytest.approx(minp, abs=1e-6)
    assert 0 < got["CL"] < 100  # a non-degenerate case, so the comparison means something


def test_casiab_and_sustech_match_reference() -> None:
    casia_types = [f"nm-0{i}" for i in range(1, 7)] + ["bg-01", "bg-02", "cl-01", "cl-02"]
    emb, subj, types, views = _random_set(casia_types, ["000", "090", "180"], n_ids=5, seed=2, noise=1.4)
    got = evaluate("casiab", emb, subj, types, views)
    gallery = ("nm-01", "nm-02", "nm-03", "nm-04")
    for cond, probe in {"NM": ("nm-05", "nm-06"), "BG": ("bg-01", "bg-02"), "CL": ("cl-01", "cl-02")}.items():
        assert got[cond] == pytest.approx(ref_gait(emb, subj, types, views, probe, gallery), abs=1e-9)

    sus_types = ["00-nm", "01-nm", "01-bg", "02-cl", "03-cr", "03-ub", "04-uf", "04-oc", "02-nt"]
    emb, subj, types, views = _random_set(sus_types, ["000", "045", "090"], n_ids=7, seed=3, noise=1.6)
    got = evaluate("sustech1k", emb, subj, types, views)
    for cond, probe in {
        "Normal": ("01-nm",),
        "Clothing": ("cl",),
        "Overall": ("01", "02", "03", "04"),
    }.items():
        want1 = ref_gait(emb, subj, types, views, probe, ("00-nm",), 1, substring=True)
        want5 = ref_gait(emb, subj, types, views, probe, ("00-nm",), 5, substring=True)
        assert got[cond] == pytest.approx(want1, abs=1e-9)
        assert got[f"rank5/{cond}"] == pytest.approx(want5, abs=1e-9)
    assert set(got) >= {"Normal", "Bag", "Clothing", "Carrying", "Umbrella", "Uniform", "Occlusion", "Night"}


def test_hand_computed_identical_view_exclusion() -> None:
    # Two views, two ids, BG condition only matters. 1-d embeddings, one part.
    # probe (U0_D0_BG) A@v1=0.0, B@v1=10.0, A@v2=0.4, B@v2=10.4; gallery (U0_D0) A@v1=0.1, B@v1=9.0(!), A@v2=5.2,
    # B@v2=5.3. Cell (v1,v1): A->0.1 A ok, B->9.0 B ok = 100. (v1,v2): A(0)->5.2 A ok, B(10)->5.3 B ok = 100.
    # (v2,v1): A(.4)->.1 ok, B(10.4)->9.0 ok = 100. (v2,v2): A(.4)->5.2 ok, B(10.4)->5.3 ok = 100. All 100: make
    # one off-diagonal cell fail by moving gallery A@v2 to 20: (v1,v2): A(0)->5.3 B wrong, B->5.3 ok = 50;
    # (v2,v2) (diagonal, excluded): A(.4)->5.3 wrong = 50. Excluding identical views: row v1 = 50, row v2 = 100.
    vals = {
        ("A", "U0_D0_BG", "1_x"): 0.0, ("B", "U0_D0_BG", "1_x"): 10.0,
        ("A", "U0_D0_BG", "2_x"): 0.4, ("B", "U0_D0_BG", "2_x"): 10.4,
        ("A", "U0_D0", "1_x"): 0.1, ("B", "U0_D0", "1_x"): 9.0,
        ("A", "U0_D0", "2_x"): 20.0, ("B", "U0_D0", "2_x"): 5.3,
    }  # fmt: skip
    fill = {t: 50.0 for t in ("U1_D0", "U1_D1", "U2_D2", "U3_D3", "U0_D3")}
    keys = list(vals) + [(s, t, v) for t in fill for s in "AB" for v in ("1_x", "2_x")]
    emb = torch.tensor([[[vals.get(k, fill.get(k[1], 0.0) + (k[0] == "B"))]] for k in keys])
    res = evaluate_detailed("ccpg", emb, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
    views, _, matrix = res.matrices["BG"]
    assert views == ["1", "2"]
    np.testing.assert_array_equal(matrix, [[100.0, 50.0], [100.0, 50.0]])
    assert res.metrics["BG"] == pytest.approx((50.0 + 100.0) / 2)
    assert res.metrics["include/BG"] == pytest.approx(75.0)


def test_hand_computed_minp_and_map() -> None:
    # One query (id A, view 1). Gallery by distance: A@1 (removed: same id and view), B@2, A@2, B@3, A@3.
    # Kept ranking: B, A, B, A -> matches at ranks 2 and 4: AP = (1/2 + 2/4)/2 = 0.5, INP = 2/4, rank-1 miss.
    pos = {("A", "1", "U0_D0_BG"): 0.0, ("A", "1", "U0_D0"): 0.5, ("B", "2", "U0_D0"): 1.0,
           ("A", "2", "U0_D0"): 2.0, ("B", "3", "U0_D0"): 3.0, ("A", "3", "U0_D0"): 4.0}  # fmt: skip
    keys = list(pos)
    emb = torch.tensor([[[pos[k]]] for k in keys])
    from biggait.evaluation.protocols import _reid_protocol

    subj = np.array([k[0] for k in keys])
    views = np.array([k[1] for k in keys])
    types = np.array([k[2] for k in keys])
    out = _reid_protocol(emb, subj, views, types == "U0_D0_BG", types == "U0_D0")
    assert out == pytest.approx({"rank1": 0.0, "mAP": 50.0, "mINP": 50.0})


def test_reid_matches_torchmetrics_where_they_overlap() -> None:
    emb, subj, types, views = _random_set(CCPG_TYPES, ["1_a", "2_b", "3_c"], n_ids=6, seed=4, noise=1.5)
    got = evaluate("ccpg", emb, subj, types, views)
    short = np.array([v.split("_")[0] for v in views])
    subj_a, types_a = np.array(subj), np.array(types)
    probe = np.isin(types_a, ["U0_D0_BG", "U0_D0"])
    gallery = np.isin(types_a, ["U1_D1", "U2_D2", "U3_D3"])
    d = part_euclidean(torch.as_tensor(emb[probe]), torch.as_tensor(emb[gallery]))
    same = subj_a[probe][:, None] == subj_a[gallery][None, :]
    same_view = short[probe][:, None] == short[gallery][None, :]
    target = torch.as_tensor(same.astype(np.int64))
    target[torch.as_tensor(same & same_view)] = -1  # same id AND view: removed from the gallery
    indexes = torch.arange(d.shape[0])[:, None].expand_as(d)
    score = 1 / (
        1 + d
    )  # a positive similarity of the same order (torchmetrics 1.9 scores negative preds as 0)
    hit = RetrievalHitRate(top_k=1, ignore_index=-1, empty_target_action="skip")
    mean_ap = RetrievalMAP(ignore_index=-1, empty_target_action="skip")
    assert got["reid/CL/rank1"] == pytest.approx(100 * float(hit(score, target, indexes=indexes)), abs=1e-4)
    assert got["reid/CL/mAP"] == pytest.approx(100 * float(mean_ap(score, target, indexes=indexes)), abs=1e-4)


def test_errors_are_clear() -> None:
    emb, subj, types, views = _random_set(CCPG_TYPES, ["1_a", "2_b"], n_ids=3)
    with pytest.raises(ProtocolError, match="unknown protocol 'gait3d'"):
        evaluate("gait3d", emb, subj, types, views)
    with pytest.raises(ProtocolError, match="lengths differ"):
        evaluate("ccpg", emb, subj[:-1], types, views)
    keep = [i for i, t in enumerate(types) if t != "U0_D3"]
    with pytest.raises(ProtocolError, match="UP: the gallery set is empty"):
        evaluate(
            "ccpg", emb[keep], [subj[i] for i in keep], [types[i] for i in keep], [views[i] for i in keep]
        )
    bad = emb.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ProtocolError, match="NaN"):
        evaluate("ccpg", bad, subj, types, views)


def test_metric_accumulates_and_merges_like_one_shot() -> None:
    emb, subj, types, views = _random_set(CCPG_TYPES, ["1_a", "2_b", "3_c"], n_ids=4, seed=5)
    want = evaluate("synthetic", emb, subj, types, views)
    half = len(subj) // 2
    a, b = GaitRetrievalMetric("synthetic"), GaitRetrievalMetric("synthetic")
    a.update(torch.as_tensor(emb[:half]), subj[:half], types[:half], views[:half])
    b.update(torch.as_tensor(emb[half:]), subj[half:], types[half:], views[half:])
    a.merge_state(b)  # what the cross-rank "cat" reduction does
    assert a.result is None
    result = a.compute()
    assert result.metrics == pytest.approx(want)
    a.reset()  # frees the embeddings; the result behind the logged numbers stays for the report callback
    assert a.update_count == 0 and a.result.metrics == result.metrics and a.result.counts == result.counts
    with pytest.raises(ProtocolError, match="longer than 64 bytes"):
        a.update(torch.zeros(1, 6, 4), ["x" * 65], ["U0_D0"], ["1_a"])


def test_metric_refuses_a_sequence_scored_twice() -> None:
    """More embeddings than the test set holds (e.g. two ranks or nodes reading the same shard) is an error,
    not numbers; fewer is a partial result."""
    emb, subj, types, views = _random_set(CCPG_TYPES, ["1_a", "2_b"], n_ids=3, seed=1)
    metric = GaitRetrievalMetric("synthetic")
    metric.update(torch.as_tensor(emb), subj, types, views)
    metric.update(torch.as_tensor(emb[:1]), subj[:1], types[:1], views[:1])  # one sequence read again
    metric.expected_sequences = len(subj)
    with pytest.raises(ProtocolError, match=rf"{len(subj) + 1} sequences evaluated .* holds {len(subj)}"):
        metric.compute()
    metric.expected_sequences = len(subj) + 2
    assert f"{len(subj) + 1} of {len(subj) + 2} sequences evaluated" in metric.compute().partial


def test_report_outputs(tmp_path) -> None:
    emb, subj, types, views = _random_set(CCPG_TYPES, ["1_a", "2_b", "3_c"], n_ids=4, seed=6)
    res = evaluate_detailed("ccpg", emb, subj, types, views)
    table = results_markdown(res.metrics, "ccpg")
    assert "| rank-1 (%) |" in table and "ReID mINP" in table and f"{res.metrics['CL']:.2f}" in table
    write_results_json(tmp_path / "r" / "results.json", res.metrics, {"step": 3})
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert data["step"] == 3 and data["metrics"]["CL"] == pytest.approx(res.metrics["CL"])
    views_, _, matrix = res.matrices["CL"]
    save_figure(rank1_heatmap(matrix, views_, views_, title="CL"), tmp_path / "cl.png")
    assert (tmp_path / "cl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("**/*.tmp"))


def test_results_do_not_depend_on_input_order_even_with_ties() -> None:
    emb, subj, types, views = _random_set(CCPG_TYPES, ["1_a", "2_b", "3_c"], n_ids=5, seed=7)
    emb = np.round(emb, 0)  # coarse values: many exactly equal distances
    emb[::3] = emb[0]  # and identical embeddings across identities
    want = evaluate("ccpg", emb, subj, types, views)
    perm = np.random.default_rng(0).permutation(len(subj))
    got = evaluate(
        "ccpg", emb[perm], [subj[i] for i in perm], [types[i] for i in perm], [views[i] for i in perm]
    )
    assert got == want


def test_ccpg_type_list_is_exactly_what_the_protocol_reads() -> None:
    from biggait.evaluation.protocols import CCPG_TYPES, PROTOCOLS

    read = {t for probe, gallery in PROTOCOLS["ccpg"].conditions.values() for t in (*probe, *gallery)}
    assert len(CCPG_TYPES) == len(set(CCPG_TYPES)) and set(CCPG_TYPES) == read
