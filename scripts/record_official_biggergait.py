"""Record tensors from the official BiggerGait code, for the parity tests (tests/fixtures/official_biggergait/).

Runs OpenGait's `BiggerGait__DINOv2` (`opengait/modeling/models/BiggerGait_DINOv2.py`) at a scaled-down size with
random weights on the frames of an existing recording, in float32 on the CPU, and writes the same files as the
shared recording (checkpoint.pt, config.json, embeddings.pt, intermediates.pt; the inputs are the shared
recording's inputs.pt, named in config.json). The official code is
imported from a folder given on the command line; nothing of it is copied into this repository.

To redo the recordings (OpenGait commit 0efafd4, transformers 4.57.6, torch 2.14.1):

    git -C <OpenGait bare mirror> archive HEAD opengait | tar -x -C /work/scratch/opengait
    python3 -m venv /work/scratch/ogvenv
    /work/scratch/ogvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 transformers==4.57.6 \\
        einops kornia tensorboard tqdm pyyaml opencv-python-headless scikit-learn imageio matplotlib
    /work/scratch/ogvenv/bin/python scripts/record_official_biggergait.py --opengait /work/scratch/opengait/opengait \\
        --out tests/fixtures/official_biggergait/group2_head1 --group-layer-num 2 --head-num 1 --seed 21
    /work/scratch/ogvenv/bin/python scripts/record_official_biggergait.py --opengait /work/scratch/opengait/opengait \\
        --paper-parameters tests/fixtures/official_biggergait/paper_size_parameters.json

The model is built without OpenGait's `BaseModel.__init__` (which needs data loaders and a GPU): `build_network`,
then a random HF `Dinov2Model` in place of `init_DINOv2`'s `from_pretrained`, then random weights as described in
the written config.json. The mask branch's bias is placed in the widest gap of its logits so that no patch lies
near the 0.5 threshold (a recording that flips on round-off would test nothing).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import types
from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64) * 255
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64) * 255
ITERATION = 30000


def official_class(opengait: Path) -> type:
    """`BiggerGait__DINOv2`, imported without `modeling.models.__init__` (which imports every OpenGait model)."""
    sys.path.insert(0, str(opengait))
    importlib.import_module("modeling")
    package = types.ModuleType("modeling.models")
    package.__path__ = [str(opengait / "modeling" / "models")]
    sys.modules["modeling.models"] = package
    return importlib.import_module("modeling.models.BiggerGait_DINOv2").BiggerGait__DINOv2


def model_cfg(args: argparse.Namespace) -> dict:
    """The official model_cfg of `configs/biggergait/biggergait__DINOv2_CCPG.yaml`, scaled down."""
    channels = args.channels
    return {
        "model": "BiggerGait__DINOv2",
        "pretrained_lvm": "unused",
        "pretrained_mask_branch": "unused",
        "image_size": args.image_size,
        "sils_size": args.sils_size,
        "source_dim": args.width,
        "num_unknown": args.num_unknown,
        "total_layer_num": args.depth,
        "group_layer_num": args.group_layer_num,
        "head_num": args.head_num,
        "Mask_Branch": {"source_dim": args.width, "target_dim": 2, "p": 0.0, "softmax": True},
        "backbone_cfg": {
            "type": "ResNet9",
            "block": "BasicBlock",
            "in_channel": args.num_unknown,
            "channels": channels,
            "layers": [1, 1, 1, 1],
            "strides": [1, 2, 1, 1],
            "maxpool": False,
        },
        "SeparateFCs": {"in_channels": channels[3], "out_channels": args.embed_dim, "parts_num": args.parts},
        "SeparateBNNecks": {
            "class_num": args.classes,
            "in_channels": args.embed_dim,
            "parts_num": args.parts,
        },
        "bin_num": [args.parts],
    }


def dinov2_config(width: int, depth: int, heads: int):
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        layerscale_value=0.5,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        hidden_act="gelu",
        use_swiglu_ffn=False,
        drop_path_rate=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_channels=3,
    )


class _Log:
    def log_info(self, *args, **kwargs) -> None:
        pass


def build(cls: type, cfg: dict, *, heads: int):
    """The official model: build_network, its BaseModel init of the trainable parts, a random HF Dinov2Model."""
    from transformers import Dinov2Model

    model = cls.__new__(cls)
    nn.Module.__init__(model)
    model.msg_mgr = _Log()
    model.build_network(cfg)
    for m in model.modules():  # OpenGait `BiggerGait__DINOv2.init_parameters`, before init_DINOv2
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    model.Backbone = Dinov2Model(dinov2_config(cfg["source_dim"], cfg["total_layer_num"], heads))
    return model


def randomise(model: nn.Module) -> None:
    """Weights far from the init's symmetries, so that every tensor matters (as the shared recording's)."""
    with torch.no_grad():
        for name, p in model.Backbone.named_parameters():
            if name.endswith(("cls_token", "mask_token", "position_embeddings")):
                p.copy_(0.1 * torch.randn_like(p))
            elif "lambda1" in name:
                p.uniform_(0.3, 0.7)
            elif "norm" in name:
                p.copy_(
                    1 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.05 * torch.randn_like(p)
                )
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn_like(p))
            else:
                gain = 1.5 if (".query." in name or ".key." in name) else 1.0
                fan_in = p[0].numel()
                p.copy_(gain * torch.randn_like(p) / math.sqrt(fan_in))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.running_mean.copy_(0.1 * torch.randn_like(m.running_mean))
                m.running_var.copy_(1 + 0.2 * torch.rand_like(m.running_var))
                m.num_batches_tracked.fill_(ITERATION)


def place_mask_bias(model: nn.Module, frames: torch.Tensor) -> float:
    """Set the mask branch's bias so 20-60 % of the patches are foreground with the widest margin from 0.5."""
    captured = {}
    hook = model.Mask_Branch.down_sampling.register_forward_hook(lambda m, i, o: captured.setdefault("z", o))
    with torch.no_grad():
        model.Mask_Branch.down_sampling.bias.zero_()
        model(([frames], None, None, None, None))
    hook.remove()
    diff = (captured["z"][:, 1] - captured["z"][:, 0]).sort().values  # foreground iff diff + b1 - b0 > 0
    lo, hi = int(0.4 * len(diff)), int(0.8 * len(diff))
    gaps = diff[lo + 1 : hi] - diff[lo : hi - 1]
    k = lo + int(gaps.argmax())
    threshold = float((diff[k] + diff[k + 1]) / 2)
    with torch.no_grad():
        model.Mask_Branch.down_sampling.bias.copy_(torch.tensor([threshold / 2, -threshold / 2]))
    return float(gaps.max() / 2)


