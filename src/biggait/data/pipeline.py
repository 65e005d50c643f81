"""Streaming readers over the tar shards, on webdataset's pipeline: identity-balanced P x K training batches and
ordered evaluation, from a local directory or any URL webdataset's `gopen` opens (docs/1_data.md)."""

from __future__ import annotations

import itertools
import json
import os
import re
import tarfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from hashlib import sha1
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import albumentations as A
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.cache import FileCache, islocal
from webdataset.handlers import reraise_exception
from webdataset.tariterators import group_by_keys, tar_file_expander

from biggait.data.roots import describe_exit
from biggait.data.shards import decode_image, frame_field, silhouette_field
from biggait.errors import ConfigError, CorruptDataError

__all__ = [
    "BadDataWarning",
    "EvalStream",
    "RawSample",
    "ShardError",
    "ShardInfo",
    "TrainStream",
    "consumer_split",
    "iter_shard",
    "pad_sequences",
    "validate_sample",
]


class BadDataWarning(UserWarning):
    """A shard, sample or frame was unreadable and skipped."""


class ShardError(CorruptDataError):
    """A shard could not be opened or read to its end (corrupt, truncated, or its URL failed)."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard (a local path or a gopen URL) and the sample count its manifest promises."""

    path: str
    n_samples: int
    name: str = ""  # its file name in the manifest (messages); the path's last part when empty

    @property
    def label(self) -> str:
        return self.name or Path(urlparse(self.path).path).name or self.path


@dataclass
class RawSample:
    """An undecoded sequence: metadata plus the encoded bytes of the frames kept so far."""

    key: str
    shard: str
    subject: str
    seq_type: str
    view: str
    frame_size: tuple[int, int]
    ratios: np.ndarray  # float32 [t], for the kept frames
    frames: list[bytes]  # kept frames, in the order they will be stacked
    silhouettes: list[bytes] | None = None


def cache_name(url: str) -> str:
    """A flat, collision-free file name for a cached copy of `url` (webdataset's `FileCache` wants no '/')."""
    tail = re.sub(r"[^A-Za-z0-9_.-]", "_", urlparse(url).path.rsplit("/", 1)[-1])[-80:]
    return f"{sha1(url.encode()).hexdigest()[:16]}-{tail}"


def open_shard(url: str, cache_dir: str | None = None) -> Any:
    """A binary stream of the shard: webdataset's `gopen` (files, http(s) via curl, pipe:, gs, hf), or, with
    `cache_dir`, a local copy that webdataset's `FileCache` downloads once (written under a temporary name
    and renamed, so a killed download never leaves a partial shard)."""
    if cache_dir is None or islocal(url):
        return wds.gopen(url, "rb")
    cache = FileCache(cache_dir, url_to_name=cache_name)
    try:
        return open(cache.get_file(url), "rb")
    except BaseException:
        Path(cache_dir, f"{cache_name(url)}.temp{os.getpid()}").unlink(missing_ok=True)
        raise


def _quiet_close(stream: Any) -> None:
    try:
        if stream is not None:
            stream.close()
    except Exception:  # a command stopped early by its reader (SIGPIPE) or already failed: reported elsewhere
        pass


def _reason(exc: BaseException) -> str:
    first = str(exc.args[0]).split(" @ ")[0] if exc.args else str(exc)  # webdataset appends the stream
    status = re.search(r"\): exit (\d+) \(read\)", first)  # webdataset's Pipe: "(args, kw): exit N (read)"
    if status:
        first = f"the command exited with status {status.group(1)}"
    return f"{type(exc).__name__}: {first.splitlines()[0] if first else ''}"


