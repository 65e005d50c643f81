"""Random / label-free / supervised stand-in backbone, side by side on the synthetic recipe: `make compare-lvm`.

    python scripts/compare_lvms.py [--label-free FILE] [--seeds 0 1 2] [--steps 600] [--out DIR] [-- OVERRIDES]

Per backbone and seed, one `make train` run (biggait.study): rank-1 per condition and the mask branch's
foreground IoU against the ground-truth silhouettes; per backbone, the first-principal-component foreground
IoU of its last-layer features alone on test-split frames (biggait.label_free_lvm.pca_foreground_iou: the
DINOv2 property BigGait relies on). Prints the table and whether the label-free backbone meets issue 24's bar
for becoming the default (mean CL >= 4x chance = 25 %, mask-branch foreground IoU >= 50 %).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

from biggait import study
from biggait.data_prep.synthetic import SyntheticConfig
from biggait.label_free_lvm import LABEL_FREE_LVM_FILE, pca_foreground_iou
from biggait.models.backbone import DinoV2Backbone
from biggait.study import Condition
from biggait.synthetic_lvm import render_foreground_set

BAR_CL, BAR_IOU = 25.0, 50.0  # issue 24: 4x chance (16 test identities) and half the walker found


def conditions(label_free: Path) -> list[Condition]:
    return [
        Condition("random", ("model.net.pretrained=random",), "CL near chance (data_prep/README.md)"),
        Condition("label_free", (f"model.net.pretrained={label_free.resolve()}",), "the paper's setting"),
        Condition("supervised", ("model.net.pretrained=synthetic",), "reference (saw silhouettes)"),
    ]


@torch.no_grad()
def backbone_pca_iou(source: str, seed: int, frames: torch.utils.data.TensorDataset) -> float:
    """PCA-1 foreground IoU (%) of one backbone's last-layer features on the test frames."""
    images, fractions = frames.tensors
    torch.manual_seed(seed)  # the random backbone's init (not bit-equal to the training run's)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = DinoV2Backbone(
            preset="tiny", image_size=tuple(images.shape[-2:]), pretrained=source
        ).eval()
    features = torch.cat([backbone(images[i : i + 64])[0] for i in range(0, len(images), 64)])
    return 100.0 * pca_foreground_iou(features, fractions)


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label-free", type=Path, default=LABEL_FREE_LVM_FILE, help="label-free backbone file")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600, help="training steps per run (the recipe: 600)")
    p.add_argument("--test-sequences", type=int, default=64, help="test sequences for the backbone PCA IoU")
    p.add_argument("--out", type=Path, default=None, help="study folder (default outputs/compare_lvm/<time>)")
    args, extra = p.parse_known_args(argv)
    if not args.label_free.is_file():
        p.error(f"no label-free backbone at {args.label_free}: build it with make lvm LVM=label_free")
    args.out = args.out or Path("outputs/compare_lvm") / time.strftime("%Y-%m-%d_%H-%M-%S")
    return args, [a for a in extra if a != "--"]


def main(argv: list[str] | None = None) -> int:
    args, extra = _parse(argv)
    arms = conditions(args.label_free)
    started = time.perf_counter()
    frames = render_foreground_set(
        SyntheticConfig(), split="test", num_sequences=args.test_sequences, frames_per_sequence=4,
        image_size=(224, 112), grid=(16, 8),
    )  # fmt: skip
    sources = {"random": "random", "label_free": str(args.label_free), "supervised": "synthetic"}
    results = study.run_study(arms, seeds=args.seeds, steps=args.steps, out=args.out, extra=extra)
    for r in results:
        r.metrics["backbone_pca1_iou"] = backbone_pca_iou(sources[r.condition], r.seed, frames)
    summary = study.summarise(results)
    table = study.summary_markdown(
        summary, arms, reference="supervised", extra_columns=[("backbone_pca1_iou", "backbone PCA-1 fg IoU")]
    )
    cl, iou = summary["label_free"]["CL"][0], summary["label_free"]["foreground_iou"][0]
    meets = cl >= BAR_CL and iou >= BAR_IOU
    verdict = f"label-free: mean CL {cl:.1f} (bar {BAR_CL}), mask fg IoU {iou:.1f} (bar {BAR_IOU}): " + (
        "meets the bar for the default" if meets else "does not meet the bar: the supervised one stays"
    )
    info = {
        "study": "stand-in LVM comparison (scripts/compare_lvms.py)",
        "label_free": str(args.label_free),
        "seeds": args.seeds,
        "steps": args.steps,
        "overrides": study.recipe_overrides(args.steps) + extra,
        "cpu": study.cpu_name(),
        "wall_seconds": round(time.perf_counter() - started),
        "verdict": verdict,
    }
    study.write_study(args.out, results, table + "\n\n" + verdict, info)
    print(
        f"\nStand-in LVMs, {args.steps} steps, seeds {args.seeds}, {info['cpu']} ({args.out}):\n{table}\n{verdict}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
