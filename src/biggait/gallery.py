"""Gallery files: embeddings with their labels, identities, sources and the fingerprint of the model that made
them, as an `.npz` of plain arrays (no pickles: loaded with `allow_pickle=False`), written atomically."""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from biggait.errors import BiggaitError
from biggait.io import atomic_open

__all__ = [
    "GALLERY_FORMAT",
    "Gallery",
    "GalleryError",
    "GalleryRows",
    "gallery_member_header",
    "iter_gallery_embeddings",
    "iter_gallery_member",
    "load_gallery",
    "read_gallery_meta",
    "read_gallery_model",
    "read_gallery_rows",
    "read_gallery_strings",
    "write_gallery",
]

GALLERY_FORMAT = "biggait-gallery/1"
_STRINGS = ("labels", "identities", "sources")
_KEYS = {"format", "model", "embeddings", *_STRINGS}
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class GalleryError(BiggaitError, ValueError):
    """A gallery file that is broken, hostile, or made by another model than the one it is compared with."""


@dataclass
class Gallery:
    """Embeddings [N, E, p] float32 with one label, identity and source per row, and the model fingerprint;
    `meta` is free JSON (enrolment dates, the calibrated open-set threshold: biggait.gallery_cli)."""

    embeddings: np.ndarray
    labels: list[str]
    identities: list[str]
    sources: list[str]
    model: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, np.float32)
        n = self.embeddings.shape[0] if self.embeddings.ndim == 3 else -1
        if n < 0:
            raise GalleryError(f"gallery embeddings must be [N, E, parts], got shape {self.embeddings.shape}")
        for name in _STRINGS:
            values = getattr(self, name)
            if len(values) != n:
                raise GalleryError(f"gallery has {n} embeddings but {len(values)} {name}")
            setattr(self, name, [str(v) for v in values])
        if not isinstance(self.model, str) or not self.model:
            raise GalleryError("gallery needs the fingerprint of the model that made it")

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def select(self, rows: Sequence[int] | np.ndarray) -> Gallery:
        """A gallery of the given rows (index array or boolean mask)."""
        idx = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, np.int64)
        return Gallery(
            self.embeddings[idx],
            [self.labels[i] for i in idx],
            [self.identities[i] for i in idx],
            [self.sources[i] for i in idx],
            self.model,
            self.meta,
        )

    def check_same_model(self, other: Gallery, *, names: tuple[str, str] = ("gallery", "probes")) -> None:
        """Embeddings of two different models are not comparable: raise unless the fingerprints agree."""
        if self.model != other.model:
            raise GalleryError(
                f"the {names[0]} was embedded by model {self.model[:12]} and the {names[1]} by model "
                f"{other.model[:12]}: embeddings of different models cannot be compared; embed both with one model"
            )
        if self.embeddings.shape[1:] != other.embeddings.shape[1:]:
            raise GalleryError(
                f"{names[0]} embeddings {self.embeddings.shape[1:]} and {names[1]} {other.embeddings.shape[1:]} differ"
            )

    def save(self, path: str | Path) -> Path:
        """Write atomically as an uncompressed `.npz` of fixed-width unicode and float32 arrays."""
        write_gallery(path, [GalleryRows(self)], model=self.model, meta=self.meta)
        return Path(path)


def _open(path: Path, what: str = "gallery") -> np.lib.npyio.NpzFile:
    if not path.is_file():
        state = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise GalleryError(
            f"{what} {path} {state}: write one with `python -m biggait.embed MODEL INPUT --out {path}`"
        )
    if not zipfile.is_zipfile(path):
        raise GalleryError(
            f"{what} {path} is not an .npz file (not a zip archive): write one with `python -m biggait.embed`"
        )
    _check_member_sizes(path, what)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise GalleryError(
            f"{what} {path} is not a readable .npz gallery ({type(exc).__name__}: {exc})"
        ) from None


def _check_member_sizes(path: Path, what: str) -> None:
    """Every array's header against its stored size, before numpy allocates what a header claims (a few
    bytes can claim terabytes: numpy's MemoryError)."""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    shape, _, dtype = _HEADER_READERS[version](f)
                    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
                    if claimed > info.file_size - f.tell():
                        raise GalleryError(
                            f"{what} {path}: {info.filename} claims {claimed} bytes of data but holds "
                            f"{info.file_size - f.tell()}: the file is truncated or forged"
                        )
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise GalleryError(
            f"{what} {path} is not a readable .npz gallery ({type(exc).__name__}: {exc})"
        ) from None


