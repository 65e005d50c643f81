"""`biggait index` and `biggait identify FOLDER`: the mapped folder searched exactly gives what the `.npz` gives,
the FAISS index agrees with it on the nearest person, the gallery's calibration travels into the folder, and a
broken or hostile gallery, folder or probe file is one error line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from biggait.cli import main
from biggait.gallery import Gallery
from test_index import _clustered

pytest.importorskip("faiss", reason="faiss-cpu is in the dev extra; the approximate index needs it")


def _files(tmp_path: Path, n_ids: int = 400, per_id: int = 5) -> tuple[Path, Path]:
    # the probes: new walks of every fifth enrolled person, and 10 people who are not enrolled (open set)
    known = _clustered(n_ids, 1, 1).select(range(0, n_ids, 5))
    unknown = _clustered(n_ids + 10, 1, 4).select(range(n_ids, n_ids + 10))
    probes = Gallery(np.concatenate([known.embeddings, unknown.embeddings]), known.labels + unknown.labels,
                     known.identities + unknown.identities, known.sources + unknown.sources, known.model)  # fmt: skip
    _clustered(n_ids, per_id, 0).save(tmp_path / "g.npz")
    probes.save(tmp_path / "p.npz")
    return tmp_path / "g.npz", tmp_path / "p.npz"


def _identify(gallery: Path, probes: Path, out: Path, *options: str) -> list[dict]:
    assert main(["identify", str(gallery), str(probes), "--quiet", "--json", str(out), *options]) == 0
    return json.loads(out.read_text())


def _error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def _same_records(folder: list[dict], npz: list[dict], rtol: float) -> None:
    """Equal records; two people whose distances differ by less than the float16 rounding may swap places."""
    assert len(folder) == len(npz)
    for a, b in zip(folder, npz):
        assert (a["probe"], a["probe_identity"], a["decision"]) == (
            b["probe"],
            b["probe_identity"],
            b["decision"],
        )
        da, db = [m["distance"] for m in a["matches"]], [m["distance"] for m in b["matches"]]
        np.testing.assert_allclose(da, db, rtol=rtol)
        for i, (ma, mb) in enumerate(zip(a["matches"], b["matches"])):
            near = [abs(db[i] - db[j]) <= 2 * rtol * db[i] for j in (i - 1, i + 1) if 0 <= j < len(db)]
            assert (ma["identity"], ma["label"]) == (mb["identity"], mb["label"]) or any(near)


def test_identify_on_the_folder_matches_the_npz(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gallery, probes = _files(tmp_path)
    assert (
        main(["calibrate", str(gallery), str(probes), "--far", "0.1"]) == 0
    )  # the open-set rule, in its meta
    assert main(["index", str(gallery), str(tmp_path / "f16")]) == 0
    assert "2000 templates of 400 identities, float16" in capsys.readouterr().out
    assert main(["index", str(gallery), str(tmp_path / "f32"), "--dtype", "float32", "--no-faiss"]) == 0
    assert not (tmp_path / "f32" / "index.faiss").exists() and (tmp_path / "f16" / "index.faiss").is_file()
    npz = _identify(gallery, probes, tmp_path / "npz.json", "--top-k", "5")
    assert {r["decision"] for r in npz} > {"unknown"}  # the calibration is applied: some named, some unknown
    exact16 = _identify(tmp_path / "f16", probes, tmp_path / "e16.json", "--top-k", "5", "--exact")
    _same_records(exact16, npz, rtol=1e-3)
    exact32 = _identify(tmp_path / "f32", probes, tmp_path / "e32.json", "--top-k", "5")  # no index: exact
    _same_records(exact32, npz, rtol=1e-5)
    assert [m["label"] for r in exact32 for m in r["matches"]] == [
        m["label"] for r in npz for m in r["matches"]
    ]
    closed = _identify(tmp_path / "f16", probes, tmp_path / "c.json", "--exact", "--closed-set")
    assert {r["decision"] for r in closed} != {r["decision"] for r in exact16}  # the calibration did decide
    # --score and the summary read the folder too (exactly), and say the same as on the .npz
    capsys.readouterr()
    main(["identify", str(gallery), str(probes), "--quiet", "--score"])
    on_npz = capsys.readouterr().out
    main(["identify", str(tmp_path / "f32"), str(probes), "--quiet", "--score"])
    assert capsys.readouterr().out == on_npz and "the gallery's calibration" in on_npz


def test_the_index_names_the_nearest_person_as_exact_search_does(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    gallery, probes = _files(tmp_path, n_ids=1000)
    assert main(["index", str(gallery), str(tmp_path / "f")]) == 0
    exact = _identify(tmp_path / "f", probes, tmp_path / "e.json", "--exact", "--closed-set")
    approx = _identify(tmp_path / "f", probes, tmp_path / "a.json", "--closed-set")
    agree = np.mean(
        [a["matches"][0]["identity"] == e["matches"][0]["identity"] for a, e in zip(approx, exact)]
    )
    assert agree >= 0.95
    for record in approx:  # re-ranked by the exact part-wise distance: ascending, five distinct people
        distances = [m["distance"] for m in record["matches"]]
        assert distances == sorted(distances) and len({m["identity"] for m in record["matches"]}) == 5
    # too few candidates for 20 distinct people (5 templates each): the search widens, it never truncates
    few = _identify(tmp_path / "f", probes, tmp_path / "w.json", "--closed-set", "--top-k", "20",
                    "--candidates", "3", "--nprobe", "1")  # fmt: skip
    assert all(len({m["identity"] for m in r["matches"]}) == 20 for r in few)
    # and a coarse search differs from the exact one: the comparison above can fail
    coarse = _identify(tmp_path / "f", probes, tmp_path / "c.json", "--closed-set", "--candidates", "1",
                       "--nprobe", "1")  # fmt: skip
    assert [r["matches"] for r in coarse] != [r["matches"] for r in exact]
    other = _clustered(3, 1, 5)  # probes of another model: the index's path checks the fingerprint too
    Gallery(other.embeddings, other.labels, other.identities, other.sources, "d" * 64).save(
        tmp_path / "o.npz"
    )
    assert "different models" in _error(capsys, "identify", str(tmp_path / "f"), str(tmp_path / "o.npz"))


def test_a_broken_or_hostile_gallery_folder_or_probe_file_is_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    gallery, probes = _files(tmp_path, n_ids=40)
    folder = tmp_path / "f"
    assert main(["index", str(gallery), str(folder), "--no-faiss"]) == 0
    assert "remove it first" in _error(capsys, "index", str(gallery), str(folder))
    assert "--no-faiss" in _error(
        capsys, "index", str(gallery), str(tmp_path / "small")
    )  # 200 rows, 16 cells
    assert "--m = 5 must divide" in _error(capsys, "index", str(gallery), str(tmp_path / "m"), "--m", "5",
                                           "--nlist", "4")  # fmt: skip
    (tmp_path / "broken.npz").write_bytes(gallery.read_bytes()[:5000])
    assert "broken.npz" in _error(capsys, "index", str(tmp_path / "broken.npz"), str(tmp_path / "b"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.npz", "f", "g.npz", "p.npz"]  # nothing left

    def hostile(name: str, change) -> str:
        bad = tmp_path / f"bad-{name}"
        main(["index", str(gallery), str(bad), "--no-faiss"])
        change(bad)
        return _error(capsys, "identify", str(bad), str(probes))

    assert "labels.npy must be 200" in hostile(
        "count", lambda f: np.save(f / "labels.npy", np.array(["a", "b"]))
    )
    assert "labels.npy must be" in hostile("dtype", lambda f: np.save(f / "labels.npy", np.zeros(200)))
    assert "not a readable" in hostile("pickle", lambda f: np.save(f / "labels.npy", np.array([{}] * 200)))
    assert "biggait index" in hostile("old", lambda f: (f / "labels.npy").unlink())
    assert "not a readable" in hostile("json", lambda f: (f / "meta.json").write_text("{not json"))
    assert "format" in hostile("list", lambda f: (f / "meta.json").write_text("[1, 2]"))

    def calibration(f: Path) -> None:
        meta = json.loads((f / "meta.json").read_text())
        (f / "meta.json").write_text(json.dumps({**meta, "gallery": {"openset": {"threshold": "x"}}}))

    assert "calibrate it again" in hostile("calibration", calibration)
    assert "outside the" in hostile(
        "codes", lambda f: np.save(f / "identities.npy", np.full(200, 9999, np.int32))
    )
    assert "not a readable FAISS index" in hostile(
        "faiss", lambda f: (f / "index.faiss").write_bytes(b"IxPQ" * 9)
    )
    other = _clustered(3, 1, 5)
    Gallery(other.embeddings, other.labels, other.identities, other.sources, "d" * 64).save(
        tmp_path / "o.npz"
    )
    assert "different models" in _error(capsys, "identify", str(folder), str(tmp_path / "o.npz"))
    assert "different models" in _error(capsys, "identify", str(folder), str(tmp_path / "o.npz"), "--exact")
