"""Model throughput: training steps (forward + backward + SGD) and inference, frames/s and peak memory.

    python bench/bench_model.py --preset vits14 --sequences 8 --frames 30 --precision 16-mixed bf16-mixed 32
Prints one line per precision. On a CPU use --preset tiny and small sizes.
"""

from __future__ import annotations

import argparse
import time

import torch

from biggait.losses import cross_entropy_loss, triplet_loss
from biggait.models import BigGait

_DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16, "32": None}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(args: argparse.Namespace, precision: str, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    kw = dict(backbone=args.preset, num_classes=100, image_size=tuple(args.image_size), map_size=tuple(args.map_size))
    if args.preset == "tiny":
        kw.update(channels=(16, 32, 64, 128), fusion_squeeze=4, embed_dim=64)
    model = BigGait(**kw).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    dtype = _DTYPES[precision]
    n, s = args.sequences, args.frames
    frames = torch.randn(n, s, 3, args.frame_size[0], args.frame_size[1], device=device)
    ratios = torch.full((n, s), 0.5, device=device)
    labels = torch.arange(n, device=device) % max(1, n // 4)

    def step() -> float:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            f = model.forward_features(frames, ratios)
            aux = model.gre_losses(f)
            out = model.forward_head(f)
            loss = triplet_loss(out["embeddings"], labels, 0.2) + cross_entropy_loss(out["logits"], labels)
            loss = loss + sum(aux.values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return float(loss)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    _sync(device)
    train_s = (time.perf_counter() - t0) / args.steps
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        model(frames, ratios)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            model(frames, ratios)
        _sync(device)
    infer_s = (time.perf_counter() - t0) / args.steps
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"train_frames_s": n * s / train_s, "train_step_s": train_s, "infer_frames_s": n * s / infer_s,
            "peak_gib": mem, "loss": loss}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--sequences", type=int, default=8)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--frame-size", type=int, nargs=2, default=(256, 128))
    p.add_argument("--image-size", type=int, nargs=2, default=(448, 224))
    p.add_argument("--map-size", type=int, nargs=2, default=(64, 32))
    p.add_argument("--precision", nargs="+", default=["32"], choices=sorted(_DTYPES))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device={name} preset={args.preset} batch={args.sequences}x{args.frames} input={args.image_size}")
    for precision in args.precision:
        r = bench(args, precision, device)
        print(f"precision={precision:10s} train {r['train_frames_s']:8.1f} frames/s ({r['train_step_s']:.3f} s/step)"
              f"  inference {r['infer_frames_s']:8.1f} frames/s  peak {r['peak_gib']:.1f} GiB  loss {r['loss']:.3f}")


if __name__ == "__main__":
    main()
