"""Mapped galleries and the approximate index: exact search over the memory map equals the in-memory ranking,
the FAISS candidates re-ranked by the part-wise distance find the exact top-k, and a killed build leaves
nothing behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biggait.errors import ConfigError
from biggait.gallery import Gallery, GalleryError
from biggait.identify import identify
from biggait.index import MappedGallery, build_index, exact_search, from_gallery, search, write_mapped

pytest.importorskip("faiss", reason="faiss-cpu is in the dev extra; the approximate index needs it")


def _clustered(n_ids: int, per_id: int, seed: int) -> Gallery:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(n_ids, 8, 4))
    emb = (np.repeat(centres, per_id, 0) + 0.7 * rng.normal(size=(n_ids * per_id, 8, 4))).astype(np.float32)
    ids = [f"{i:04d}" for i in range(n_ids) for _ in range(per_id)]
    return Gallery(emb, [f"{x}/{k}" for k, x in enumerate(ids)], ids, ["s"] * len(ids), "c" * 64)


def test_exact_search_on_the_memory_map_equals_identify(tmp_path: Path) -> None:
    gallery, probes = _clustered(200, 5, 0), _clustered(200, 1, 1).select(range(0, 200, 10))
    gallery.save(tmp_path / "g.npz")
    mapped = from_gallery(tmp_path / "g.npz", tmp_path / "g.mapped", dtype="float32")
    assert isinstance(mapped.embeddings, np.memmap) and len(mapped) == 1000
    assert [mapped.names[c] for c in mapped.codes[:6]] == gallery.identities[:6]
    d, rows = exact_search(mapped, probes.embeddings, k=5, rows=97)
    expected = identify(gallery, probes, top_k=5)
    for p, entry in enumerate(expected):
        assert [gallery.labels[r] for r in rows[p]] == [m["label"] for m in entry["matches"]]
        np.testing.assert_allclose(d[p], [m["distance"] for m in entry["matches"]], rtol=1e-5)
    with pytest.raises(ConfigError, match="exists"):
        from_gallery(tmp_path / "g.npz", tmp_path / "g.mapped")


def test_approximate_search_finds_the_exact_top_k(tmp_path: Path) -> None:
    gallery, probes = _clustered(1000, 5, 2), _clustered(1000, 1, 3).select(range(0, 1000, 20))
    gallery.save(tmp_path / "g.npz")
    mapped = from_gallery(tmp_path / "g.npz", tmp_path / "g.mapped")  # float16 on disk
    exact_d, exact_rows = exact_search(mapped, probes.embeddings, k=5)
    build_index(mapped, nlist=32, m=8)
    approx_d, approx_rows = search(
        MappedGallery(mapped.folder), probes.embeddings, k=5, candidates=200, nprobe=16
    )
    recall = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(approx_rows, exact_rows)])
    assert recall >= 0.9
    # what it returns is re-ranked by the exact part-wise distance: those rows' own distances, ascending
    found = approx_rows[0] >= 0
    np.testing.assert_allclose(approx_d[0][found], np.sort(approx_d[0][found]))
    same = approx_rows[0][0] == exact_rows[0][0]
    assert not same or approx_d[0][0] == pytest.approx(exact_d[0][0], rel=1e-5)
    # a coarse search (one cell, few candidates) misses some: the test can tell the two apart
    _, poor = search(mapped, probes.embeddings, k=5, candidates=5, nprobe=1)
    assert np.mean([len(set(a) & set(e)) / 5 for a, e in zip(poor, exact_rows)]) < recall


def test_a_broken_or_half_written_mapped_gallery_is_refused(tmp_path: Path) -> None:
    def chunks():
        yield np.zeros((3, 8, 4), np.float32), np.zeros(3, np.int32)
        raise KeyboardInterrupt  # killed while writing

    with pytest.raises(KeyboardInterrupt):
        write_mapped(tmp_path / "m", chunks(), n=6, shape=(8, 4), model="c" * 64, names=["a"])
    assert list(tmp_path.iterdir()) == []  # no half gallery, no temporary left
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "meta.json").write_text("{not json")
    with pytest.raises(GalleryError, match="not a readable mapped gallery"):
        MappedGallery(tmp_path / "bad")
    with pytest.raises(ConfigError, match="no index.faiss"):
        gallery = _clustered(4, 2, 0)
        gallery.save(tmp_path / "g.npz")
        search(from_gallery(tmp_path / "g.npz", tmp_path / "g.mapped"), gallery.embeddings[:1], k=2)


def test_a_broken_index_file_is_one_error(tmp_path: Path) -> None:
    gallery = _clustered(4, 2, 0)
    gallery.save(tmp_path / "g.npz")
    mapped = from_gallery(tmp_path / "g.npz", tmp_path / "g.mapped")
    (mapped.folder / "index.faiss").write_bytes(b"IxPQ" + b"\xff" * 64)  # truncated / hostile bytes
    with pytest.raises(GalleryError, match="not a readable FAISS index"):
        search(mapped, gallery.embeddings[:1], k=2)
