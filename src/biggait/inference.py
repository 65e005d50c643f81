"""Embedding: sequences of frames -> one BigGait or BiggerGait embedding each, batched across sequences, chunked
along long ones, on the GPU when there is one.

Both models are frame-by-frame up to the GaitBase temporal max (in eval mode every BatchNorm uses its running
statistics), so frames of many sequences share one forward pass and a long sequence is the running maximum
of its chunks (of each head input's maps: one for BigGait, one per layer group for BiggerGait): the result
equals one forward pass over the whole sequence.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

from biggait.errors import ConfigError
from biggait.models import BigGait, BiggerGait
from biggait.precision import autocast_dtype, describe_precision_on
from biggait.preprocess import normalize_frames

__all__ = ["PRECISIONS", "SequencePooler", "embed_padded", "embed_sequences", "resolve_device"]

# What `--precision` accepts: "auto" (what the hardware has, biggait.precision), Lightning's names, and short
# aliases; "32" = float32, the mixed ones autocast the forward pass.
PRECISIONS = ("auto", "32", "32-true", "fp32", "16-mixed", "fp16", "bf16-mixed", "bf16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> the first CUDA GPU when present, else the CPU; anything else as torch.device, refused
    (`ConfigError`) when it names no device of this machine."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a device: auto, cpu, cuda, cuda:1, mps, ...") from None
    if dev.type == "cuda" and (
        not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()
    ):
        raise ConfigError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPUs visible; use --device "
            "cpu (or auto)"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available here; use --device cpu (or auto)")
    return dev


class SequencePooler:
    """Streams the frames of many sequences through the model `batch_frames` at a time and keeps the running
    temporal max of each sequence; `add` / `finish` return the sequences completed so far as (index, [E, p]).

    `precision="auto"` on bf16 / fp16 hardware runs only the frozen backbone in the low precision and the GRE
    and GaitBase in fp32 (`model.eval_precision="fp32"` while it runs, unless the model sets its own;
    docs/performance.md)."""

    def __init__(
        self,
        model: BigGait | BiggerGait,
        *,
        batch_frames: int = 256,
        device: torch.device | None = None,
        precision: str = "32",
    ) -> None:
        if batch_frames < 1:
            raise ConfigError(f"batch_frames must be >= 1, got {batch_frames}")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.model = model
        self.batch_frames = batch_frames
        self.device = device or next(model.parameters()).device
        self.precision = describe_precision_on(precision, self.device)  # says what "auto" picked
        self.dtype = autocast_dtype(self.precision.precision)
        self._queue: deque[tuple[int, np.ndarray | torch.Tensor, torch.Tensor]] = deque()
        self._queued = 0
        self._remaining: dict[int, int] = {}  # frames of a sequence still queued
        self._open: set[int] = set()  # sequences that may still get frames
        self._pooled: dict[int, list[torch.Tensor]] = {}

    def add(
        self, index: int, frames: np.ndarray | torch.Tensor, ratios: np.ndarray | torch.Tensor
    ) -> list[tuple[int, torch.Tensor]]:
        """Queue one whole sequence: uint8 RGB frames [T, H, W, 3] (numpy, normalised chunk by chunk on the
        device) or normalised float frames [T, 3, H, W] (tensor), with ratios [T]."""
        if int(frames.shape[0]) == 0:
            raise ConfigError(f"sequence {index} has no frames")
        return self.extend(index, frames, ratios) + self.close(index)

    def extend(
        self, index: int, frames: np.ndarray | torch.Tensor, ratios: np.ndarray | torch.Tensor
    ) -> list[tuple[int, torch.Tensor]]:
        """Queue more frames of sequence `index` (streaming: a sequence arrives in windows; `close` ends it).
        At most `batch_frames` frames stay queued, whatever the sequences' lengths."""
        n = int(frames.shape[0])
        self._open.add(index)
        self._remaining[index] = self._remaining.get(index, 0) + n
        if n:
            self._queue.append((index, frames, torch.as_tensor(np.asarray(ratios, np.float32))))
            self._queued += n
        done: list[tuple[int, torch.Tensor]] = []
        while self._queued >= self.batch_frames:
            done += self._run(self.batch_frames)
        return done

    def close(self, index: int) -> list[tuple[int, torch.Tensor]]:
        """No more frames for sequence `index`: its embedding comes out once its queued frames have run."""
        self._open.discard(index)
        if self._remaining.get(index):
            return []
        self._remaining.pop(index, None)
        if index not in self._pooled:
            raise ConfigError(f"sequence {index} has no frames")
        return [(index, self._embed(index))]

    def finish(self) -> list[tuple[int, torch.Tensor]]:
        """Run every queued frame: the closed sequences' embeddings."""
        done: list[tuple[int, torch.Tensor]] = []
        while self._queued:
            done += self._run(min(self._queued, self.batch_frames))
        return done

    def _embed(self, index: int) -> torch.Tensor:
        with torch.no_grad():
            return self.model.embed([m[None] for m in self._pooled.pop(index)])[0].float()

    @contextmanager
    def _eval_precision(self) -> Iterator[None]:
        """The model's `eval_precision` for one forward pass: what "auto" picked, when the model sets none."""
        if self.precision.eval_precision is None or self.model.eval_precision is not None:
            yield
            return
        self.model.eval_precision = self.precision.eval_precision
        try:
            yield
        finally:
            self.model.eval_precision = None

    def _chunk(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(frames, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2)
            return normalize_frames(x[None])[0]
        return frames.to(self.device).float()

    def _run(self, count: int) -> list[tuple[int, torch.Tensor]]:
        pieces, owners = [], []
        while count:
            index, frames, ratios = self._queue[0]
            take = min(count, int(frames.shape[0]))
            pieces.append((self._chunk(frames[:take]), ratios[:take]))
            owners.append((index, take))
            if take == frames.shape[0]:
                self._queue.popleft()
            else:
                self._queue[0] = (index, frames[take:], ratios[take:])
            count -= take
            self._queued -= take
        x = torch.cat([p for p, _ in pieces])[None]
        r = torch.cat([r for _, r in pieces])[None].to(self.device)
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()
        )
        with torch.no_grad(), autocast, self._eval_precision():
            features = self.model.forward_features(x, r)
            with self.model.trainable_autocast(self.device):  # fp32 under eval_precision="fp32"
                maps = [m[0].float() for m in self.model.frame_maps(features)]
        done, start = [], 0
        for index, take in owners:
            chunk_max = [m[start : start + take].amax(0) for m in maps]
            start += take
            prev = self._pooled.get(index)
            self._pooled[index] = chunk_max if prev is None else list(map(torch.maximum, prev, chunk_max))
            self._remaining[index] -= take
            if self._remaining[index] == 0 and index not in self._open:
                del self._remaining[index]
                done.append((index, self._embed(index)))
        return done


