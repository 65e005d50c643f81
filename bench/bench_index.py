"""Galleries past memory: exact streaming search vs the FAISS candidates + exact part-wise re-rank of
biggait.index, on memory-mapped galleries of 10^5, 10^6 and 10^7 rows.

    python bench/bench_index.py --sizes 100000 1000000 10000000 --dir /work/scratch/index_bench

Synthetic embeddings (`--embed-dim` x `--parts`, float16 on disk): 10 templates per identity scattered around
the identity's centre; the queries are new walks of random enrolled identities. Every measurement runs in a
fresh process and prints its peak RSS (VmHWM: it includes the pages of the memory-mapped file that the search
touched, which the kernel may drop at any time) and its anonymous memory (RssAnon: what it really holds).
Recall = the share of the exact top-k rows that the approximate search returns.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_TEMPLATES = 10  # per identity
_CHUNK = 100_000  # rows generated (and identities drawn) per chunk
_SIGMA = 0.8  # template spread around the identity's centre (per number; centres are standard normal)


def _memory() -> dict[str, float]:
    fields = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmHWM", "RssAnon")}


def _chunk(seed: int, c: int, rows: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, c])
    centres = rng.standard_normal((rows // _TEMPLATES, *shape), dtype=np.float32)
    emb = np.repeat(centres, _TEMPLATES, 0) + _SIGMA * rng.standard_normal((rows, *shape), dtype=np.float32)
    codes = (c * _CHUNK // _TEMPLATES + np.arange(rows) // _TEMPLATES).astype(np.int32)
    return emb.astype(np.float16), codes


def make_gallery(folder: Path, size: int, shape: tuple[int, int], seed: int = 0) -> None:
    from biggait.index import write_mapped

    chunks = (
        _chunk(seed, c, min(_CHUNK, size - c * _CHUNK), shape) for c in range((size + _CHUNK - 1) // _CHUNK)
    )
    names = [f"{i:08d}" for i in range(size // _TEMPLATES)]
    write_mapped(folder, chunks, n=size, shape=shape, model="bench", names=names)


def make_queries(size: int, n: int, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """New walks of `n` random enrolled identities (their chunk's centres regenerated, fresh noise)."""
    rng = np.random.default_rng([seed, 12345])
    rows = np.sort(rng.choice(size, n, replace=False))
    out = []
    for r in rows:
        c = int(r) // _CHUNK
        centres = np.random.default_rng([seed, c]).standard_normal(
            (min(_CHUNK, size - c * _CHUNK) // _TEMPLATES, *shape), dtype=np.float32
        )
        out.append(
            centres[(int(r) % _CHUNK) // _TEMPLATES] + _SIGMA * rng.standard_normal(shape, dtype=np.float32)
        )
    return np.stack(out).astype(np.float32)


def child(mode: str, folder: Path, queries: Path, out: Path, args: argparse.Namespace) -> None:
    from biggait.index import MappedGallery, build_index, exact_search, search

    gallery, q = MappedGallery(folder), np.load(queries)
    start = time.perf_counter()
    result: dict = {}
    if mode == "exact":
        _, rows = exact_search(gallery, q, k=args.k)
        np.save(out.with_suffix(".rows.npy"), rows)
    elif mode == "build":
        build_index(gallery, m=args.m)
        result["index_mib"] = (folder / "index.faiss").stat().st_size / 2**20
    else:
        exact = np.load(out.with_name("exact.rows.npy"))
        search(gallery, q[:2], k=args.k, candidates=args.candidates, nprobe=args.nprobe[0])  # loads the index
        for nprobe in args.nprobe:
            start = time.perf_counter()
            _, rows = search(gallery, q, k=args.k, candidates=args.candidates, nprobe=nprobe)
            result[f"seconds{nprobe}"] = time.perf_counter() - start
            result[f"recall{nprobe}"] = float(
                np.mean([len(set(a) & set(e)) / args.k for a, e in zip(rows, exact)])
            )
    result.update(seconds=time.perf_counter() - start, **_memory())
    out.write_text(json.dumps(result))


def _run(mode: str, folder: Path, args: argparse.Namespace) -> dict:
    out = folder / f"{mode}.json"
    cmd = [sys.executable, __file__, "--child", mode, "--folder", str(folder), *sys.argv[1:]]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--dir", type=Path, default=Path("/tmp/biggait_index_bench"))
    p.add_argument("--embed-dim", type=int, default=8)
    p.add_argument("--parts", type=int, default=16)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument(
        "--nprobe", type=int, nargs="+", default=[16, 64], help="IVF cells searched (one column each)"
    )
    p.add_argument("--m", type=int, default=32, help="bytes per row in the index (PQ sub-quantisers)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    shape = (args.embed_dim, args.parts)
    if args.child:
        child(args.child, args.folder, args.folder / "queries.npy", args.folder / f"{args.child}.json", args)
        return
    probes = " | ".join(f"nprobe {n}: ms / query, recall@{args.k}" for n in args.nprobe)
    print(
        f"| rows | on disk | exact: ms / query, RssAnon, VmHWM | build: s, index | {probes} | approx RssAnon, VmHWM |"
    )
    print("|---" * (5 + len(args.nprobe)) + "|")
    for size in args.sizes:
        folder = args.dir / f"g{size}"
        if not folder.exists():
            make_gallery(folder, size, shape)
        np.save(folder / "queries.npy", make_queries(size, args.queries, shape))
        exact, build, approx = (_run(m, folder, args) for m in ("exact", "build", "approx"))
        ms = 1000 / args.queries
        disk = (folder / "embeddings.npy").stat().st_size / 2**30
        cells = " | ".join(
            f"{approx[f'seconds{n}'] * ms:.0f} ms, {approx[f'recall{n}']:.3f}" for n in args.nprobe
        )
        print(f"| {size:,} | {disk:.2f} GiB | {exact['seconds'] * ms:.0f} ms, {exact['RssAnon']:.0f} MiB, "
              f"{exact['VmHWM']:.0f} MiB | {build['seconds']:.0f} s, {build['index_mib']:.0f} MiB | {cells} | "
              f"{approx['RssAnon']:.0f} MiB, {approx['VmHWM']:.0f} MiB |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