def _read_header(
    path: Path, npz: np.lib.npyio.NpzFile, strings: tuple[str, ...] = _STRINGS, what: str = "gallery"
) -> dict[str, np.ndarray]:
    missing = _KEYS - set(npz.files)
    if missing:
        raise GalleryError(f"{what} {path} lacks {sorted(missing)}: it is not a biggait gallery")
    out = {}
    try:
        for key in ("format", "model", *strings):
            out[key] = npz[key]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise GalleryError(f"{what} {path}: field cannot be read ({type(exc).__name__}: {exc})") from None
    if out["format"].shape != () or str(out["format"]) != GALLERY_FORMAT:
        raise GalleryError(f"{what} {path} has format {out['format']!r}, expected {GALLERY_FORMAT}")
    for key in ("model", *strings):
        if out[key].dtype.kind != "U":
            raise GalleryError(f"{what} {path}: {key} must be a unicode array, got {out[key].dtype}")
    return out


def read_gallery_model(path: str | Path) -> str:
    """The model fingerprint of a gallery file, after checking its fields (nothing large is read)."""
    path = Path(path)
    with _open(path) as npz:
        return str(_read_header(path, npz, strings=())["model"])


def _meta(path: Path, npz: np.lib.npyio.NpzFile) -> dict[str, Any]:
    """The optional `meta` member (galleries written before it have none): a JSON object."""
    if "meta" not in npz.files:
        return {}
    try:
        raw = npz["meta"]
        meta = json.loads(str(raw)) if raw.dtype.kind == "U" and raw.shape == () else None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError):
        meta = None
    if not isinstance(meta, dict):
        raise GalleryError(f"gallery {path}: meta is not a JSON object string")
    return meta


