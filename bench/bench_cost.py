"""Cost of BigGait and BiggerGait at paper size, measured: parameters, GFLOPs per frame and CPU frames/s.

    python bench/bench_cost.py                       # ViT-S/14 at 448x224, random weights, no download
    python bench/bench_cost.py --frames 8 --repeats 5

The three models of the papers' cost tables, built as the CCPG recipes build them (conf/model/biggait.yaml,
biggergait.yaml, biggergait_group.yaml: 100 training identities) with random weights (nothing is read or
downloaded): BigGait (CVPR 2024, Table 6: 30.8M parameters, 12.7 GFLOPs), BiggerGait (NeurIPS 2025,
arXiv 2505.18132: 142.2M / 45.7) and its grouped variant (43.6M / 29.8). GFLOPs per frame are counted by
`torch.utils.flop_counter.FlopCounterMode` on one eval forward pass of one 256x128 CCPG frame (the models resize
it to 448x224); it counts matrix products, convolutions and attention, 2 FLOPs per multiply-add. The papers count
with fvcore, where one multiply-add is one FLOP, so the table prints both (GMACs = FlopCounterMode / 2).
Frames/s: eval forward passes of `--frames` frames, every repeat timing each model once (interleaved, so a busy
machine slows all alike), medians. docs/7_benchmarks.md has a measured table.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from biggait.models import BigGait, BiggerGait
from biggait.precision import cpu_flags

FRAME = (256, 128)  # CCPG's converter canvas; the models resize frames to image_size 448 x 224
NUM_CLASSES = 100  # CCPG's training identities (the BNNeck classifier's width)
# the papers' figures: (parameters in millions, GFLOPs per frame as fvcore counts them)
PAPER = {"BigGait": (30.8, 12.7), "BiggerGait": (142.2, 45.7), "BiggerGait-group": (43.6, 29.8)}
OFFICIAL_KEYS = (
    Path(__file__).resolve().parents[1] / "tests/fixtures/official_biggergait/paper_size_state_dict.tsv"
)
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def paper_models() -> dict[str, Callable[[], torch.nn.Module]]:
    """Builders of the three paper-size models (ViT-S/14, 448x224, CCPG's 100 classes), random weights."""
    common = dict(backbone="vits14", num_classes=NUM_CLASSES, pretrained="random")
    return {
        "BigGait": lambda: BigGait(**common),
        "BiggerGait": lambda: BiggerGait(**common, mask_branch="random"),
        "BiggerGait-group": lambda: BiggerGait(
            **common, mask_branch="random", layers_per_group=2, gait_heads=2
        ),
    }


def parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, the backbone's), each shared tensor counted once (as `nn.Module.parameters` does)."""
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.backbone.parameters())


def official_biggergait_parameters(path: Path = OFFICIAL_KEYS) -> int | None:
    """Parameters of the official paper-size BiggerGait from its checkpoint's key list: BatchNorm statistics left
    out, the shared heads (saved twice, as `Gait_Net.real_gait` and `Gait_Net.Gait_List`) counted once."""
    if not path.is_file():
        return None
    total = 0
    with path.open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            key = row["key"]
            if key.endswith(_BUFFERS) or ".Gait_List." in key:
                continue
            shape = [int(v) for v in row["shape"].strip("[]").split(",") if v.strip()]
            total += int(torch.Size(shape).numel())
    return total


def gflops_per_frame(model: torch.nn.Module, *, attention: bool) -> float:
    """FlopCounterMode's GFLOPs (2 per multiply-add) of one eval forward pass of one frame. FlopCounterMode has no
    formula for the CPU's fused attention kernel, so `attention=False` leaves the attention products out, as
    fvcore does for a fused kernel; `attention=True` runs SDPA's math form, whose matrix products it counts."""
    x = torch.randn(1, 1, 3, *FRAME)
    backend = SDPBackend.MATH if attention else SDPBackend.FLASH_ATTENTION
    with torch.no_grad(), sdpa_kernel(backend), FlopCounterMode(display=False) as counter:
        model(x, torch.full((1, 1), 0.5))
    return counter.get_total_flops() / 1e9


def frames_per_second(models: dict[str, torch.nn.Module], *, frames: int, repeats: int) -> dict[str, float]:
    """Median frames/s of eval forward passes of `frames` frames, the models interleaved in every repeat."""
    x, r = torch.randn(1, frames, 3, *FRAME), torch.full((1, frames), 0.5)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():  # warm-up (oneDNN primitives, allocator)
            model(x[:, :1], r[:, :1])
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(x, r)
                times[name].append(time.perf_counter() - start)
    return {name: frames / statistics.median(t) for name, t in times.items()}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=4, help="frames per timed forward pass (4)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per model (3, median)")
    p.add_argument("--no-speed", action="store_true", help="count parameters and FLOPs only")
    args = p.parse_args()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random backbone" warnings: random weights on purpose
        models = {name: build().eval() for name, build in paper_models().items()}
    flags = cpu_flags() or frozenset()
    print(
        f"{cpu_name()} ({', '.join(f for f in ('avx512_bf16', 'amx_bf16') if f in flags) or 'no bf16 units'}), "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; ViT-S/14 at 448x224, {NUM_CLASSES} classes"
    )
    official = official_biggergait_parameters()
    if official is not None:
        ours = parameters(models["BiggerGait"])[0]
        print(f"official BiggerGait key list ({OFFICIAL_KEYS.name}): {official:,} parameters; ours {ours:,}")
    speed = {} if args.no_speed else frames_per_second(models, frames=args.frames, repeats=args.repeats)
    print(
        "| model | parameters (M): ours / paper | of which backbone | GFLOPs/frame, FlopCounterMode (2 per MAC): "
        "without / with attention | GMACs/frame (fvcore's GFLOPs): without / with attention / paper "
        "| CPU frames/s, fp32 |"
    )
    print("|---|---|---|---|---|---|")
    for name, model in models.items():
        total, backbone = parameters(model)
        fused, math = (gflops_per_frame(model, attention=a) for a in (False, True))
        fps = f"{speed[name]:.2f}" if name in speed else "-"
        paper_params, paper_gflops = PAPER[name]
        print(
            f"| {name} | {total / 1e6:.1f} / {paper_params} | {backbone / 1e6:.1f} | {fused:.1f} / {math:.1f} "
            f"| {fused / 2:.1f} / {math / 2:.1f} / {paper_gflops} | {fps} |"
        )


if __name__ == "__main__":
    main()
