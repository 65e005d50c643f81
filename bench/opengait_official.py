"""Run the official OpenGait BigGait model from a checkout of the OpenGait sources, for side-by-side benchmarks.

    OPENGAIT_SRC=/path/to/OpenGait python bench/bench_model.py

Nothing of OpenGait is copied into this repository and none of its files is modified: the official modules
(`opengait/modeling/models/BigGait.py` and what it imports: `BigGait_utils/DINOv2.py`, `dino_layers`,
`BigGait_GaitBase.py`, `modeling/modules.py`, `modeling/losses/{base,triplet,ce}.py`, `utils/common.py`)
are imported from that checkout as they are. What their training framework needs at import time is replaced
by small shims written here: the abstract `BaseModel` (which in OpenGait builds data loaders, DDP and CUDA
state; ours only calls `build_network` and keeps `iteration`), the message manager (TensorBoard), the unused
`backbones` package and, when scikit-learn is missing, the PCA visualisation of the training forward
(`save_img.pca_image`; the official forward then takes its own `except` fallback). The official code needs
`einops` and `kornia` (`pip install -e '.[official]'`). The loss helper all-gathers through
`torch.distributed`: a one-process gloo group is started on a file store.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import tempfile
import types
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["OfficialBigGait", "official_model_cfg", "load_official_biggait"]

_PKG = "_opengait_official"  # our private name for the imported official package tree


class _MessageManager:
    """Stand-in for OpenGait's `utils.msg_manager.get_msg_mgr()` (TensorBoard logging): drops messages."""

    def log_info(self, *args: Any, **kwargs: Any) -> None:
        pass

    log_debug = log_warning = log_info


def _package(name: str, path: Path | None) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(path)] if path is not None else []
    sys.modules[name] = module
    return module


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _ensure_process_group() -> None:
    if torch.distributed.is_available() and not torch.distributed.is_initialized():
        store = torch.distributed.FileStore(tempfile.mktemp(prefix="opengait_pg_"), 1)
        torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)


def _import_official(src: Path) -> dict[str, types.ModuleType]:
    root = src / "opengait"
    model_file = root / "modeling" / "models" / "BigGait.py"
    if not model_file.is_file():
        raise FileNotFoundError(
            f"OPENGAIT_SRC={src}: {model_file} not found; point it at a checkout of github.com/ShiqiYu/OpenGait"
        )
    if f"{_PKG}.modeling.models.BigGait" in sys.modules:
        return {
            k: sys.modules[f"{_PKG}.{k}"] for k in ("modeling.models.BigGait", "losses.triplet", "losses.ce")
        }
    for dep in ("einops", "kornia"):
        if importlib.util.find_spec(dep) is None:
            raise ImportError(f"the official BigGait code imports {dep}: pip install -e '.[official]'")
    # `utils`: the official utils/common.py itself, plus our message manager (theirs needs TensorBoard)
    saved_utils = sys.modules.get("utils")
    utils = _package("utils", root / "utils")
    common = _load_file("utils.common", root / "utils" / "common.py")
    for name in dir(common):
        if not name.startswith("__"):
            setattr(utils, name, getattr(common, name))
    utils.get_msg_mgr = _MessageManager
    try:
        _package(_PKG, root)
        modeling = _package(f"{_PKG}.modeling", root / "modeling")
        base = types.ModuleType(f"{_PKG}.modeling.base_model")

        class BaseModel(nn.Module):
            """Shim of OpenGait's BaseModel: only what BigGait__Dinov2_Gaitbase's forward uses."""

            def __init__(self, model_cfg: dict[str, Any]) -> None:
                super().__init__()
                self.msg_mgr = _MessageManager()
                self.iteration = 0
                self.build_network(model_cfg)

        base.BaseModel = BaseModel
        sys.modules[base.__name__] = base
        modeling.base_model = base
        modeling.backbones = _package(f"{_PKG}.modeling.backbones", None)  # imported, never used by BigGait
        _package(f"{_PKG}.modeling.models", root / "modeling" / "models")
        _package(f"{_PKG}.modeling.losses", root / "modeling" / "losses")
        if importlib.util.find_spec("sklearn") is None or importlib.util.find_spec("imageio") is None:
            vis = types.ModuleType(f"{_PKG}.modeling.models.BigGait_utils.save_img")

            def pca_image(*args: Any, **kwargs: Any) -> Any:
                raise ImportError("scikit-learn is not installed: visualisation skipped")

            vis.pca_image = pca_image
            vis.save_image = pca_image
            _package(f"{_PKG}.modeling.models.BigGait_utils", root / "modeling" / "models" / "BigGait_utils")
            sys.modules[vis.__name__] = vis
        modules = {
            "modeling.models.BigGait": importlib.import_module(f"{_PKG}.modeling.models.BigGait"),
            "losses.triplet": importlib.import_module(f"{_PKG}.modeling.losses.triplet"),
            "losses.ce": importlib.import_module(f"{_PKG}.modeling.losses.ce"),
        }
    finally:
        # the official modules keep their references; the global name `utils` goes back to what it was
        for name in [k for k in sys.modules if k == "utils" or k.startswith("utils.")]:
            del sys.modules[name]
        if saved_utils is not None:
            sys.modules["utils"] = saved_utils
    return modules


