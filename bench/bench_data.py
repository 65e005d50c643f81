"""Data-pipeline throughput (frames/s, sequences/s) of GaitDataModule for 1 and 2 DataLoader workers.

Without --root it first writes a CCPG-shaped synthetic set (256x128 PNG frames) into a temp directory.
Run: ``make bench-data`` or ``python bench/bench_data.py [--root data/ccpg] [--batches 8] [-P 8 -K 8]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image_formats import person_frames  # noqa: E402
from biggait.data import GaitDataModule, SequenceRecord, write_shards  # noqa: E402


def load(spec: tuple) -> SequenceRecord:
    subject, seq_type, n, seed, height, width = spec
    frames, sils = person_frames(n, height, width, seed=seed)
    rng = np.random.default_rng(seed)
    return SequenceRecord(subject, seq_type, "000", frames, rng.uniform(0.3, 0.6, n).astype(np.float32), sils)


def build(
    root: Path, *, subjects: int, per_subject: int, frames: int, height: int, width: int, image_format: str
) -> None:
    specs = [
        (f"{s:03d}", f"nm-{k:02d}", frames, s * 100 + k, height, width)
        for s in range(subjects)
        for k in range(per_subject)
    ]
    t0 = time.perf_counter()
    kw = dict(
        dataset="bench",
        shard_size=16,
        workers=2,
        frame_size=(height, width),
        progress=False,
        image_format=image_format,
    )
    manifest = write_shards(specs, load, root, split="train", shuffle_seed=0, **kw)
    write_shards(specs[: 2 * per_subject], load, root, split="test", shuffle_seed=None, **kw)
    size = sum(p.stat().st_size for p in (root / "train").glob("*.tar")) / 2**20
    print(
        f"wrote {manifest['n_sequences']} sequences / {manifest['n_frames']} frames ({size:.0f} MiB) "
        f"in {time.perf_counter() - t0:.1f} s with 2 writer processes"
    )


def measure(loader, batches: int) -> tuple[float, int, int, float]:
    t0 = time.perf_counter()
    it = iter(loader)
    first = next(it)  # includes worker start-up
    startup = time.perf_counter() - t0
    seqs = frames = 0
    t0 = time.perf_counter()
    for _, batch in zip(range(batches), it):
        lengths = batch.get("lengths")
        seqs += batch["frames"].shape[0]
        frames += (
            int(lengths.sum()) if lengths is not None else batch["frames"].shape[0] * batch["frames"].shape[1]
        )
    del first
    return time.perf_counter() - t0, seqs, frames, startup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="an existing dataset root (with train/ and test/)")
    parser.add_argument("--batches", type=int, default=8, help="timed training batches per setting")
    parser.add_argument("-P", type=int, default=8)
    parser.add_argument("-K", type=int, default=8)
    parser.add_argument("--frames", type=int, default=30, help="frames per training sequence")
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--per-subject", type=int, default=6)
    parser.add_argument("--seq-len", type=int, default=60)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument(
        "--image-format", default="png", choices=["png", "jpg"], help="frames of the generated set"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp)
            build(
                root,
                subjects=args.subjects,
                per_subject=args.per_subject,
                frames=args.seq_len,
                height=args.height,
                width=args.width,
                image_format=args.image_format,
            )
        print(f"{'stream':<7}{'workers':>8}{'seq/s':>9}{'frames/s':>10}{'start-up s':>12}")
        for workers in args.workers:
            dm = GaitDataModule(
                root=str(root),
                protocol="ccpg",
                ids_per_batch=args.P,
                seqs_per_id=args.K,
                frames_per_sequence=args.frames,
                steps_per_epoch=args.batches + 1,
                num_workers=workers,
                shuffle_buffer=2 * args.P * args.K,
                pin_memory=False,
            )
            dm.setup("fit")
            for name, loader, n in (
                ("train", dm.train_dataloader(), args.batches),
                ("eval", dm.test_dataloader(), 10**9),
            ):
                seconds, seqs, frames, startup = measure(loader, n)
                print(f"{name:<7}{workers:>8}{seqs / seconds:>9.1f}{frames / seconds:>10.0f}{startup:>12.1f}")


if __name__ == "__main__":
    main()