def embed_sequences(
    model: BigGait | BiggerGait,
    sequences: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    batch_frames: int = 256,
    device: str | torch.device = "auto",
    precision: str = "32",
) -> Iterator[np.ndarray]:
    """(frames uint8 [T, H, W, 3] at `model.frame_size`, ratios [T]) per sequence -> embeddings [E, p] float32,
    in input order. The model is moved to `device` and put in eval mode."""
    dev = resolve_device(device)
    model.to(dev).eval()
    pooler = SequencePooler(model, batch_frames=batch_frames, device=dev, precision=precision)
    ready: dict[int, np.ndarray] = {}
    next_out = 0
    for index, (frames, ratios) in enumerate(sequences):
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ConfigError(
                f"sequence {index}: frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}"
            )
        if tuple(frames.shape[1:3]) != tuple(model.frame_size):
            raise ConfigError(
                f"sequence {index}: frames are {frames.shape[1]}x{frames.shape[2]} but the model was trained on "
                f"{model.frame_size[0]}x{model.frame_size[1]}; prepare crops with biggait.preprocess.prepare_crops"
            )
        for i, emb in pooler.add(index, frames, ratios):
            ready[i] = emb.cpu().numpy()
        while next_out in ready:
            yield ready.pop(next_out)
            next_out += 1
    for i, emb in pooler.finish():
        ready[i] = emb.cpu().numpy()
    while next_out in ready:
        yield ready.pop(next_out)
        next_out += 1


def embed_padded(
    model: BigGait | BiggerGait,
    frames: torch.Tensor,
    ratios: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    batch_frames: int = 256,
    precision: str = "32",
) -> torch.Tensor:
    """An evaluation batch (normalised frames [n, S, 3, H, W] zero-padded, ratios [n, S], lengths [n]) ->
    embeddings [n, E, p], long sequences in chunks of `batch_frames`."""
    n, s = frames.shape[:2]
    lengths = torch.full((n,), s) if lengths is None else lengths
    pooler = SequencePooler(model, batch_frames=batch_frames, device=frames.device, precision=precision)
    out: dict[int, torch.Tensor] = {}
    for i in range(n):
        t = int(lengths[i])
        out.update(pooler.add(i, frames[i, :t], ratios[i, :t].cpu()))
    out.update(pooler.finish())
    return torch.stack([out[i] for i in range(n)])