def iter_shard(
    url: str, *, cache_dir: str | None = None, select: Callable[[str], bool] | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream (key, {field: bytes}) samples of one shard through webdataset's tar expander and `group_by_keys`.

    `select(member_name)` drops members before their bytes are copied. A corrupt, truncated or unreadable
    shard (a URL that fails: 404, no curl, a `pipe:` command that exits non-zero) raises `ShardError` naming
    the cause; a sample is yielded only once the next key starts, so a truncated last sample never is.
    """
    stream = None
    try:
        stream = open_shard(url, cache_dir)
        files = tar_file_expander(
            [{"url": url, "stream": stream}], handler=reraise_exception, select_files=select
        )
        for sample in group_by_keys(files, handler=reraise_exception):
            yield sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")}
        stream.close()  # a command (curl, pipe:) reports its failure when it is waited for
    except (tarfile.TarError, OSError, EOFError, ValueError, AssertionError) as exc:
        _quiet_close(stream)
        cause = describe_exit(stream, urlparse(url).scheme)
        raise ShardError(f"{cause} ({_reason(exc)})" if cause else _reason(exc)) from exc
    finally:
        _quiet_close(stream)  # also when the reader stops early


_SILHOUETTE_MEMBER = re.compile(r"\.s\d{4}\.png$")


def without_silhouettes(member: str) -> bool:
    """`iter_shard(select=...)` for training: silhouettes (`<key>.sNNNN.png`) are never copied."""
    return _SILHOUETTE_MEMBER.search(member) is None


def consumer_split(
    shards: Sequence[ShardInfo], *, rank: int, world_size: int, worker: int, num_workers: int
) -> tuple[list[int], int | None, int]:
    """Which shards (indices) this rank's worker reads, and which samples of them it keeps.

    Consumer c = rank * num_workers + worker of n = world_size * num_workers. With at least n shards each
    consumer reads shards c, c + n, ... whole (returned modulus None). With fewer shards every consumer reads
    all of them and keeps the samples whose global position (manifest order) is c mod n, so no sample is
    duplicated or dropped and no consumer starves. (webdataset's `split_by_node` / `split_by_worker` deal out
    whole shards only, and take the rank from the environment, which Lightning's spawned workers do not set.)
    """
    n, c = world_size * num_workers, rank * num_workers + worker
    if len(shards) >= n:
        return list(range(c, len(shards), n)), None, c
    return list(range(len(shards))), n, c


def parse_sample(key: str, fields: dict[str, bytes], shard: str, *, silhouettes: bool) -> RawSample:
    """Check the fields of one tar sample; raises `CorruptDataError` naming what is missing."""
    if "meta.json" not in fields:
        raise CorruptDataError(f"sample {key} in {shard} has no meta.json")
    try:
        meta = json.loads(fields["meta.json"])
        n, fmt = int(meta["n_frames"]), meta["image_format"]
        ratios = np.asarray(meta["ratios"], np.float32)
        frame_size = (int(meta["frame_size"][0]), int(meta["frame_size"][1]))
        subject, seq_type, view = str(meta["subject"]), str(meta["type"]), str(meta["view"])
        has_sils = bool(meta["silhouettes"])
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise CorruptDataError(
            f"sample {key} in {shard}: bad meta.json ({type(exc).__name__}: {exc})"
        ) from exc
    if n < 1 or ratios.shape != (n,):
        raise CorruptDataError(f"sample {key} in {shard}: n_frames={n} but {ratios.size} ratios")
    names = [frame_field(t, fmt) for t in range(n)]
    missing = [name for name in names if name not in fields]
    sil_names = [silhouette_field(t) for t in range(n)] if silhouettes and has_sils else []
    missing += [name for name in sil_names if name not in fields]
    if missing:
        raise CorruptDataError(
            f"sample {key} in {shard}: missing fields {missing[:3]} ({len(missing)} in all)"
        )
    return RawSample(
        key=key,
        shard=shard,
        subject=subject,
        seq_type=seq_type,
        view=view,
        frame_size=frame_size,
        ratios=ratios,
        frames=[fields[name] for name in names],
        silhouettes=[fields[name] for name in sil_names] if sil_names else None,
    )


def validate_sample(sample: RawSample, *, frame_size: tuple[int, int] | None) -> RawSample:
    """Checks of a parsed sample's metadata, before any frame is decoded; raises `CorruptDataError`.

    Ratios (width / height of the original crop) must be finite and > 0: a negative one would zero the valid
    region of every frame and give a finite but meaningless embedding. The sample's frame size must be the
    manifest's `frame_size`: batches stack frames, so one odd-size sample would break collation.
    """
    if not np.all(np.isfinite(sample.ratios)) or np.any(sample.ratios <= 0):
        bad = sample.ratios[~(np.isfinite(sample.ratios) & (sample.ratios > 0))]
        raise CorruptDataError(
            f"sample {sample.key} in {sample.shard}: ratios must be finite and > 0, found {bad[:3].tolist()}"
        )
    if frame_size is not None and sample.frame_size != tuple(frame_size):
        raise CorruptDataError(
            f"sample {sample.key} in {sample.shard}: frame size {list(sample.frame_size)} is not the "
            f"manifest's frame_size {list(frame_size)}"
        )
    return sample


def select_frames(sample: RawSample, indices: np.ndarray) -> RawSample:
    """Keep only the chosen frames (still encoded): only what is sampled is ever decoded."""
    sample.frames = [sample.frames[i] for i in indices]
    sample.ratios = sample.ratios[indices]
    if sample.silhouettes is not None:
        sample.silhouettes = [sample.silhouettes[i] for i in indices]
    return sample


def decode_frames(sample: RawSample) -> np.ndarray:
    """uint8 [t, H, W, 3] RGB; raises `CorruptDataError` for an undecodable or mis-sized frame."""
    frames = []
    for t, buf in enumerate(sample.frames):
        try:
            image = decode_image(buf, colour=True, size=sample.frame_size)
        except CorruptDataError as exc:
            raise CorruptDataError(f"sample {sample.key} in {sample.shard}: frame {t}: {exc}") from exc
        frames.append(image)
    return np.stack(frames)


def decode_silhouettes(sample: RawSample) -> np.ndarray:
    try:
        return np.stack(
            [decode_image(buf, colour=False, size=sample.frame_size) for buf in sample.silhouettes]
        )
    except CorruptDataError as exc:
        raise CorruptDataError(f"sample {sample.key} in {sample.shard}: silhouette: {exc}") from exc


class _ShardStream(IterableDataset):
    """Shared plumbing: consumer split, bad-data accounting and the shard reader (one webdataset stage)."""

    def __init__(
        self,
        shards: Sequence[ShardInfo],
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        frame_size: tuple[int, int] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if not shards:
            raise ConfigError("a shard stream needs at least one shard")
        self.shards = list(shards)
        # The manifest's frame size: samples of any other size are skipped (None: each sample's own meta).
        self.frame_size = None if frame_size is None else (int(frame_size[0]), int(frame_size[1]))
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.silhouettes = False
        self._skipped = 0

    def set_rank(self, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world size {world_size}")
        self.rank, self.world_size = rank, world_size

    @staticmethod
    def _worker() -> tuple[int, int]:
        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def _split(self, worker: int, num_workers: int) -> tuple[list[int], int | None, int]:
        return consumer_split(
            self.shards, rank=self.rank, world_size=self.world_size, worker=worker, num_workers=num_workers
        )

    def _skip(self, message: str, *, count: int = 1) -> None:
        self._skipped += count
        warnings.warn(f"skipped bad data: {message}", BadDataWarning, stacklevel=2)

    def _take_skipped(self) -> torch.Tensor:
        count, self._skipped = self._skipped, 0
        return torch.tensor(count, dtype=torch.int64)

    def _read_stage(self, shards: Iterable[int], keep: int | None, consumer: int) -> Iterator[RawSample]:
        """Pipeline stage: shard indices -> this consumer's parsed, validated samples."""
        offsets = self._offsets()
        for index in shards:
            yield from self._read_shard(index, keep, consumer, offsets[index])

    def _read_shard(self, index: int, keep: int | None, consumer: int, offset: int) -> Iterator[RawSample]:
        """Parsed, validated samples of one shard (those of this consumer); bad ones are skipped and counted."""
        shard = self.shards[index]
        name, seen = shard.label, 0
        select = None if self.silhouettes else without_silhouettes
        try:
            for position, (key, fields) in enumerate(
                iter_shard(shard.path, cache_dir=self.cache_dir, select=select)
            ):
                if position >= shard.n_samples:
                    # The consumer split relies on the manifest's counts: an under-stated one is a bad manifest.
                    raise CorruptDataError(
                        f"shard {name} holds more than the {shard.n_samples} samples its manifest entry "
                        f"(shards[].n_samples) says; rebuild the manifest with `make data`"
                    )
                seen += 1
                if keep is not None and (offset + position) % keep != consumer:
                    continue
                try:
                    sample = parse_sample(key, fields, name, silhouettes=self.silhouettes)
                    yield validate_sample(sample, frame_size=self.frame_size)
                except CorruptDataError as exc:
                    self._skip(str(exc))
        except ShardError as exc:
            self._skip(
                f"shard {name} is corrupt, truncated or unreadable after {seen} samples ({exc})",
                count=max(1, self._mine(range(seen, shard.n_samples), keep, consumer, offset)),
            )
            return
        if seen < shard.n_samples:
            self._skip(
                f"shard {name} holds {seen} samples, its manifest says {shard.n_samples} (truncated?)",
                count=max(1, self._mine(range(seen, shard.n_samples), keep, consumer, offset)),
            )

    @staticmethod
    def _mine(positions: range, keep: int | None, consumer: int, offset: int) -> int:
        """How many of these shard positions this consumer would have read (lost samples, when truncated)."""
        return len(positions) if keep is None else sum((offset + p) % keep == consumer for p in positions)

    def _offsets(self) -> list[int]:
        return np.concatenate([[0], np.cumsum([s.n_samples for s in self.shards])[:-1]]).astype(int).tolist()


class TrainStream(_ShardStream):
    """Endless identity-balanced P x K batches of `frames_per_sequence` unordered frames (OpenGait `TripletSampler` and `fixed_unordered` sampling).

    A `wds.DataPipeline` per consumer (rank x worker) and epoch: its shards in a fresh seeded order every pass,
    read by webdataset's tar expander, parsed and checked, only the sampled frames kept (still encoded) in a
    buffer grouped by identity, and batches of P identities x K sequences emitted (identities with >= K
    buffered sequences first; K drawn with replacement from an identity with fewer). Every epoch starts a
    fresh pipeline seeded by (seed, rank, world size, worker, epoch): epochs never replay each other, and a run
    resumed at an epoch boundary (`start_epoch`) sees exactly the batches of an uninterrupted run.
    """

    def __init__(
        self,
        shards: Sequence[ShardInfo],
        *,
        labels: dict[str, int],
        frames_per_sequence: int = 30,
        ids_per_batch: int = 8,
        seqs_per_id: int = 8,
        steps_per_epoch: int = 1000,
        shuffle_buffer: int = 256,
        flip_prob: float = 0.5,
        color_jitter: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        start_epoch: int = 0,
        frame_size: tuple[int, int] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            shards, rank=rank, world_size=world_size, seed=seed, frame_size=frame_size, cache_dir=cache_dir
        )
        self._next_epoch = start_epoch
        for name, value in (
            ("frames_per_sequence", frames_per_sequence),
            ("ids_per_batch", ids_per_batch),
            ("seqs_per_id", seqs_per_id),
            ("steps_per_epoch", steps_per_epoch),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ConfigError(f"flip_prob must be in [0, 1], got {flip_prob}")
        if not 0.0 <= color_jitter <= 1.0:
            raise ConfigError(f"color_jitter must be in [0, 1], got {color_jitter}")
        self.color_jitter = color_jitter
        self.labels = dict(labels)
        self.frames_per_sequence = frames_per_sequence
        self.ids_per_batch, self.seqs_per_id = ids_per_batch, seqs_per_id  # P x K
        self.steps_per_epoch, self.flip_prob = steps_per_epoch, flip_prob
        self.shuffle_buffer = max(shuffle_buffer, ids_per_batch * seqs_per_id)

    def __len__(self) -> int:
        return self.steps_per_epoch  # batches per rank per epoch, whatever the worker count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = self._worker()
        # Workers share the rank's epoch: worker w yields its round-robin share, so the DataLoader sees exactly
        # steps_per_epoch batches on every rank and DDP never waits on a rank that ran dry.
        n_batches = self.steps_per_epoch // num_workers + (worker < self.steps_per_epoch % num_workers)
        # Each worker holds its own copy (persistent workers keep it), so the counter advances per epoch.
        epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        if n_batches > 0:
            yield from self.pipeline(worker, num_workers, epoch).with_epoch(n_batches)

    def _seed_sequence(self, worker: int, num_workers: int, epoch: int = 0) -> np.random.SeedSequence:
        entropy = [self.seed, self.rank, self.world_size, worker, num_workers]
        return np.random.SeedSequence(entropy + [epoch] if epoch else entropy)

    def pipeline(self, worker: int, num_workers: int, epoch: int = 0) -> wds.DataPipeline:
        """This consumer's endless batch pipeline for `epoch`; one generator draws every random choice in
        stream order (shard order, frames, P x K picks), so a seed gives one sequence of batches."""
        seq = self._seed_sequence(worker, num_workers, epoch)
        rng = np.random.default_rng(seq)
        mine, keep, consumer = self._split(worker, num_workers)
        return wds.DataPipeline(
            partial(self._shard_passes, mine, rng),
            partial(self._known_samples, mine=mine, keep=keep, consumer=consumer, worker=worker),
            partial(self._sample_frames, rng=rng),
            partial(self._pk_batches, rng=rng, augment=self._sequence_augment(seq)),
        )

    @staticmethod
    def _shard_passes(mine: list[int], rng: np.random.Generator) -> Iterator[tuple[int, int]]:
        """Source stage: (pass, shard index), endless, every pass in a new seeded order."""
        for n_pass in itertools.count():
            for index in rng.permutation(mine):
                yield n_pass, int(index)

    def _known_samples(
        self,
        passes: Iterable[tuple[int, int]],
        *,
        mine: list[int],
        keep: int | None,
        consumer: int,
        worker: int,
    ) -> Iterator[RawSample]:
        """Read stage: samples of a subject the manifest lists; a pass without any (or, the first pass, with
        fewer than P identities) stops with one error."""
        offsets, seen_subjects, n_read, current = self._offsets(), set(), 0, 0
        for n_pass, index in passes:
            if n_pass != current:
                self._check_pass(current, n_read, seen_subjects, mine, worker)
                current, n_read = n_pass, 0
            for sample in self._read_shard(index, keep, consumer, offsets[index]):
                if sample.subject not in self.labels:
                    self._skip(
                        f"sample {sample.key} in {sample.shard}: subject {sample.subject} not in the manifest"
                    )
                    continue
                n_read += 1
                seen_subjects.add(sample.subject)
                yield sample

    def _check_pass(self, n_pass: int, n_read: int, subjects: set[str], mine: list[int], worker: int) -> None:
        if n_read == 0:
            names = [self.shards[i].label for i in mine]
            raise CorruptDataError(
                f"rank {self.rank} worker {worker}: no readable training sample in {names}"
            )
        if n_pass == 0 and len(subjects) < self.ids_per_batch:
            raise ConfigError(
                f"rank {self.rank} worker {worker} sees {len(subjects)} identities, fewer than "
                f"ids_per_batch={self.ids_per_batch}; lower ids_per_batch or write more shards (smaller --shard-size)"
            )

    def _sample_frames(
        self, samples: Iterable[RawSample], *, rng: np.random.Generator
    ) -> Iterator[RawSample]:
        """Frame stage, on the encoded bytes: OpenGait's `fixed_unordered` sampling (with replacement when short)."""
        for sample in samples:
            t, s = len(sample.frames), self.frames_per_sequence
            yield select_frames(sample, rng.choice(t, s, replace=t < s))

    def _sequence_augment(self, seq: np.random.SeedSequence) -> A.Compose:
        transforms = [A.HorizontalFlip(p=self.flip_prob)]
        if self.color_jitter > 0:
            # Not in the paper recipe (OpenGait `configs/biggait/BigGait_CCPG.yaml`): an option that makes clothing colour useless for identity
            # (hue rotation + channel shuffle, value untouched so the black pad stays black).
            transforms += [
                A.HueSaturationValue(
                    hue_shift_limit=90, sat_shift_limit=40, val_shift_limit=0, p=self.color_jitter
                ),
                A.ChannelShuffle(p=self.color_jitter),
            ]
        return A.Compose(transforms, seed=int(seq.generate_state(1)[0]))

    def _pk_batches(
        self, samples: Iterator[RawSample], *, rng: np.random.Generator, augment: A.Compose
    ) -> Iterator[dict[str, Any]]:
        """Batch stage: an identity-keyed buffer of `shuffle_buffer` sequences -> P x K decoded batches."""
        buffer: dict[str, list[RawSample]] = {}
        size = 0
        while True:
            while size < self.shuffle_buffer or len(buffer) < self.ids_per_batch:
                sample = next(samples)
                buffer.setdefault(sample.subject, []).append(sample)
                size += 1
            batch: list[tuple[RawSample, np.ndarray]] = []
            used: set[str] = set()
            while len(batch) < self.ids_per_batch * self.seqs_per_id:
                candidates = [s for s in buffer if s not in used]
                if not candidates:  # every decodable identity used: read more (only after bad data)
                    sample = next(samples)
                    buffer.setdefault(sample.subject, []).append(sample)
                    size += 1
                    continue
                full = [s for s in candidates if len(buffer[s]) >= self.seqs_per_id]
                subject = full[rng.integers(len(full))] if full else candidates[rng.integers(len(candidates))]
                used.add(subject)
                group = self._take(buffer, subject, rng)
                size -= len(group)
                batch.extend(self._decode_group(group, rng, augment))
            yield self._collate(batch)

    def _take(
        self, buffer: dict[str, list[RawSample]], subject: str, rng: np.random.Generator
    ) -> list[RawSample]:
        items = buffer[subject]
        if len(items) >= self.seqs_per_id:
            pick = rng.choice(len(items), self.seqs_per_id, replace=False)
            chosen, taken = [items[i] for i in pick], set(pick.tolist())
            rest = [x for i, x in enumerate(items) if i not in taken]
        else:  # fewer than K: take them all, K with replacement (OpenGait `TripletSampler`, `opengait/data/sampler.py`)
            chosen, rest = items, []
        if rest:
            buffer[subject] = rest
        else:
            del buffer[subject]
        return chosen

    def _decode_group(
        self, group: list[RawSample], rng: np.random.Generator, sequence_augment: A.Compose
    ) -> list[tuple[RawSample, np.ndarray]]:
        decoded = []
        for sample in group:
            try:
                decoded.append((sample, decode_frames(sample)))
            except CorruptDataError as exc:
                self._skip(str(exc))
        if not decoded:
            return []
        picks = list(range(len(decoded)))
        if len(picks) < self.seqs_per_id:
            picks += rng.choice(len(decoded), self.seqs_per_id - len(picks), replace=True).tolist()
        # One flip (and colour) decision per sequence, the same for all its frames (OpenGait `configs/biggait/BigGait_CCPG.yaml`).
        return [(decoded[i][0], sequence_augment(images=decoded[i][1])["images"]) for i in picks]

    def _collate(self, batch: list[tuple[RawSample, np.ndarray]]) -> dict[str, Any]:
        frames = torch.from_numpy(
            np.ascontiguousarray(np.stack([f for _, f in batch]).transpose(0, 1, 4, 2, 3))
        )
        return {
            "frames": frames,  # uint8 [P*K, S, 3, H, W]; normalised on the device
            "ratios": torch.from_numpy(np.stack([s.ratios for s, _ in batch]).astype(np.float32)),
            "labels": torch.tensor([self.labels[s.subject] for s, _ in batch], dtype=torch.int64),
            "subjects": [s.subject for s, _ in batch],
            "types": [s.seq_type for s, _ in batch],
            "views": [s.view for s, _ in batch],
            "n_skipped": self._take_skipped(),
        }


def pad_sequences(
    frames: Sequence[np.ndarray],
    ratios: Sequence[np.ndarray],
    silhouettes: Sequence[np.ndarray | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Whole sequences -> `frames` uint8 [n, S, 3, H, W] zero-padded to the longest, `ratios` [n, S], `lengths`,
    and `silhouettes` uint8 [n, S, H, W] when given (None entries stay zero): the one batch builder of
    evaluation batches. Padding repeats the last ratio, so a padded frame is still a valid input to
    `padding_resize` (OpenGait `BigGait.py`)."""
    n, longest = len(frames), max(len(f) for f in frames)
    h, w = frames[0].shape[1:3]
    batch = {
        "frames": torch.zeros(n, longest, 3, h, w, dtype=torch.uint8),
        "ratios": torch.zeros(n, longest, dtype=torch.float32),
        "lengths": torch.tensor([len(f) for f in frames], dtype=torch.int64),
    }
    for i, (f, r) in enumerate(zip(frames, ratios)):
        batch["frames"][i, : len(f)] = torch.from_numpy(f).permute(0, 3, 1, 2)
        batch["ratios"][i] = float(r[-1])
        batch["ratios"][i, : len(f)] = torch.from_numpy(np.asarray(r, np.float32))
    if silhouettes is not None:
        batch["silhouettes"] = torch.zeros(n, longest, h, w, dtype=torch.uint8)
        for i, sil in enumerate(silhouettes):
            if sil is not None:
                batch["silhouettes"][i, : len(sil)] = torch.from_numpy(sil)
    return batch


class EvalStream(_ShardStream):
    """Every sequence of the consumer's shards exactly once, frames in order, truncated to `frames_limit` (OpenGait's `all_ordered` test sampling)."""

    def __init__(
        self,
        shards: Sequence[ShardInfo],
        *,
        labels: dict[str, int],
        batch_size: int = 1,
        frames_limit: int | None = 250,
        silhouettes: bool = False,
        rank: int = 0,
        world_size: int = 1,
        frame_size: tuple[int, int] | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(shards, rank=rank, world_size=world_size, frame_size=frame_size, cache_dir=cache_dir)
        self.num_workers = num_workers  # the DataLoader's: how this rank's sequences are dealt out
        if batch_size < 1 or (frames_limit is not None and frames_limit < 1):
            raise ConfigError(
                f"eval batch_size ({batch_size}) and frames_limit ({frames_limit}) must be >= 1"
            )
        self.labels, self.batch_size, self.frames_limit = dict(labels), batch_size, frames_limit
        self.silhouettes = silhouettes

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = self._worker()
        mine, keep, consumer = self._split(worker, num_workers)
        yield from wds.DataPipeline(
            partial(iter, mine),  # the consumer's shards in manifest order, read once
            partial(self._read_stage, keep=keep, consumer=consumer),
            self._decoded,
            self._batches,
        )

    def _decoded(
        self, samples: Iterable[RawSample]
    ) -> Iterator[tuple[RawSample, np.ndarray, np.ndarray | None]]:
        """Decode stage: the first `frames_limit` frames (OpenGait's `all_ordered`); undecodable ones skipped."""
        for sample in samples:
            limit = len(sample.frames) if self.frames_limit is None else self.frames_limit
            sample = select_frames(sample, np.arange(min(len(sample.frames), limit)))
            try:
                frames = decode_frames(sample)
                sils = decode_silhouettes(sample) if self.silhouettes and sample.silhouettes else None
            except CorruptDataError as exc:
                self._skip(str(exc))
                continue
            yield sample, frames, sils

    def _batches(
        self, items: Iterable[tuple[RawSample, np.ndarray, np.ndarray | None]]
    ) -> Iterator[dict[str, Any]]:
        """Batch stage: `batch_size` sequences, zero-padded; the last batch is held back so skips found after
        it (a truncated last shard) are still counted."""
        pending, ready = [], None
        for item in items:
            pending.append(item)
            if len(pending) == self.batch_size:
                if ready is not None:
                    yield ready
                ready, pending = self._collate(pending), []
        if pending:
            if ready is not None:
                yield ready
            ready = self._collate(pending)
        if ready is not None:
            ready["n_skipped"] += self._take_skipped()
            yield ready

    def __len__(self) -> int:
        """Batches this rank yields, counted from the manifest (so progress bars know their total)."""
        workers, batches = max(self.num_workers, 1), 0
        total = sum(shard.n_samples for shard in self.shards)
        for worker in range(workers):
            mine, keep, consumer = self._split(worker, workers)
            if keep is None:
                count = sum(self.shards[index].n_samples for index in mine)
            else:
                count = len(range(consumer, total, keep))
            batches += -(-count // self.batch_size)
        return batches

    def _collate(self, items: list[tuple[RawSample, np.ndarray, np.ndarray | None]]) -> dict[str, Any]:
        batch = pad_sequences(
            [f for _, f, _ in items],
            [s.ratios for s, _, _ in items],
            [s for _, _, s in items] if self.silhouettes else None,
        )
        batch.update(
            labels=torch.tensor([self.labels.get(s.subject, -1) for s, _, _ in items], dtype=torch.int64),
            subjects=[s.subject for s, _, _ in items],
            types=[s.seq_type for s, _, _ in items],
            views=[s.view for s, _, _ in items],
            n_skipped=self._take_skipped(),
        )
        return batch
