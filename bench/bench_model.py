"""Model throughput, side by side with the official OpenGait code: frames/s per precision, inference and training.

    python bench/bench_model.py                                  # ViT-S 448x224, 4 x 4 frames, fp32 and bf16
    OPENGAIT_SRC=/path/to/OpenGait python bench/bench_model.py   # + the official model on the same weights
    python bench/bench_model.py --preset tiny --compile          # + torch.compile (compile time printed apart)

One run measures, interleaved (every repeat times each configuration once; medians are printed, so a busy
shared machine slows all configurations alike): the fp32 and bf16 matmul peak of this machine, this project's
model per precision (inference: eval forward without gradients; training step: forward + GRE losses +
Black DA + triplet + CE + backward + SGD, the frozen backbone without gradients) and, when `OPENGAIT_SRC`
points at a checkout of github.com/ShiqiYu/OpenGait, the official `BigGait__Dinov2_Gaitbase` on the same
weights and inputs: random weights (seeded) or `--checkpoint` (an official-format `{'model': state_dict}`
file), exported to the official names and imported both ways (ours through `biggait.compat.opengait`).
Precisions: fp32, bf16 (autocast), fp16 (autocast + GradScaler, GPU). The official code autocasts fp16 on GPU
(`enable_float16`, `opengait/modeling/base_model.py`); here both models get the same autocast.
docs/performance.md explains the columns and has a measured table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from biggait.compat.opengait import export_opengait_state_dict, load_opengait_checkpoint
from biggait.losses import cross_entropy_loss, triplet_loss
from biggait.models import BigGait
from biggait.precision import CPU_BF16_FLAGS, cpu_flags, describe_precision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from opengait_official import load_official_biggait  # noqa: E402

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_LIGHTNING = {"32": "fp32", "32-true": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16"}
# ATen's vectorised kernels, oneDNN and MKL each read their own ISA cap
_ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
_TINY = dict(channels=(16, 32, 64, 128), fusion_squeeze=4, embed_dim=64)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _autocast(device: torch.device, precision: str):
    dtype = _DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability()
        return f"{torch.cuda.get_device_name()} (compute capability {major}.{minor})"
    model = "unknown CPU"
    with contextlib.suppress(OSError, StopIteration):
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    flags = cpu_flags() or frozenset()
    isa = [f for f in ("avx2", "avx512f", *CPU_BF16_FLAGS, "amx_tile") if f in flags]
    # an AVX2-only CPU measured on a newer one: the kernels' ISA capped by these variables
    limits = [f"{k}={os.environ[k]}" for k in _ISA_LIMITS if os.environ.get(k)]
    capped = f" (capped: {' '.join(limits)})" if limits else ""
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, ISA: {' '.join(isa) or '?'}{capped}"


def matmul_gflops(device: torch.device, dtype: torch.dtype, *, size: int, repeats: int) -> float:
    """Best-of-`repeats` GFLOP/s of a square matmul (the peak the model's numbers are compared with)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


class Runner:
    """One model at one precision: an inference call and a training-step call, timed one at a time."""

    def __init__(
        self,
        name: str,
        precision: str,
        infer: Callable[[], torch.Tensor],
        train_loss: Callable[[], torch.Tensor],
        params: list[torch.nn.Parameter],
        set_mode: Callable[[bool], None],
        device: torch.device,
    ) -> None:
        self.name, self.precision, self.device = name, precision, device
        self._infer, self._train_loss, self._set_mode = infer, train_loss, set_mode
        self.opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=5e-4)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.times: dict[str, list[float]] = {"infer": [], "train": []}
        self.failed: dict[str, str] = {}

    def infer(self) -> torch.Tensor:
        self._set_mode(False)
        with torch.no_grad(), _autocast(self.device, self.precision):
            return self._infer().float()

    def train_step(self) -> None:
        self._set_mode(True)
        with _autocast(self.device, self.precision):
            loss = self._train_loss()
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()

    def call(self, kind: str) -> None:
        if kind in self.failed:
            return
        try:
            self.infer() if kind == "infer" else self.train_step()
        except (RuntimeError, TypeError) as err:  # the official training forward under fp32 (n > 2) or bf16
            self.failed[kind] = str(err).splitlines()[0][:120]
            print(f"{self.name} {self.precision} {kind}: FAILED: {self.failed[kind]}")

    def timed(self, kind: str) -> None:
        _sync(self.device)
        t0 = time.perf_counter()
        self.call(kind)
        _sync(self.device)
        if kind not in self.failed:
            self.times[kind].append(time.perf_counter() - t0)


