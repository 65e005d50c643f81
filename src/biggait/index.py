"""Galleries past memory: a memory-mapped gallery folder and an approximate candidate search (FAISS) followed by
the exact part-wise re-rank.

A mapped gallery is a folder: `embeddings.npy` ([N, E, parts], float16 by default: half the bytes, and the
part-wise distance moves by ~1e-3 relative), `identities.npy` (int32 code per row), `labels.npy` (the template
labels, fixed-width unicode, memory-mapped), `names.json` (code -> identity), `meta.json` (format, model
fingerprint, the gallery's own meta under "gallery": the open-set calibration of `biggait calibrate`) and, once
built, `index.faiss`. Nothing is read whole: the
exact search streams row chunks of the memory map, and the approximate search asks FAISS for `candidates`
rows by the Euclidean distance of the concatenated part embeddings (an IVF-PQ index: `nlist` coarse cells,
`m` bytes per row), then recomputes the evaluation's distance (mean over parts of the per-part Euclidean,
biggait.evaluation.distance) on those rows only and keeps the k nearest. bench/bench_index.py measures the
recall of the exact top-k, the query time and the memory at 10^5 to 10^7 rows (docs/index.md).

    biggait index GALLERY.npz FOLDER [--dtype float16|float32] [--nlist N] [--m M] [--no-faiss]

writes the folder from a gallery `.npz` and builds its index; `biggait identify FOLDER PROBES.npz` searches it
(biggait.ranking: FAISS candidates re-ranked exactly, or `--exact`: the whole memory map streamed).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biggait.errors import ConfigError, exit_on_error
from biggait.evaluation.distance import part_euclidean
from biggait.gallery import GalleryError, GalleryRows, read_gallery_meta
from biggait.io import atomic_write_json

__all__ = [
    "MAPPED_FORMAT",
    "MappedGallery",
    "build_index",
    "check_index_options",
    "exact_search",
    "from_gallery",
    "main",
    "open_index",
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


def _random_access(array: np.ndarray | None) -> None:
    """No read-ahead on a memory map read at scattered rows: each row fetched would otherwise map up to a few
    MiB around it, and a few thousand candidates would make most of the file resident."""
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_RANDOM"):
        mapping.madvise(mmap.MADV_RANDOM)


class MappedGallery:
    """A mapped gallery folder opened read-only: `embeddings` and `labels` are memory maps, never loaded whole."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise GalleryError(
                f"{self.folder} is not a mapped gallery folder: write one with `biggait index`"
            )
        try:
            self.meta = json.loads((self.folder / "meta.json").read_text())
            self.embeddings = np.load(self.folder / "embeddings.npy", mmap_mode="r", allow_pickle=False)
            self.codes = np.load(self.folder / "identities.npy", mmap_mode="r", allow_pickle=False)
            self.names = json.loads((self.folder / "names.json").read_text())
            labels = self.folder / "labels.npy"
            self.labels = np.load(labels, mmap_mode="r", allow_pickle=False) if labels.exists() else None
        except (OSError, ValueError) as exc:
            raise GalleryError(
                f"{self.folder} is not a readable mapped gallery ({type(exc).__name__}: {exc})"
            ) from None
        self._check()
        self.model = str(self.meta["model"])
        for array in (self.embeddings, self.codes, self.labels):  # searches touch scattered rows
            _random_access(array)

    def _check(self) -> None:
        """Every field's type and shape (a hostile folder is one GalleryError, not a traceback later)."""
        where = f"mapped gallery {self.folder}"
        if not isinstance(self.meta, dict) or self.meta.get("format") != MAPPED_FORMAT:
            got = self.meta.get("format") if isinstance(self.meta, dict) else type(self.meta).__name__
            raise GalleryError(f"{where}: meta.json format {got!r}, expected {MAPPED_FORMAT}; rebuild it")
        if not isinstance(self.meta.get("model"), str) or not isinstance(self.meta.get("gallery", {}), dict):
            raise GalleryError(f"{where}: meta.json needs a model string and a gallery object; rebuild it")
        emb, codes = self.embeddings, self.codes
        if emb.ndim != 3 or emb.dtype not in (np.float16, np.float32) or 0 in emb.shape[1:]:
            raise GalleryError(
                f"{where}: embeddings must be float16/32 [N, E, parts], got {emb.dtype} {emb.shape}"
            )
        if codes.dtype != np.int32 or codes.shape != emb.shape[:1]:
            raise GalleryError(
                f"{where}: embeddings {emb.shape} and int32 identities {codes.dtype} {codes.shape}"
            )
        if not isinstance(self.names, list) or not all(isinstance(n, str) for n in self.names):
            raise GalleryError(f"{where}: names.json must be a list of identity names; rebuild it")
        if len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= len(self.names)):
            raise GalleryError(f"{where}: identity codes outside the {len(self.names)} names; rebuild it")
        labels = self.labels
        if labels is not None and (labels.dtype.kind != "U" or labels.shape != codes.shape):
            raise GalleryError(
                f"{where}: labels.npy must be {len(codes)} unicode labels, got {labels.dtype} {labels.shape}"
            )

    @property
    def gallery_meta(self) -> dict[str, Any]:
        """The gallery file's own meta (enrolment dates, open-set calibration), copied at `biggait index`."""
        return self.meta.get("gallery", {})

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 [r, E, p]) over the memory map."""
        # read with plain file reads, not through the map: pages a scan faults in would stay mapped and the
        # process's resident memory would grow with the gallery
        emb = self.embeddings
        per_row = int(np.prod(emb.shape[1:]))
        with open(self.folder / "embeddings.npy", "rb") as f:
            for start in range(0, len(self), rows):
                n = min(rows, len(self) - start)
                f.seek(emb.offset + start * per_row * emb.dtype.itemsize)
                raw = np.fromfile(f, dtype=emb.dtype, count=n * per_row)
                if raw.size != n * per_row:
                    raise GalleryError(
                        f"mapped gallery {self.folder}: embeddings.npy is truncated; rebuild it"
                    )
                yield start, self._finite(raw.reshape(n, *emb.shape[1:]).astype(np.float32))

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """float32 [r, E, p] of the given rows, read with `os.pread` (scattered rows through the map would leave
        far more than themselves resident)."""
        emb = self.embeddings
        row_bytes = int(np.prod(emb.shape[1:])) * emb.dtype.itemsize
        indices = np.asarray(indices, np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise GalleryError(f"mapped gallery {self.folder}: row outside its {len(self)} rows")
        fd = os.open(self.folder / "embeddings.npy", os.O_RDONLY)
        try:
            raw = b"".join(os.pread(fd, row_bytes, emb.offset + int(r) * row_bytes) for r in indices)
        finally:
            os.close(fd)
        if len(raw) != len(indices) * row_bytes:
            raise GalleryError(f"mapped gallery {self.folder}: embeddings.npy is truncated; rebuild it")
        return self._finite(
            np.frombuffer(raw, emb.dtype).reshape(len(indices), *emb.shape[1:]).astype(np.float32)
        )

    def _finite(self, chunk: np.ndarray) -> np.ndarray:
        if not np.isfinite(chunk).all():
            raise GalleryError(f"mapped gallery {self.folder}: embeddings contain NaN or inf; rebuild it")
        return chunk


def write_mapped(
    folder: str | Path, chunks: Iterator[tuple[np.ndarray, ...]], *, n: int, shape: Sequence[int],
    model: str, names: Sequence[str], dtype: str = "float16", label_width: int | None = None,
    gallery_meta: dict[str, Any] | None = None,
) -> MappedGallery:  # fmt: skip
    """Write (embeddings [r, E, p], identity codes [r][, template labels [r]]) chunks, n rows in all, as a mapped
    gallery folder (labels as a `<U{label_width}` memory map when `label_width` is given): built in a temporary
    folder beside it and renamed, so a killed build leaves no half gallery."""
    folder = Path(folder)
    if folder.exists():
        raise ConfigError(f"{folder} exists: remove it first or choose another folder")
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        # sequential writes, not writable maps: dirty mapped pages would keep the whole output resident
        specs = [("embeddings", np.dtype(dtype), (n, *shape)), ("identities", np.dtype(np.int32), (n,))]
        if label_width is not None:
            specs.append(("labels", np.dtype(f"<U{max(1, label_width)}"), (n,)))
        files = [open(tmp / f"{name}.npy", "wb") for name, _, _ in specs]  # noqa: SIM115 (closed below)
        try:
            for f, (_, dt, full) in zip(files, specs):
                header = {"descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False, "shape": full}
                np.lib.format.write_array_header_1_0(f, header)
            at = 0
            for chunk in chunks:
                for f, (_, dt, full), values in zip(files, specs, chunk):
                    f.write(
                        np.ascontiguousarray(
                            np.broadcast_to(values, (len(chunk[0]), *full[1:])), dt
                        ).tobytes()
                    )
                at += len(chunk[0])
        finally:
            for f in files:
                f.close()
        if at != n:
            raise ConfigError(f"mapped gallery: {at} rows written, {n} announced")
        atomic_write_json(tmp / "names.json", list(names))
        meta = {"format": MAPPED_FORMAT, "model": model, "rows": n, "gallery": dict(gallery_meta or {})}
        atomic_write_json(tmp / "meta.json", meta)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return MappedGallery(folder)


def from_gallery(gallery: str | Path, folder: str | Path, *, dtype: str = "float16") -> MappedGallery:
    """A gallery `.npz` as a mapped gallery folder, read and written in chunks (memory grows with the number of
    people, not of templates), its meta carried along."""
    rows = GalleryRows(gallery)  # checks the fields' headers and counts
    if len(rows) == 0:
        raise GalleryError(f"gallery {gallery} is empty: enrol someone first (biggait gallery enrol)")
    names = rows.identity_names()
    chunks = (
        (e, np.searchsorted(names, i).astype(np.int32), lab)
        for e, i, lab in zip(rows.chunks("embeddings"), rows.chunks("identities"), rows.chunks("labels"))
    )
    return write_mapped(folder, chunks, n=len(rows), shape=rows.row_shape, model=rows.model,
                        names=[str(x) for x in names], dtype=dtype, label_width=rows.width("labels"),
                        gallery_meta=read_gallery_meta(gallery))  # fmt: skip


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


def check_index_options(n: int, dim: int, *, nlist: int | None, m: int) -> int:
    """The number of cells for n rows of dim numbers (sqrt(n)/4 by default: 790 cells of ~13,000 rows at 10^7),
    after checking that FAISS can train such an index on them."""
    nlist = nlist or int(np.clip(round(np.sqrt(n) / 4), 16, 1024))
    if nlist < 1 or m < 1 or dim % m:
        raise ConfigError(f"--m = {m} must divide the {dim} numbers of an embedding, and --nlist be >= 1")
    if n < max(256, nlist):  # k-means of the 256 codes per sub-vector and of the nlist cells
        raise ConfigError(
            f"{n} gallery rows are too few to train an index of {nlist} cells and 256 codes: use --no-faiss "
            "(exact search over the memory map is fast at this size) or a smaller --nlist"
        )
    return nlist


def build_index(
    gallery: MappedGallery, *, nlist: int | None = None, m: int = 16, train: int = 30_000, seed: int = 0
) -> Any:
    """Train an IVF-PQ index on a sample of rows, add every row in chunks, and write it as `index.faiss`."""
    faiss = _faiss()
    n, dim = len(gallery), int(np.prod(gallery.embeddings.shape[1:]))
    nlist = check_index_options(n, dim, nlist=nlist, m=m)
    sample = np.sort(
        np.random.default_rng(seed).choice(n, size=min(n, max(train, 39 * nlist)), replace=False)
    )
    index = faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, nlist, m, 8)
    index.train(gallery.rows(sample).reshape(len(sample), dim))
    for _, chunk in gallery.chunks(262144):
        index.add(chunk.reshape(len(chunk), dim))
    tmp = gallery.folder / f".index.faiss.tmp-{os.getpid()}"
    faiss.write_index(index, str(tmp))
    os.replace(tmp, gallery.folder / "index.faiss")
    return index


def open_index(gallery: MappedGallery) -> Any:
    """The folder's `index.faiss`, memory-mapped, after checking it indexes this gallery's rows."""
    faiss = _faiss()
    if not (gallery.folder / "index.faiss").is_file():
        raise ConfigError(
            f"{gallery.folder} has no index.faiss: build it first (biggait index, or build_index)"
        )
    try:
        index = faiss.read_index(str(gallery.folder / "index.faiss"), faiss.IO_FLAG_MMAP)
    except RuntimeError as exc:  # FAISS reports a broken file as a RuntimeError with its C++ message
        raise GalleryError(
            f"{gallery.folder}/index.faiss is not a readable FAISS index ({exc}); rebuild it"
        ) from None
    dim = int(np.prod(gallery.embeddings.shape[1:]))
    if index.ntotal != len(gallery) or index.d != dim or not isinstance(index, faiss.IndexIVF):
        raise GalleryError(
            f"{gallery.folder}/index.faiss holds {index.ntotal} rows of {index.d} numbers, the gallery "
            f"{len(gallery)} of {dim}: rebuild it (biggait index)"
        )
    return index


def search(
    gallery: MappedGallery, probes: np.ndarray, *, k: int = 10, candidates: int = 100, nprobe: int = 16,
    index: Any = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Approximate k nearest rows: FAISS candidates, then the exact part-wise distance on them: (distances, rows)."""
    index = open_index(gallery) if index is None else index
    index.nprobe = nprobe
    q = np.asarray(probes, np.float32)
    _, cand = index.search(q.reshape(len(q), -1), max(k, candidates))
    out_d, out_i = np.full((len(q), k), np.inf, np.float32), np.full((len(q), k), -1, np.int64)
    for p in range(len(q)):
        rows = np.unique(cand[p][cand[p] >= 0])
        d = part_euclidean(torch.from_numpy(q[p : p + 1]), torch.from_numpy(gallery.rows(rows)))[0]
        top = d.topk(min(k, len(rows)), largest=False)
        out_d[p, : len(top.indices)], out_i[p, : len(top.indices)] = (
            top.values.numpy(),
            rows[top.indices.numpy()],
        )
    return out_d, out_i


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="write a gallery .npz as a memory-mapped folder and "
                                     "build its approximate index", epilog="See docs/index.md.")  # fmt: skip
    parser.add_argument("gallery", type=Path, help="gallery .npz (biggait gallery enrol, biggait calibrate)")
    parser.add_argument("folder", type=Path, help="the mapped gallery folder to write (must not exist)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="embeddings on disk (float16: half the bytes, distances within ~1e-3 relative)")  # fmt: skip
    parser.add_argument(
        "--nlist", type=int, default=None, help="coarse cells of the index (default sqrt(N)/4)"
    )
    parser.add_argument("--m", type=int, default=16, help="bytes per row of the index; divides E x parts")
    parser.add_argument("--no-faiss", action="store_true", help="no index.faiss: identify searches exactly")
    return parser


def _build(args: argparse.Namespace) -> MappedGallery:
    """The folder, written beside its final place and renamed once its index is built (a failed or killed
    build leaves no folder without the index it was asked for)."""
    if args.folder.exists():
        raise ConfigError(f"{args.folder} exists: remove it first or choose another folder")
    rows = GalleryRows(args.gallery)  # one error line for a broken file before any work (headers only)
    if not args.no_faiss:
        _faiss()
        check_index_options(len(rows), int(np.prod(rows.row_shape)), nlist=args.nlist, m=args.m)
    building = args.folder.with_name(f".{args.folder.name}.building-{os.getpid()}")
    try:
        mapped = from_gallery(args.gallery, building, dtype=args.dtype)
        if not args.no_faiss:
            build_index(mapped, nlist=args.nlist, m=args.m)
        os.replace(building, args.folder)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return MappedGallery(args.folder)


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m biggait.index") -> int:
    args = _parser(prog).parse_args(argv)
    with exit_on_error():
        mapped = _build(args)
    index = (
        "an approximate index (index.faiss)"
        if not args.no_faiss
        else "no index: identify searches it exactly"
    )
    print(f"{mapped.folder}: {len(mapped)} templates of {len(mapped.names)} identities, "
          f"{mapped.embeddings.dtype} {tuple(mapped.embeddings.shape[1:])}, {index}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