def frames_of(raw: torch.Tensor) -> torch.Tensor:
    """OpenGait's `BaseRgbTransform`: ImageNet normalisation in float64, then float32."""
    x = raw.permute(0, 1, 4, 2, 3).double()
    return ((x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]).float()


def record(model: nn.Module, frames: torch.Tensor, seq_len) -> tuple[torch.Tensor, dict]:
    """Eval-mode embeddings and the intermediate tensors of one input set."""
    seen: dict[str, list] = {"mask": [], "resized": [], "humanspace": []}
    hook = model.Mask_Branch.register_forward_hook(lambda m, i, o: seen["mask"].append(o[0][:, 1]))
    preprocess, test_1 = model.preprocess, model.Gait_Net.test_1

    def preprocess_spy(x, size, mode="bilinear"):
        out = preprocess(x, size, mode)
        if x.shape[1] == 1:
            seen["resized"].append(out)
        return out

    def test_1_spy(x, *a, **k):
        seen["humanspace"].append(x)
        return test_1(x, *a, **k)

    model.preprocess, model.Gait_Net.test_1 = preprocess_spy, test_1_spy
    try:
        with torch.no_grad():
            out = model(([frames], None, None, None, seq_len))["inference_feat"]["embeddings"]
    finally:
        hook.remove()
        del model.preprocess, model.Gait_Net.test_1
    grid = (model.image_size // 7, model.image_size // 14)
    ns = frames.shape[0] * frames.shape[1]
    return out, {
        "mask_prob": torch.cat(seen["mask"]).view(ns, *grid),
        "human_mask": torch.cat(seen["resized"]),
        "humanspace": torch.cat(seen["humanspace"], dim=2),
    }


def write_recording(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    cls = official_class(args.opengait)
    cfg = model_cfg(args)
    model = build(cls, cfg, heads=args.attention_heads)
    randomise(model)
    inputs = torch.load(args.inputs, weights_only=True)
    model.eval()
    margin = place_mask_bias(model, frames_of(inputs["ccpg_256x128"]["raw"]))
    embeddings, intermediates = {}, {}
    for name, case in inputs.items():
        embeddings[name], tensors = record(model, frames_of(case["raw"]), case["seqL"])
        if name == "long_s100_64x32":
            tensors.pop("humanspace")  # 3 MB; the embeddings cover the long set
        intermediates[name] = tensors
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "iteration": ITERATION}, args.out / "checkpoint.pt")
    torch.save(embeddings, args.out / "embeddings.pt")
    torch.save(intermediates, args.out / "intermediates.pt")
    write_config(args, cfg, model, margin)


