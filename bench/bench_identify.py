"""Identify against a large gallery file in bounded memory: peak RSS and time for a 1,000,000-entry gallery.

    python bench/bench_identify.py --size 1000000 --embed-dim 16 --parts 16 --probes 10

Writes a random gallery of `--size` entries straight to an .npz (streamed, never whole in memory; the format of
biggait.gallery), then runs `biggait.identify.identify` on the file in a fresh process and prints its peak RSS
next to the RSS after imports and the size of the embeddings. The paper model's embeddings are 256 x 16 floats
(16 KiB each, 16 GB for a million): pass --embed-dim 256 where the disk has room.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np


def _peak_rss_mib() -> float:
    """VmHWM of this process (ru_maxrss would carry the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_gallery(path: Path, *, size: int, embed_dim: int, parts: int) -> None:
    """A random gallery in biggait.gallery's .npz layout, written member by member in row chunks."""
    rng = np.random.default_rng(0)
    chunk = max(1, (16 << 20) // (embed_dim * parts * 4))
    labels = np.char.add(
        np.char.add(np.arange(size).astype("U7"), "/walk/"), (np.arange(size) % 8).astype("U1")
    )
    identities = np.arange(size).astype("U7")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in (
            ("format", np.str_("biggait-gallery/1")),
            ("model", np.str_("bench")),
            ("labels", labels),
            ("identities", identities),
            ("sources", np.full(size, "bench", dtype="U5")),
        ):
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)
        with zf.open("embeddings.npy", "w", force_zip64=True) as f:
            header = {"descr": "<f4", "fortran_order": False, "shape": (size, embed_dim, parts)}
            np.lib.format.write_array_header_2_0(f, header)
            for start in range(0, size, chunk):
                n = min(chunk, size - start)
                f.write(rng.standard_normal((n, embed_dim, parts), dtype=np.float32).tobytes())


def _child(gallery: str, probes: int, top_k: int) -> None:
    import torch

    from biggait.gallery import Gallery
    from biggait.identify import identify

    base = _peak_rss_mib()
    with zipfile.ZipFile(gallery) as zf, zf.open("embeddings.npy") as f:
        version = np.lib.format.read_magic(f)
        shape = np.lib.format.read_array_header_2_0(f)[0] if version == (2, 0) else None
    rng = np.random.default_rng(1)
    q = Gallery(
        rng.standard_normal((probes, *shape[1:]), dtype=np.float32),
        [f"probe{i}" for i in range(probes)],
        [f"p{i}" for i in range(probes)],
        ["bench"] * probes,
        "bench",
    )
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    results = identify(gallery, q, top_k=top_k)
    seconds = time.perf_counter() - t0
    peak = _peak_rss_mib()
    emb_mb = shape[0] * shape[1] * shape[2] * 4 / 2**20
    print(
        f"gallery {shape[0]:,} x {shape[1]}x{shape[2]} ({emb_mb:,.0f} MiB of embeddings), {probes} probes, "
        f"top-{top_k}: {seconds:.1f} s, {shape[0] * probes / seconds / 1e6:.2f} M comparisons/s; "
        f"peak RSS {peak:,.0f} MiB (after imports {base:,.0f} MiB, +{peak - base:,.0f} MiB)"
    )
    assert len(results) == probes and len(results[0]["matches"]) == top_k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--embed-dim", type=int, default=16)
    parser.add_argument("--parts", type=int, default=16)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--gallery", type=Path, default=None, help="reuse / keep this gallery file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.probes, args.top_k)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = args.gallery or Path(tmp) / "gallery.npz"
        if not path.is_file():
            t0 = time.perf_counter()
            write_gallery(path, size=args.size, embed_dim=args.embed_dim, parts=args.parts)
            print(
                f"wrote {path} ({path.stat().st_size / 2**20:,.0f} MiB) in {time.perf_counter() - t0:.1f} s"
            )
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(path),
            "--probes",
            str(args.probes),
            "--top-k",
            str(args.top_k),
        ]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
