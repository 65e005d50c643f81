"""Inference frames/s: eager (gather/scatter GRE, dense GRE) vs torch.export vs ONNX Runtime, in one run.

    python bench/bench_export.py                                  # tiny synthetic-sized model
    python bench/bench_export.py --preset vits14 --frame-size 256 128 --frames 16

Prints the CPU (model name, AMX / AVX-512 BF16 flags), then one line per variant: eager with the GRE in its
gather/scatter form, dense (affine steps before the upsampling, the default), dense unfused (every step at
map resolution), the GRE + head alone with the backbone output cached (less noise from the backbone), the
GaitBase head in channels_last, the torch.export program and the ONNX Runtime session (fp32, CPU). See
docs/export.md.
"""

from __future__ import annotations

import argparse
import copy
import re
import tempfile
import time
import warnings
from pathlib import Path

import torch

from biggait.export import example_inputs, export_onnx, export_torch, relative_error
from biggait.models import BigGait


def cpu_name() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    flags = sorted(set(re.findall(r"\b(amx_bf16|avx512_bf16|avx512f|avx2)\b", text)))
    return f"{name.group(1) if name else 'unknown CPU'}; ISA flags: {', '.join(flags) or 'none of amx/avx512/avx2'}"


def best_seconds(fns: dict[str, object], repeats: int) -> dict[str, tuple[float, torch.Tensor]]:
    """Best wall time of each callable over `repeats` rounds (after one warm-up call each) and its last output.

    The variants run interleaved, round by round, so a change of load on a shared machine hits them alike.
    """
    outs = {name: fn() for name, fn in fns.items()}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: (best[name], outs[name]) for name in fns}


def build(args: argparse.Namespace) -> BigGait:
    kw: dict = dict(backbone=args.preset, num_classes=100)
    if args.preset == "tiny":
        kw.update(
            image_size=(224, 112),
            map_size=(32, 16),
            channels=(16, 32, 64, 128),
            fusion_squeeze=4,
            embed_dim=64,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return BigGait(**kw).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="tiny (synthetic sizes) or vits14 (paper sizes)")
    p.add_argument("--frame-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--sequences", type=int, default=1)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per variant; the best is reported")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    frame_size = tuple(args.frame_size or ((128, 64) if args.preset == "tiny" else (256, 128)))
    model = build(args)
    x, r = example_inputs(frame_size, sequences=args.sequences, frames=args.frames, seed=3)
    n_frames = args.sequences * args.frames
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"model {args.preset}, input {args.sequences} x {args.frames} frames of {frame_size[0]}x{frame_size[1]}, fp32"
    )

    results: dict[str, tuple[float, torch.Tensor | None]] = {}

    def measure(fns: dict) -> None:
        for name, (seconds, out) in best_seconds(fns, args.repeats).items():
            results[name] = (n_frames / seconds, out)

    def eager(static: bool, fuse: bool = True):
        def run() -> torch.Tensor:
            model.static_shapes, model.fuse_gre_upsampling = static, fuse
            with torch.no_grad():
                return model(x, r)["embeddings"]

        return run

    measure(
        {
            "eager, GRE gather/scatter": eager(False),
            "eager, GRE dense (default)": eager(True),
            "eager, GRE dense unfused": eager(True, fuse=False),
        }
    )
    reference = results["eager, GRE dense (default)"][1]

    # GRE + head only: the backbone's token maps cached
    with torch.no_grad():
        cached = model.backbone(torch.randn(n_frames, 3, *model.image_size))
    backbone_forward = model.backbone.forward
    model.backbone.forward = lambda images: cached

    head_cl = copy.deepcopy(model)  # the same weights, the GaitBase head in channels_last
    head_cl.head.to(memory_format=torch.channels_last)

    def channels_last_head() -> torch.Tensor:
        with torch.no_grad():
            return head_cl(x, r)["embeddings"]

    measure(
        {
            "GRE+head only, gather/scatter": eager(False),
            "GRE+head only, dense": eager(True),
            "GRE+head only, dense unfused": eager(True, fuse=False),
            "GRE+head only, dense, head channels_last": channels_last_head,
        }
    )
    model.backbone.forward = backbone_forward
    model.static_shapes, model.fuse_gre_upsampling = True, True
    for name in [k for k in results if k.startswith("GRE+head")]:
        results[name] = (results[name][0], None)  # not comparable: random backbone input

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        pt2 = export_torch(model, Path(tmp) / "m.pt2", frame_size=frame_size)
        t_pt2 = time.perf_counter() - t0
        t0 = time.perf_counter()
        onnx_path = export_onnx(model, Path(tmp) / "m.onnx", frame_size=frame_size)
        t_onnx = time.perf_counter() - t0
        program = torch.export.load(str(pt2)).module()

        def run_program() -> torch.Tensor:
            with torch.no_grad():
                return program(x, r)

        fns = {"torch.export program": run_program, "eager, GRE dense (again, same rounds)": eager(True)}
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if args.threads:
            options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        feed = {"frames": x.numpy(), "ratios": r.numpy()}
        fns[f"ONNX Runtime {onnxruntime.__version__}"] = lambda: torch.from_numpy(
            session.run(["embeddings"], feed)[0]
        )
        measure(fns)
    print(f"export time: torch.export {t_pt2:.1f} s, ONNX {t_onnx:.1f} s")
    for name, (fps, out) in results.items():
        extra = (
            f"   rel. error vs eager dense {relative_error(out, reference):.1e}" if out is not None else ""
        )
        print(f"{name:42s} {fps:8.2f} frames/s{extra}")


if __name__ == "__main__":
    main()