def ours_runner(model: BigGait, precision: str, frames, ratios, labels, device, name="ours") -> Runner:
    generator = torch.Generator().manual_seed(0)

    def train_loss() -> torch.Tensor:  # what BigGaitModule.training_step computes
        f = model.forward_features(frames, ratios)
        aux = model.gre_losses(f)
        f = model.black_da(f, rate=0.2, generator=generator)
        out = model.forward_head(f)
        loss = triplet_loss(out["embeddings"], labels, 0.2) + cross_entropy_loss(
            out["logits"], labels, 16.0, 0.1
        )
        return loss + sum(aux.values())

    params = [p for p in model.parameters() if p.requires_grad]
    return Runner(
        name, precision, lambda: model(frames, ratios)["embeddings"], train_loss, params, model.train, device
    )


def official_runner(official, precision: str, frames, ratios, labels, device) -> Runner:
    params = [p for p in official.model.parameters() if p.requires_grad]
    return Runner(
        "official",
        precision,
        lambda: official.embeddings(frames, ratios),
        lambda: official.training_loss(frames, ratios, labels),
        params,
        official.model.train,
        device,
    )


def count_gflop(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def build_model(args: argparse.Namespace, device: torch.device) -> tuple[BigGait, dict[str, torch.Tensor]]:
    """Our model imported from an official-format state dict (random weights unless --checkpoint)."""
    if args.checkpoint:
        path = Path(args.checkpoint)
        overrides = dict(image_size=tuple(args.image_size), map_size=tuple(args.map_size))
    else:
        torch.manual_seed(0)
        kw = dict(
            backbone=args.preset,
            num_classes=100,
            image_size=tuple(args.image_size),
            map_size=tuple(args.map_size),
            **(_TINY if args.preset == "tiny" else {}),
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="BigGait backbone has NO pretrained weights")
            source = BigGait(**kw)
        buf = io.BytesIO()
        torch.save({"model": export_opengait_state_dict(source)}, buf)
        path = Path(tempfile.mkdtemp(prefix="bench_model_")) / "official_format.pt"
        path.write_bytes(buf.getvalue())
        overrides = dict(image_size=source.image_size, map_size=source.map_size)
        if args.preset == "tiny":  # heads are not visible in the tensor shapes
            overrides.update(backbone_heads=source.backbone.num_heads)
    ours = load_opengait_checkpoint(path, **overrides).to(device)
    official_state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    return ours, official_state


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="vits14", choices=["tiny", "vits14", "vitb14", "vitl14", "vitg14"])
    p.add_argument(
        "--checkpoint", help="official-format checkpoint ({'model': state_dict}) instead of random weights"
    )
    p.add_argument(
        "--sequences",
        type=int,
        default=2,
        help="sequences per batch, identities in pairs (above 2 the official fp32 training step fails)",
    )
    p.add_argument("--frames", type=int, default=8, help="frames per sequence")
    p.add_argument("--frame-size", type=int, nargs=2, default=(256, 128))
    p.add_argument("--image-size", type=int, nargs=2, default=None, help="default: 448 224 (tiny: 224 112)")
    p.add_argument("--map-size", type=int, nargs=2, default=None, help="default: 64 32 (tiny: 32 16)")
    p.add_argument(
        "--precision",
        nargs="+",
        default=None,
        choices=sorted(_DTYPES) + sorted(_LIGHTNING),
        help="default: fp32 bf16 on a CPU, fp32 fp16 bf16 on a GPU (Lightning names work too)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed calls per configuration (medians)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-train", action="store_true", help="inference only")
    p.add_argument("--compile", action="store_true", help="also ours with torch.compile (backbone + head)")
    p.add_argument("--channels-last", action="store_true", help="also ours with channels_last GaitBase convs")
    p.add_argument("--matmul-size", type=int, default=2048)
    args = p.parse_args()
    if args.image_size is None:
        args.image_size = (224, 112) if args.preset == "tiny" else (448, 224)
    if args.map_size is None:
        args.map_size = (32, 16) if args.preset == "tiny" else (64, 32)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = (
        [_LIGHTNING.get(x, x) for x in args.precision]
        if args.precision
        else (["fp32", "fp16", "bf16"] if device.type == "cuda" else ["fp32", "bf16"])
    )
    print(f"machine: {machine_name(device)}; torch {torch.__version__}")
    print(f"precision=auto here: {describe_precision('auto', accelerator=device.type)}")
    peaks = {
        prec: matmul_gflops(device, _DTYPES[prec] or torch.float32, size=args.matmul_size, repeats=5)
        for prec in precisions
    }
    print(
        f"matmul peak (GFLOP/s, {args.matmul_size}^3): "
        + ", ".join(f"{k} {v:,.0f}" for k, v in peaks.items())
    )

    ours, official_state = build_model(args, device)
    n, s = args.sequences, args.frames
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(n, s, 3, *args.frame_size, generator=g).to(device)
    ratios = (0.35 + 0.25 * torch.rand(n, s, generator=g)).to(device)
    labels = (torch.arange(n) % max(2, n // 2)).to(device)  # positives and negatives when n >= 4
    print(
        f"model: {args.preset}, input {args.image_size[0]}x{args.image_size[1]}, maps "
        f"{args.map_size[0]}x{args.map_size[1]}, batch {n} sequences x {s} frames = {n * s} frames"
    )

    probe = ours_runner(copy.deepcopy(ours), "fp32", frames, ratios, labels, device)
    gflop_infer = count_gflop(probe.infer) / (n * s)
    gflop_train = count_gflop(probe.train_step) / (n * s)
    del probe
    print(f"cost: inference {gflop_infer:.2f} GFLOP/frame, training step {gflop_train:.2f} GFLOP/frame")

    runners: list[Runner] = []
    models = {"ours": ours}
    if args.channels_last:
        models["ours channels_last"] = load_opengait_checkpoint_like(ours, channels_last=True)
    official = None
    src = os.environ.get("OPENGAIT_SRC")
    if src:
        official = load_official_biggait(src, dict(ours.config), official_state)
        official.model.to(device)
    compile_s: dict[str, float] = {}
    # what precision=auto evaluates with: the backbone in the low precision, the GRE and GaitBase in fp32
    eval_fp32 = load_opengait_checkpoint_like(ours, eval_precision="fp32")
    for prec in precisions:
        for name, model in models.items():
            runners.append(ours_runner(model, prec, frames, ratios, labels, device, name=name))
        if prec != "fp32":
            name = "ours, GRE + GaitBase fp32 in eval (auto)"
            runners.append(ours_runner(eval_fp32, prec, frames, ratios, labels, device, name=name))
        if args.compile:
            compiled = copy.deepcopy(ours)
            compiled.backbone.compile()
            compiled.head.compile()
            r = ours_runner(compiled, prec, frames, ratios, labels, device, name="ours compiled")
            t0 = time.perf_counter()
            r.infer()
            if not args.no_train:
                r.train_step()
            compile_s[prec] = time.perf_counter() - t0
            runners.append(r)
        if official is not None:
            runners.append(official_runner(official, prec, frames, ratios, labels, device))

    # same weights, same input: embeddings before any training step
    ref = runners[0].infer()
    for r in runners[1:]:
        e = r.infer()
        rel = float((e - ref).norm() / ref.norm())
        print(
            f"embeddings {r.name} {r.precision} vs {runners[0].name} {runners[0].precision}: "
            f"relative difference {rel:.2e}"
        )
    for prec, sec in compile_s.items():
        print(f"torch.compile ({prec}): first inference + training step took {sec:.1f} s (compile time)")

    kinds = ["infer"] if args.no_train else ["infer", "train"]
    for _ in range(args.warmup):
        for r in runners:
            for kind in kinds:
                r.call(kind)
    for _ in range(args.repeats):
        for r in runners:
            for kind in kinds:
                r.timed(kind)

    def fps(r: Runner, kind: str) -> float:
        return n * s / statistics.median(r.times[kind]) if r.times[kind] else float("nan")

    base = {(r.name, r.precision): r for r in runners}
    off32 = base.get(("official", "fp32"))
    print()
    print(
        "| model | precision | inference frames/s | % of matmul peak | training frames/s | % of matmul peak "
        "| vs official, same precision (inf / train) | vs official fp32 (inf / train) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in runners:
        cells = [r.name, r.precision]
        for kind, gflop in (("infer", gflop_infer), ("train", gflop_train)):
            if kind not in kinds:
                cells += ["-", "-"]
                continue
            f = fps(r, kind)
            cells += (
                ["failed", "-"] if f != f else [f"{f:.2f}", f"{100 * f * gflop / peaks[r.precision]:.1f}"]
            )
        for other in (base.get(("official", r.precision)), off32):
            if other is None or r.name == "official" and other is r:
                cells.append("-")
            else:
                cells.append(" / ".join(_ratio(fps(r, k), fps(other, k)) for k in kinds))
        print("| " + " | ".join(cells) + " |")


def _ratio(a: float, b: float) -> str:
    return "-" if a != a or b != b else f"{a / b:.2f}x"  # NaN: a failed configuration


def load_opengait_checkpoint_like(model: BigGait, **overrides) -> BigGait:
    """A copy of `model` with other runtime options (e.g. channels_last), same weights."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="BigGait backbone has NO pretrained weights")
        other = BigGait(**{**model.config, "pretrained": None, **overrides})
    other.load_state_dict(model.state_dict())
    return other.to(next(model.parameters()).device).eval()


if __name__ == "__main__":
    main()