def read_gallery_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a gallery file (enrolment dates, calibration); nothing large is read."""
    path = Path(path)
    with _open(path) as npz:
        _read_header(path, npz, strings=())
        return _meta(path, npz)


def read_gallery_strings(path: str | Path, *names: str) -> dict[str, np.ndarray]:
    """Some of `labels` / `identities` / `sources` of a gallery file, as unicode arrays (not Python lists)."""
    path = Path(path)
    with _open(path) as npz:
        head = _read_header(path, npz, strings=names)
    return {name: head[name] for name in names}


def load_gallery(path: str | Path, *, what: str = "gallery") -> Gallery:
    """Read and check a gallery file; a broken or hostile file is one `GalleryError` naming it (as `what`:
    "gallery", "probes")."""
    path = Path(path)
    with _open(path, what) as npz:
        head = _read_header(path, npz, what=what)
        meta = _meta(path, npz)
        try:
            embeddings = npz["embeddings"]
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise GalleryError(
                f"{what} {path}: embeddings cannot be read ({type(exc).__name__}: {exc})"
            ) from None
    if embeddings.dtype != np.float32 or embeddings.ndim != 3:
        raise GalleryError(
            f"{what} {path}: embeddings must be float32 [N, E, parts], got {embeddings.dtype} {embeddings.shape}"
        )
    if 0 in embeddings.shape[1:]:
        raise GalleryError(f"{what} {path}: embeddings of shape {embeddings.shape} have an empty dimension")
    if not np.isfinite(embeddings).all():
        raise GalleryError(f"{what} {path}: embeddings contain NaN or inf")
    try:
        return Gallery(embeddings, *(head[k].tolist() for k in _STRINGS), model=str(head["model"]), meta=meta)
    except GalleryError as exc:
        raise GalleryError(f"{what} {path}: {exc}") from None


def _member_header(f: IO[bytes], path: Path, name: str) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    if version not in _HEADER_READERS:
        raise GalleryError(f"gallery {path}: {name} has unsupported .npy version {version}")
    shape, fortran, dtype = _HEADER_READERS[version](f)
    if fortran:
        raise GalleryError(f"gallery {path}: {name} must be stored in C order")
    if name == "embeddings" and (dtype != np.float32 or len(shape) != 3):
        raise GalleryError(f"gallery {path}: embeddings must be float32 [N, E, parts], got {dtype} {shape}")
    if name == "embeddings" and 0 in shape[1:]:
        raise GalleryError(f"gallery {path}: embeddings of shape {shape} have an empty dimension")
    if name in _STRINGS and (dtype.kind != "U" or len(shape) != 1):
        raise GalleryError(f"gallery {path}: {name} must be a 1-D unicode array, got {dtype} {shape}")
    return tuple(shape), dtype


def gallery_member_header(path: str | Path, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of one array of a gallery file, read from its header (no data is read)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{name}.npy") as f:
            return _member_header(f, path, name)
    except GalleryError:
        raise
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise GalleryError(f"gallery {path}: {name} cannot be read ({type(exc).__name__}: {exc})") from None


def iter_gallery_member(
    path: str | Path, name: str, *, rows: int = 65536
) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows [r, ...]) chunks of one array of a gallery file (`embeddings`, `labels`, `identities` or
    `sources`), read straight from its uncompressed member, so a huge gallery never sits in memory whole."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
        info = zf.getinfo(f"{name}.npy")
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise GalleryError(f"gallery {path}: {name} cannot be read ({type(exc).__name__}: {exc})") from None
    with zf, zf.open(info) as f:
        try:
            shape, dtype = _member_header(f, path, name)
        except GalleryError:
            raise
        except (ValueError, EOFError) as exc:
            raise GalleryError(f"gallery {path}: {name} header is broken ({exc})") from None
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        for start in range(0, shape[0], rows):
            n = min(rows, shape[0] - start)
            data = f.read(n * row_bytes)
            if len(data) != n * row_bytes:
                raise GalleryError(f"gallery {path}: {name} is truncated at row {start}")
            chunk = np.frombuffer(bytearray(data), dtype).reshape(n, *shape[1:])
            if name == "embeddings" and not np.isfinite(chunk).all():
                raise GalleryError(f"gallery {path}: embeddings contain NaN or inf")
            yield start, chunk


def read_gallery_rows(path: str | Path, name: str, rows: Iterable[int]) -> dict[int, str]:
    """The strings of field `name` at some rows of a gallery file, streamed (the field is never read whole)."""
    wanted, out, start = np.array(sorted(set(rows)), np.int64), {}, 0
    for _, chunk in iter_gallery_member(path, name):
        here = wanted[(wanted >= start) & (wanted < start + len(chunk))]
        out.update({int(r): str(chunk[r - start]) for r in here})
        start += len(chunk)
    if len(out) != len(wanted):
        raise GalleryError(f"gallery {path}: {name} has {start} rows, row {int(wanted[-1])} was asked for")
    return out


def iter_gallery_embeddings(path: str | Path, *, rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, embeddings [r, E, p]) chunks of a gallery file, never the whole array."""
    return iter_gallery_member(path, "embeddings", rows=rows)


_EMBEDDING_CHUNK_BYTES = 4 << 20  # embeddings copied per chunk by the streaming writer