def write_config(args: argparse.Namespace, cfg: dict, model: nn.Module, margin: float) -> None:
    import transformers

    groups = args.depth // args.group_layer_num
    config = {
        "model_class": "BiggerGait__DINOv2 (opengait/modeling/models/BiggerGait_DINOv2.py)",
        "recorded_by": "scripts/record_official_biggergait.py",
        "seed": args.seed,
        "iteration": ITERATION,
        "model_cfg": cfg,
        "dinov2_config": dinov2_config(args.width, args.depth, args.attention_heads).to_dict(),
        "weights": "random: Backbone cls/mask/pos embeddings 0.1*N, Linear/Conv N(0,1/fan_in) (query/key gain 1.5), "
        "biases 0.02*N, LayerNorm 1+0.1*N / 0.05*N, LayerScale U(0.3,0.7); other modules OpenGait's xavier/BN init; "
        "every BN running_mean 0.1*N, running_var 1+0.2*U, num_batches_tracked=iteration; Mask_Branch bias in "
        "the widest logit gap (20-60 % foreground)",
        "mask_min_margin_in_logits": margin,
        "inputs": f"{args.inputs.name} of the shared recording",
        "model_input_hw": [2 * args.image_size, args.image_size],
        "sils_hw": [2 * args.sils_size, args.sils_size],
        "total_layer_num": args.depth,
        "group_layer_num": args.group_layer_num,
        "head_num": args.head_num,
        "head_of_group": [g // (groups // args.head_num) for g in range(groups)],
        "n_state_dict_keys": len(model.state_dict()),
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=1) + "\n")


def paper_parameters(args: argparse.Namespace) -> None:
    """The official models' parameter counts at paper size (`All Backbone Count` of the official log)."""
    cls = official_class(args.opengait)
    counts = {}
    for name, (group, heads) in {"biggergait": (1, 12), "biggergait_group": (2, 2)}.items():
        paper = argparse.Namespace(
            **{**vars(args), "width": 384, "depth": 12, "image_size": 224, "sils_size": 32, "num_unknown": 16,
               "channels": [64, 128, 256, 512], "embed_dim": 256, "parts": 32, "classes": 100,
               "group_layer_num": group, "head_num": heads}
        )  # fmt: skip
        model = build(cls, model_cfg(paper), heads=6)
        counts[name] = sum(p.numel() for p in model.parameters())
        del model
    args.paper_parameters.write_text(json.dumps(counts, indent=1) + "\n")
    print(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opengait", type=Path, required=True, help="the official `opengait/` source folder")
    parser.add_argument("--out", type=Path, help="folder to write the recording to")
    parser.add_argument("--paper-parameters", type=Path, help="write the paper-size parameter counts here")
    parser.add_argument("--inputs", type=Path, default=Path("tests/fixtures/official_biggergait/inputs.pt"))
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--attention-heads", type=int, default=2)
    parser.add_argument("--group-layer-num", type=int, default=2)
    parser.add_argument("--head-num", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--sils-size", type=int, default=16)
    parser.add_argument("--num-unknown", type=int, default=4)
    parser.add_argument("--channels", type=int, nargs=4, default=[16, 32, 64, 128])
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--parts", type=int, default=16)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    if args.out is not None:
        write_recording(args)
    if args.paper_parameters is not None:
        paper_parameters(args)


if __name__ == "__main__":
    main()
