"""Data-pipeline throughput (frames/s, sequences/s) for 1 and 2 DataLoader workers, side by side: the reader
before the webdataset pipeline (`--before`, a git revision of src/biggait/data/pipeline.py, loaded into a temp
module), the current reader on the local directory, and the current reader over HTTP (a loopback
`http.server` on 127.0.0.1 serving the same directory, read through webdataset's curl).

Without --root it first writes a CCPG-shaped synthetic set (256x128 PNG frames) into a temp directory.
Run: ``make bench-data`` or ``python bench/bench_data.py [--root data/ccpg] [--batches 8] [-P 8 -K 8]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image_formats import person_frames  # noqa: E402
from biggait.data import GaitDataModule, SequenceRecord, write_shards  # noqa: E402
from biggait.data.roots import serve_directory  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The last commit whose reader was the hand-written tarfile + seek one (lazy: reads only the kept frames).
BEFORE = "d8ed355"


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


def load_before(revision: str, tmp: str) -> ModuleType | None:
    """src/biggait/data/pipeline.py at `revision` as a module, or None (printed) when git cannot give it."""
    try:
        text = subprocess.run(
            ["git", "show", f"{revision}:src/biggait/data/pipeline.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"(no 'before' column: git show {revision} failed: {exc})")
        return None
    path = Path(tmp, "pipeline_before.py")
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("pipeline_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def before_streams(old: ModuleType, dm: GaitDataModule) -> list:
    """The old reader's training and evaluation streams with exactly the DataModule's settings (every
    constructor argument of the old class that the new stream holds as an attribute of the same name)."""
    streams = []
    for cls, new in ((old.TrainStream, dm.train_dataset()), (old.EvalStream, dm.eval_dataset())):
        names = [n for n in inspect.signature(cls).parameters if n != "shards" and hasattr(new, n)]
        shards = [old.ShardInfo(s.path, s.n_samples) for s in new.shards]
        streams.append(cls(shards, **{n: getattr(new, n) for n in names}))
    return streams


def loaders(
    reader: str, root: str, workers: int, args, old: ModuleType | None
) -> list[tuple[str, DataLoader]]:
    dm = GaitDataModule(
        root=root,
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
    if reader != "before":
        return [("train", dm.train_dataloader()), ("eval", dm.test_dataloader())]
    return [
        (name, DataLoader(stream, batch_size=None, num_workers=workers))
        for name, stream in zip(("train", "eval"), before_streams(old, dm))
    ]


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
    parser.add_argument(
        "--repeats", type=int, default=2, help="measure each setting this often (round robin), keep the best"
    )
    parser.add_argument(
        "--before", default=BEFORE, help="git revision of the reader to compare with ('' to leave it out)"
    )
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
        old = load_before(args.before, tmp) if args.before else None
        with serve_directory(root) as url:
            readers = [("before", str(root))] * (old is not None) + [("local", str(root)), ("http", url)]
            run(readers, args, old)


def run(readers: list[tuple[str, str]], args, old: ModuleType | None) -> None:
    """One row per (stream, workers): seq/s and frames/s of every reader. The readers take turns, `--repeats`
    rounds, and each keeps its best round: on a shared machine that is the least disturbed one."""
    cells = "".join(f"{name + ' seq/s':>14}{name + ' fr/s':>13}" for name, _ in readers)
    print(f"{'stream':<7}{'workers':>8}{cells}{'start-up s':>16}")
    for workers in args.workers:
        best: dict[tuple[str, str], tuple[float, float, float]] = {}
        for _ in range(args.repeats):
            for name, root in readers:
                for stream, loader in loaders(name, root, workers, args, old):
                    seconds, seqs, frames, startup = measure(
                        loader, args.batches if stream == "train" else 10**9
                    )
                    rate = (seqs / seconds, frames / seconds, startup)
                    best[name, stream] = max(best.get((name, stream), rate), rate)
        for stream in ("train", "eval"):
            row = "".join(f"{best[n, stream][0]:>14.1f}{best[n, stream][1]:>13.0f}" for n, _ in readers)
            startup = "/".join(f"{best[n, stream][2]:.1f}" for n, _ in readers)
            print(f"{stream:<7}{workers:>8}{row}{startup:>16}", flush=True)


if __name__ == "__main__":
    main()