class GalleryRows:
    """Rows to write into a gallery file: those of a `Gallery` in memory, or of a gallery file (read in chunks),
    optionally only the rows `keep(labels, identities) -> bool mask` accepts."""

    def __init__(
        self,
        source: Gallery | str | Path,
        *,
        keep: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.source, self.keep = source, keep
        if isinstance(source, Gallery):
            self.name, self.model, self.row_shape = (
                "the new footage",
                source.model,
                source.embeddings.shape[1:],
            )
            self._rows = len(source)
            return
        self.name = f"gallery {source}"
        self.model = read_gallery_model(source)  # also checks every member's stored size
        heads = {name: gallery_member_header(source, name) for name in ("embeddings", *_STRINGS)}
        self.row_shape, self._widths = (
            heads["embeddings"][0][1:],
            {k: v[1].itemsize // 4 for k, v in heads.items()},
        )
        self._rows = heads["embeddings"][0][0]
        if any(heads[k][0][0] != self._rows for k in _STRINGS):
            raise GalleryError(
                f"{self.name}: {self._rows} embeddings but "
                + ", ".join(f"{heads[k][0][0]} {k}" for k in _STRINGS)
            )

    def width(self, name: str) -> int:
        """Characters of the longest string of field `name` (the file's stored width)."""
        if isinstance(self.source, Gallery):
            return max((len(s) for s in getattr(self.source, name)), default=1)
        return self._widths[name]

    def chunk_rows(self) -> int:
        return max(1, _EMBEDDING_CHUNK_BYTES // (4 * int(np.prod(self.row_shape))))

    def _raw(self, name: str) -> Iterator[np.ndarray]:
        rows = self.chunk_rows()
        if isinstance(self.source, Gallery):
            values = self.source.embeddings if name == "embeddings" else getattr(self.source, name)
            for start in range(0, self._rows, rows):
                chunk = values[start : start + rows]
                yield chunk if name == "embeddings" else np.asarray(chunk, dtype=np.str_).reshape(-1)
        else:
            yield from (chunk for _, chunk in iter_gallery_member(self.source, name, rows=rows))

    def masks(self) -> Iterator[np.ndarray]:
        """The kept rows of every chunk, as boolean masks."""
        for labels, identities in zip(self._raw("labels"), self._raw("identities")):
            yield (
                np.ones(len(labels), bool) if self.keep is None else np.asarray(self.keep(labels, identities))
            )

    def chunks(self, name: str) -> Iterator[np.ndarray]:
        """The kept rows of field `name` (or `embeddings`), chunk by chunk."""
        if self.keep is None:
            yield from self._raw(name)
            return
        for chunk, mask in zip(self._raw(name), self.masks(), strict=True):
            yield chunk[mask]

    def __len__(self) -> int:
        return self._rows if self.keep is None else sum(int(m.sum()) for m in self.masks())

    def identity_counts(self) -> Counter[str]:
        """Templates per identity of the kept rows, counted chunk by chunk (memory grows with the people)."""
        counts: Counter[str] = Counter()
        for chunk in self.chunks("identities"):
            names, n = np.unique(chunk, return_counts=True)
            counts.update(dict(zip(names.tolist(), n.tolist())))
        return counts

    def identity_names(self) -> np.ndarray:
        """The distinct identities, sorted, as a unicode array (the codes of `np.searchsorted`)."""
        return np.asarray(sorted(self.identity_counts()), dtype=np.str_)


def _write_member(zf: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple[int, ...],
                  chunks: Iterator[np.ndarray]) -> None:  # fmt: skip
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    written = 0
    with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype)
            f.write(memoryview(chunk.reshape(-1).view(np.uint8)))
            written += chunk.shape[0] if chunk.ndim else 1
    if written != (
        shape[0] if shape else 1
    ):  # a source changed under us: never write a file whose header lies
        raise GalleryError(f"{name}: {written} rows written where {shape[0] if shape else 1} were counted")


def write_gallery(path: str | Path, parts: Sequence[GalleryRows], *, model: str, meta: dict[str, Any]) -> int:
    """Write the rows of `parts`, in order, as one gallery file, chunk by chunk (memory is set by the chunk
    size, not by the galleries' size) and atomically; returns the number of rows."""
    shapes = {tuple(p.row_shape) for p in parts}
    if len(shapes) != 1:
        raise GalleryError(f"embeddings of shapes {sorted(shapes)} cannot share one gallery")
    n = sum(len(p) for p in parts)
    # the zip is closed (its directory written) before atomic_open checks and renames the file
    with atomic_open(path, verify=read_gallery_model) as f, zipfile.ZipFile(f, "w", allowZip64=True) as zf:
        for key, value in (("format", GALLERY_FORMAT), ("model", model), ("meta", json.dumps(meta))):
            _write_member(zf, key, np.dtype(f"<U{max(1, len(value))}"), (), iter([np.str_(value)]))
        _write_member(zf, "embeddings", np.dtype("<f4"), (n, *shapes.pop()),
                      (c for p in parts for c in p.chunks("embeddings")))  # fmt: skip
        for name in _STRINGS:
            dtype = np.dtype(f"<U{max([1, *(p.width(name) for p in parts)])}")
            _write_member(zf, name, dtype, (n,), (c for p in parts for c in p.chunks(name)))
    return n