def official_model_cfg(config: dict[str, Any]) -> dict[str, Any]:
    """OpenGait `model_cfg` (as in configs/biggait/BigGait_CCPG.yaml) for one of our `BigGait.config` dicts."""
    from biggait.models import BACKBONE_PRESETS

    preset = BACKBONE_PRESETS[config["backbone"] or "vits14"]
    width = config["backbone_width"] or preset.embed_dim
    h, w = config["image_size"]
    mh, mw = config["map_size"]
    if h != 2 * w or mh != 2 * mw:
        raise ValueError(f"the official model needs 2:1 sizes, got image {h}x{w}, maps {mh}x{mw}")
    hidden = config["denoising_hidden"]
    if hidden is not None and hidden != 2 * width:
        raise ValueError("the official denoising branch has a hidden width of source_dim // 2")
    channels = list(config["channels"])
    return {
        "model": "BigGait__Dinov2_Gaitbase",
        "pretrained_dinov2": "",
        "pretrained_mask_branch": "",  # no MaskBranch file: the branch trains from step 0, like ours
        "image_size": w,
        "sils_size": mw,
        "Denoising_Branch": {
            "source_dim": 4 * width,
            "target_dim": config["denoising_dim"],
            "p": 0,
            "softmax": True,
            "Relu": True,
            "Up": False,
        },
        "Appearance_Branch": {
            "source_dim": 4 * width,
            "target_dim": config["appearance_dim"],
            "p": 0,
            "softmax": False,
            "Relu": False,
            "Up": False,
        },
        "Mask_Branch": {
            "source_dim": width,
            "target_dim": 2,
            "p": config["mask_dropout"],
            "softmax": True,
            "Relu": False,
            "Up": True,
        },
        "AttentionFusion": {
            "in_channels": channels[0],
            "squeeze_ratio": config["fusion_squeeze"],
            "feat_len": 2,
        },
        "backbone_cfg": {
            "type": "ResNet9",
            "block": "BasicBlock",
            "in_channel": 1,
            "channels": channels,
            "layers": [1, 1, 1, 1],
            "strides": [1, 2, 2, 1],
            "maxpool": False,
        },
        "SeparateFCs": {
            "in_channels": channels[3],
            "out_channels": config["embed_dim"],
            "parts_num": config["parts"],
        },
        "SeparateBNNecks": {
            "class_num": config["num_classes"],
            "in_channels": config["embed_dim"],
            "parts_num": config["parts"],
        },
        "bin_num": [config["parts"]],
    }


class OfficialBigGait:
    """The official model plus its triplet and CE losses, called the way OpenGait's BaseModel calls them."""

    def __init__(self, model: nn.Module, triplet: nn.Module, ce: nn.Module) -> None:
        self.model, self.triplet, self.ce = model, triplet, ce

    def embeddings(self, frames: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
        """frames [n, s, 3, H, W] normalised, ratios [n, s] -> embeddings [n, E, p] (eval forward)."""
        n, s = frames.shape[:2]
        seq_len = None  # OpenGait passes seqL=None for equal-length batches
        labels = torch.zeros(n, dtype=torch.long, device=frames.device)
        out = self.model(([frames, ratios], labels, None, None, seq_len))
        return out["inference_feat"]["embeddings"]

    def training_loss(self, frames: torch.Tensor, ratios: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The summed training loss of one official training forward (what LossAggregator adds up)."""
        out = self.model(([frames, ratios], labels, None, None, None))["training_feat"]
        loss = self.triplet(**out.pop("triplet"))[0].mean() * self.triplet.loss_term_weight
        loss = loss + self.ce(**out.pop("softmax"))[0].mean() * self.ce.loss_term_weight
        for value in out.values():
            loss = loss + value.mean()
        return loss


def load_official_biggait(
    src: str | Path, config: dict[str, Any], state: dict[str, torch.Tensor]
) -> OfficialBigGait:
    """The official BigGait__Dinov2_Gaitbase built for our `config`, loaded strictly from an official `state`."""
    from biggait.models import BACKBONE_PRESETS

    mods = _import_official(Path(src))
    _ensure_process_group()
    official = mods["modeling.models.BigGait"]
    model = official.BigGait__Dinov2_Gaitbase(official_model_cfg(config))
    dinov2 = sys.modules[f"{_PKG}.modeling.models.BigGait_utils.DINOv2"]
    preset = BACKBONE_PRESETS[config["backbone"] or "vits14"]
    if config["backbone"] == "vits14":
        model.backbone = dinov2.vit_small(logger=_MessageManager())  # exactly what init_DINOv2 builds
    else:  # the same constructor call with this preset's sizes
        layers = sys.modules[f"{_PKG}.modeling.models.BigGait_utils.dino_layers"]
        model.backbone = dinov2.DinoVisionTransformer(
            img_size=518,
            patch_size=14,
            init_values=1.0,
            ffn_layer="mlp",
            block_chunks=0,
            embed_dim=config["backbone_width"] or preset.embed_dim,
            depth=config["backbone_depth"] or preset.depth,
            num_heads=config["backbone_heads"] or preset.num_heads,
            mlp_ratio=4,
            block_fn=partial(layers.NestedTensorBlock, attn_class=layers.MemEffAttention),
            logger=_MessageManager(),
        )
    model.load_state_dict(state, strict=True)
    model.backbone.eval()
    model.backbone.requires_grad_(False)
    triplet = mods["losses.triplet"].TripletLoss(margin=0.2, loss_term_weight=1.0)
    ce = mods["losses.ce"].CrossEntropyLoss(scale=16, loss_term_weight=1.0, log_accuracy=True)
    return OfficialBigGait(model, triplet, ce)
