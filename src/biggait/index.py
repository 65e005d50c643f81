"""Galleries past memory: a memory-mapped gallery folder and an approximate candidate search (FAISS) followed by
the exact part-wise re-rank.

A mapped gallery is a folder: `embeddings.npy` ([N, E, parts], float16 by default: half the bytes, and the
part-wise distance moves by ~1e-3 relative), `identities.npy` (int32 code per row), `names.json` (code ->
identity), `meta.json` (format, model fingerprint) and, once built, `index.faiss`. Nothing is read whole: the
exact search streams row chunks of the memory map, and the approximate search asks FAISS for `candidates`
rows by the Euclidean distance of the concatenated part embeddings (an IVF-PQ index: `nlist` coarse cells,
`m` bytes per row), then recomputes the evaluation's distance (mean over parts of the per-part Euclidean,
biggait.evaluation.distance) on those rows only and keeps the k nearest. bench/bench_index.py measures the
recall of the exact top-k, the query time and the memory at 10^5 to 10^7 rows (docs/index.md).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biggait.errors import ConfigError
from biggait.evaluation.distance import part_euclidean
from biggait.gallery import GalleryError, iter_gallery_embeddings, read_gallery_model, read_gallery_strings
from biggait.io import atomic_write_json

__all__ = [
    "MAPPED_FORMAT",
    "MappedGallery",
    "build_index",
    "exact_search",
    "from_gallery",
    "search",
    "write_mapped",
]

MAPPED_FORMAT = "biggait-mapped-gallery/1"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            "the approximate index needs FAISS: pip install 'biggait[index]' (faiss-cpu); exact search does not"
        ) from None
    return faiss


class MappedGallery:
    """A mapped gallery folder opened read-only: `embeddings` is a memory map, never loaded whole."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / "meta.json").read_text())
            self.embeddings = np.load(self.folder / "embeddings.npy", mmap_mode="r", allow_pickle=False)
            self.codes = np.load(self.folder / "identities.npy", mmap_mode="r", allow_pickle=False)
            self.names = json.loads((self.folder / "names.json").read_text())
        except (OSError, ValueError) as exc:
            raise GalleryError(
                f"{self.folder} is not a readable mapped gallery ({type(exc).__name__}: {exc})"
            ) from None
        if self.meta.get("format") != MAPPED_FORMAT:
            raise GalleryError(f"{self.folder}: format {self.meta.get('format')!r}, expected {MAPPED_FORMAT}")
        if self.embeddings.ndim != 3 or self.codes.shape != self.embeddings.shape[:1]:
            raise GalleryError(
                f"{self.folder}: embeddings {self.embeddings.shape} and identities {self.codes.shape}"
            )
        self.model = str(self.meta["model"])

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 [r, E, p]) over the memory map."""
        for start in range(0, len(self), rows):
            yield start, np.array(self.embeddings[start : start + rows], np.float32)


def write_mapped(
    folder: str | Path, chunks: Iterator[tuple[np.ndarray, np.ndarray]], *, n: int, shape: Sequence[int],
    model: str, names: Sequence[str], dtype: str = "float16",
) -> MappedGallery:  # fmt: skip
    """Write (embeddings [r, E, p], identity codes [r]) chunks, n rows in all, as a mapped gallery folder: built
    in a temporary folder beside it and renamed, so a killed build leaves no half gallery."""
    folder = Path(folder)
    if folder.exists():
        raise ConfigError(f"{folder} exists: remove it first or choose another folder")
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        emb = np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=dtype, shape=(n, *shape))
        codes = np.lib.format.open_memmap(tmp / "identities.npy", mode="w+", dtype=np.int32, shape=(n,))
        at = 0
        for e, c in chunks:
            emb[at : at + len(e)], codes[at : at + len(e)] = e, c
            at += len(e)
        if at != n:
            raise ConfigError(f"mapped gallery: {at} rows written, {n} announced")
        emb.flush(), codes.flush()
        del emb, codes
        atomic_write_json(tmp / "names.json", list(names))
        atomic_write_json(tmp / "meta.json", {"format": MAPPED_FORMAT, "model": model, "rows": n})
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return MappedGallery(folder)


def from_gallery(gallery: str | Path, folder: str | Path, *, dtype: str = "float16") -> MappedGallery:
    """A gallery `.npz` as a mapped gallery folder, read and written in chunks."""
    identities = read_gallery_strings(gallery, "identities")["identities"]
    names, codes = np.unique(identities, return_inverse=True)
    first = next(iter_gallery_embeddings(gallery, rows=1))[1]
    chunks = ((e, codes[s : s + len(e)]) for s, e in iter_gallery_embeddings(gallery, rows=65536))
    return write_mapped(folder, chunks, n=len(codes), shape=first.shape[1:], model=read_gallery_model(gallery),
                        names=[str(x) for x in names], dtype=dtype)  # fmt: skip


def exact_search(
    gallery: MappedGallery, probes: np.ndarray, *, k: int = 10, rows: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """The exact k nearest rows of every probe [P, E, p] by the part-wise distance: (distances, rows) [P, k]."""
    q = torch.from_numpy(np.asarray(probes, np.float32))
    best_d, best_i = torch.empty(len(q), 0), torch.empty(len(q), 0, dtype=torch.int64)
    for start, chunk in gallery.chunks(rows):
        d = torch.cat([best_d, part_euclidean(q, torch.from_numpy(chunk))], 1)
        idx = torch.cat([best_i, torch.arange(start, start + len(chunk)).expand(len(q), -1)], 1)
        best_d, order = d.topk(min(k, d.shape[1]), dim=1, largest=False)
        best_i = idx.gather(1, order)
    return best_d.numpy(), best_i.numpy()


def build_index(
    gallery: MappedGallery, *, nlist: int | None = None, m: int = 16, train: int = 30_000, seed: int = 0
) -> Any:
    """Train an IVF-PQ index on a sample of rows, add every row in chunks, and write it as `index.faiss`."""
    faiss = _faiss()
    n, dim = len(gallery), int(np.prod(gallery.embeddings.shape[1:]))
    nlist = nlist or int(np.clip(round(np.sqrt(n) / 4), 16, 1024))  # 790 cells of ~13,000 rows at 10^7
    if dim % m:
        raise ConfigError(f"the index's m = {m} must divide the {dim} numbers of an embedding")
    sample = np.sort(
        np.random.default_rng(seed).choice(n, size=min(n, max(train, 39 * nlist)), replace=False)
    )
    index = faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, nlist, m, 8)
    index.train(np.asarray(gallery.embeddings[sample], np.float32).reshape(len(sample), dim))
    for _, chunk in gallery.chunks(262144):
        index.add(chunk.reshape(len(chunk), dim))
    tmp = gallery.folder / f".index.faiss.tmp-{os.getpid()}"
    faiss.write_index(index, str(tmp))
    os.replace(tmp, gallery.folder / "index.faiss")
    return index


def search(
    gallery: MappedGallery, probes: np.ndarray, *, k: int = 10, candidates: int = 100, nprobe: int = 16,
    index: Any = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Approximate k nearest rows: FAISS candidates, then the exact part-wise distance on them: (distances, rows)."""
    faiss = _faiss()
    if index is None:
        if not (gallery.folder / "index.faiss").is_file():
            raise ConfigError(
                f"{gallery.folder} has no index.faiss: build it first (biggait.index.build_index)"
            )
        try:
            index = faiss.read_index(str(gallery.folder / "index.faiss"), faiss.IO_FLAG_MMAP)
        except RuntimeError as exc:  # FAISS reports a broken file as a RuntimeError with its C++ message
            raise GalleryError(
                f"{gallery.folder}/index.faiss is not a readable FAISS index ({exc}); rebuild it"
            ) from None
    index.nprobe = nprobe
    q = np.asarray(probes, np.float32)
    _, cand = index.search(q.reshape(len(q), -1), max(k, candidates))
    out_d, out_i = np.full((len(q), k), np.inf, np.float32), np.full((len(q), k), -1, np.int64)
    for p in range(len(q)):
        rows = np.unique(cand[p][cand[p] >= 0])
        d = part_euclidean(
            torch.from_numpy(q[p : p + 1]), torch.from_numpy(np.asarray(gallery.embeddings[rows], np.float32))
        )[0]
        top = d.topk(min(k, len(rows)), largest=False)
        out_d[p, : len(top.indices)], out_i[p, : len(top.indices)] = (
            top.values.numpy(),
            rows[top.indices.numpy()],
        )
    return out_d, out_i
