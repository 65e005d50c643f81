"""Frozen DINOv2 backbone through timm, with the official positional-embedding interpolation (OpenGait `BigGait_utils/DINOv2.py`)."""

from __future__ import annotations

import contextvars
import io
import math
import pickle
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from torch import nn

from biggait.errors import BiggaitError, ConfigError, CorruptDataError

__all__ = [
    "BACKBONE_FILE_FORMAT",
    "BACKBONE_PRESETS",
    "SYNTHETIC_LVM_FILE",
    "BackboneFileError",
    "BackboneFileNotFoundError",
    "BackbonePreset",
    "DinoV2Backbone",
    "backbone_autocast",
    "interpolate_pos_embed",
    "interpolate_pos_embed_hf",
    "mid4_indices",
    "restoring_from_checkpoint",
    "weights_from_checkpoint",
]

# Marker of backbone files written by `DinoV2Backbone.save` (e.g. the synthetic world's stand-in LVM).
BACKBONE_FILE_FORMAT = "biggait-backbone/1"
# `pretrained="synthetic"`: the tiny stand-in LVM shipped with the package (biggait.synthetic_lvm, `make lvm`).
SYNTHETIC_LVM_FILE = Path(__file__).resolve().parent.parent / "assets" / "synthetic_lvm_tiny.pt"


_RESTORING = contextvars.ContextVar("biggait_backbone_restoring", default=False)


@contextmanager
def weights_from_checkpoint() -> Iterator[None]:
    """Backbones built inside skip `pretrained` (no file, no network, no warning): a checkpoint restores them.

    `pretrained` matters only when training starts; evaluating, embedding or resuming a checkpoint must not
    need the original weight file (it may have moved) nor the network.
    """
    token = _RESTORING.set(True)
    try:
        yield
    finally:
        _RESTORING.reset(token)


def backbone_autocast(precision: str | None, device: torch.device) -> AbstractContextManager:
    """The frozen backbone's own precision (docs/performance.md): None follows the surrounding autocast."""
    if precision is None:
        return nullcontext()
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def restoring_from_checkpoint() -> bool:
    """Whether a model is being built inside `weights_from_checkpoint()` (its weight files must not be read)."""
    return _RESTORING.get()


class BackboneFileError(CorruptDataError):
    """A backbone weights file that does not fit the backbone being built."""


class BackboneFileNotFoundError(BiggaitError, FileNotFoundError):
    """The backbone weights file named by `pretrained` does not exist."""


def _read_weights(path: Path) -> object:
    """`torch.load(weights_only=True)` of a backbone file, every failure as one `BackboneFileError` naming it."""
    fix = "pass a DINOv2 .pth or a file written by DinoV2Backbone.save (make lvm rebuilds the synthetic ones)"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise BackboneFileError(
            f"backbone weights file {path} is not a tensor-only PyTorch file and was refused unopened; {fix}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BackboneFileError(f"backbone weights file {path} cannot be read ({first}); {fix}") from None


@dataclass(frozen=True)
class BackbonePreset:
    """Architecture of one DINOv2 variant."""

    timm_name: str
    embed_dim: int
    depth: int
    num_heads: int


BACKBONE_PRESETS: dict[str, BackbonePreset] = {
    "tiny": BackbonePreset("vit_small_patch14_dinov2", 64, 4, 2),  # tests and the CPU default
    "vits14": BackbonePreset("vit_small_patch14_dinov2", 384, 12, 6),  # the paper
    "vitb14": BackbonePreset("vit_base_patch14_dinov2", 768, 12, 12),
    "vitl14": BackbonePreset("vit_large_patch14_dinov2", 1024, 24, 16),
    "vitg14": BackbonePreset("vit_giant_patch14_dinov2", 1536, 40, 24),
}

PATCH_SIZE = 14
OFFICIAL_GRID = 37  # DINOv2 checkpoints store a 37x37 table (img_size 518)


def mid4_indices(depth: int) -> list[int]:
    """0-based blocks whose raw outputs form f_mid4: 2, 5, 8, 11 for depth 12 (OpenGait `BigGait_utils/DINOv2.py`)."""
    return [int(i * depth / 4 + depth / 4 - 1) for i in range(4)]


def interpolate_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], *, offset: float = 0.1
) -> torch.Tensor:
    """Resample a DINOv2 [1, 1 + M*M, C] table to `grid` exactly as the official DINOv2 code does.

    Bicubic with `scale_factor = (g + 0.1) / M` per axis and no antialias (OpenGait `BigGait_utils/DINOv2.py`); timm's default
    (`size=`, antialias) gives slightly different values, which imported checkpoints were not trained with.
    """
    num_patches = pos_embed.shape[1] - 1
    side = int(math.sqrt(num_patches))
    if side * side != num_patches:
        raise ValueError(f"positional table has {num_patches} patch entries, not a square grid")
    dim = pos_embed.shape[-1]
    cls_pos, patch_pos = pos_embed[:, :1].float(), pos_embed[:, 1:].float()
    scale = (float(grid[0] + offset) / side, float(grid[1] + offset) / side)
    patch_pos = F.interpolate(
        patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2), scale_factor=scale, mode="bicubic"
    )
    if tuple(patch_pos.shape[-2:]) != tuple(grid):
        raise ValueError(f"official interpolation gave grid {tuple(patch_pos.shape[-2:])}, expected {grid}")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([cls_pos, patch_pos], dim=1).to(pos_embed.dtype)


def interpolate_pos_embed_hf(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample a DINOv2 [1, 1 + M*M, C] table to `grid` exactly as HF transformers' `Dinov2Model` does.

    transformers 4.57.6 `Dinov2Embeddings.interpolate_pos_encoding` (what OpenGait `BiggerGait_DINOv2.py` runs):
    bicubic to `size=grid`, no antialias, in float32, and the table unchanged when the grid is the stored
    square one. Not the DINOv2 repository's `scale_factor=(g + 0.1) / M` of `interpolate_pos_embed`, nor
    timm's antialiased resampling.
    """
    num_patches = pos_embed.shape[1] - 1
    side = int(math.sqrt(num_patches))
    if side * side != num_patches:
        raise ValueError(f"positional table has {num_patches} patch entries, not a square grid")
    if tuple(grid) == (side, side):
        return pos_embed
    dim = pos_embed.shape[-1]
    patch_pos = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=tuple(grid), mode="bicubic", align_corners=False).to(
        pos_embed.dtype
    )
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([pos_embed[:, :1], patch_pos], dim=1)


PosEmbedInterpolation = Literal["dinov2", "hf"]
_POS_EMBED_INTERPOLATIONS = {"dinov2": interpolate_pos_embed, "hf": interpolate_pos_embed_hf}


class DinoV2Backbone(nn.Module):
    """DINOv2 ViT returning f_last and f_mid4 token maps (OpenGait `BigGait_utils/DINOv2.py`)."""

    def __init__(
        self,
        *,
        preset: str | None = "vits14",
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float | None = None,
        image_size: tuple[int, int] = (448, 224),
        pretrained: str | None = None,
        pos_embed_interpolation: PosEmbedInterpolation = "dinov2",
    ) -> None:
        super().__init__()
        if pos_embed_interpolation not in _POS_EMBED_INTERPOLATIONS:
            raise ValueError(
                f"pos_embed_interpolation must be one of {sorted(_POS_EMBED_INTERPOLATIONS)}, got {pos_embed_interpolation!r}"
            )
        # "dinov2": the DINOv2 repository's (BigGait); "hf": HF transformers' Dinov2Model (BiggerGait)
        self.pos_embed_interpolation = pos_embed_interpolation
        base = BACKBONE_PRESETS.get(preset or "vits14")
        if preset is not None and preset not in BACKBONE_PRESETS:
            raise ValueError(f"unknown backbone preset {preset!r}; choose one of {sorted(BACKBONE_PRESETS)}")
        self.timm_name = base.timm_name
        self.embed_dim = embed_dim or base.embed_dim
        self.depth = depth or base.depth
        self.num_heads = num_heads or base.num_heads
        if image_size[0] % PATCH_SIZE or image_size[1] % PATCH_SIZE:
            raise ValueError(f"image_size {image_size} must be a multiple of the patch size {PATCH_SIZE}")
        self.image_size = tuple(image_size)
        self.grid = (image_size[0] // PATCH_SIZE, image_size[1] // PATCH_SIZE)
        self.mid4 = mid4_indices(self.depth)
        extra = {} if mlp_ratio is None else {"mlp_ratio": mlp_ratio}
        # Positional embedding lives outside timm: we keep the official 37x37 table and interpolate from it.
        self.vit = timm.create_model(
            self.timm_name,
            pretrained=False,
            img_size=self.image_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            init_values=1.0,
            num_classes=0,
            pos_embed="none",
            **extra,
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + OFFICIAL_GRID**2, self.embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, self.embed_dim))  # unused, kept for lossless import
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if _RESTORING.get() or pretrained == "random":
            pass  # every weight comes from the checkpoint being loaded, or random features asked for by name
        elif pretrained is None:
            warnings.warn(
                "BigGait backbone has NO pretrained weights: DINOv2 features are random. Pass "
                "pretrained='hub' or a path to dinov2_vitX14_pretrain.pth for real features ('random' to "
                "ask for random features without this warning).",
                UserWarning,
                stacklevel=3,
            )
        else:
            self.load_pretrained(pretrained)

    @property
    def mid4_dim(self) -> int:
        return 4 * self.embed_dim

    def architecture(self) -> dict[str, object]:
        """What a saved backbone file must match to load into this backbone."""
        return {
            "timm_name": self.timm_name,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
        }

    def save(self, path: str | Path, **info: object) -> Path:
        """Write this backbone's weights atomically in BACKBONE_FILE_FORMAT (loadable as `pretrained=path`)."""
        from biggait.io import atomic_write_bytes

        buf = io.BytesIO()
        state = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}
        payload = {"format": BACKBONE_FILE_FORMAT, "architecture": self.architecture(), "info": info}
        torch.save({**payload, "state_dict": state}, buf)
        return atomic_write_bytes(Path(path), buf.getvalue())

    def _load_own(self, payload: dict, path: Path) -> None:
        arch = payload.get("architecture")
        if arch != self.architecture():
            raise BackboneFileError(
                f"backbone file {path} was saved for architecture {arch}, but this backbone is "
                f"{self.architecture()}; build the model with the matching preset/width/depth/heads"
            )
        self.load_state_dict(payload["state_dict"], strict=True)

    def load_pretrained(self, source: str | Path) -> None:
        """Load weights: "hub" (timm, or its Hugging Face cache), "synthetic" (the shipped tiny stand-in LVM), a local official
        `dinov2_vitX14_pretrain.pth`, or a file written by `save`."""
        if str(source) == "synthetic":
            if not SYNTHETIC_LVM_FILE.is_file():
                raise BackboneFileNotFoundError(
                    f"the synthetic stand-in LVM {SYNTHETIC_LVM_FILE} is missing; rebuild it with `make lvm`"
                )
            source = SYNTHETIC_LVM_FILE
        payload: dict = {}
        if str(source) != "hub":
            path = Path(source)
            if not path.is_file():
                raise BackboneFileNotFoundError(
                    f"backbone weights file not found: {path} (pass pretrained='hub', a DINOv2 .pth or a "
                    "file written by DinoV2Backbone.save)"
                )
            payload = _read_weights(path)
            if isinstance(payload, dict) and payload.get("format") == BACKBONE_FILE_FORMAT:
                self._load_own(payload, path)
                return
        released = {(p.timm_name, p.embed_dim, p.depth) for k, p in BACKBONE_PRESETS.items() if k != "tiny"}
        if (self.timm_name, self.embed_dim, self.depth) not in released:
            raise ValueError(
                f"pretrained DINOv2 weights exist only for the vits14/vitb14/vitl14/vitg14 presets, not for a "
                f"custom width/depth {self.embed_dim}/{self.depth}; use pretrained='random'"
            )
        kwargs: dict = {}
        mask_token = None
        if str(source) != "hub":
            kwargs["pretrained_cfg_overlay"] = {"file": str(source)}
            mask_token = payload.get("mask_token") if isinstance(payload, dict) else None
        # Built at the native 518 size so timm's converter keeps the 37x37 table untouched.
        try:
            ref = timm.create_model(f"{self.timm_name}.lvd142m", pretrained=True, num_classes=0, **kwargs)
        except Exception as exc:  # offline, HF_HUB_OFFLINE without a cached copy, proxy, hub outage
            if str(source) != "hub":
                raise
            raise ConfigError(
                f"DINOv2 weights {self.timm_name}.lvd142m cannot be had from the Hugging Face hub "
                f"({type(exc).__name__}; no network, or HF_HUB_OFFLINE=1 without a cached copy): pass "
                "model.net.pretrained=/path/dinov2_vits14_pretrain.pth (from github.com/facebookresearch/dinov2), "
                "or model.net.pretrained=random for random features"
            ) from exc
        state = ref.state_dict()
        pos_embed = state.pop("pos_embed")
        if pos_embed.shape != self.pos_embed.shape:
            raise ValueError(
                f"pretrained pos_embed {tuple(pos_embed.shape)} != {tuple(self.pos_embed.shape)}"
            )
        self.vit.load_state_dict(state, strict=True)
        with torch.no_grad():
            self.pos_embed.copy_(pos_embed)
            if mask_token is not None:
                self.mask_token.copy_(mask_token.reshape(self.mask_token.shape))

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens with the class token in front and the grid's positional embedding added."""
        x = self.vit.patch_embed(images)
        x = torch.cat([self.vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.grid_pos_embed()

    def grid_pos_embed(self, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """The positional embedding interpolated to `grid` (default: this backbone's token grid)."""
        return _POS_EMBED_INTERPOLATIONS[self.pos_embed_interpolation](self.pos_embed, grid or self.grid)

    def forward_blocks(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images [B, 3, H, W] -> every block's output tokens [B, 1 + h*w, C], class token first, before the
        final LayerNorm (HF `Dinov2Model(output_hidden_states=True).hidden_states[1:]`)."""
        x = self._embed(images)
        outputs = []
        for block in self.vit.blocks:
            x = block(x)
            outputs.append(x)
        return outputs

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W] -> (f_last [B, C, h, w], f_mid4 [B, 4C, h, w]) token maps."""
        vit = self.vit
        x = self._embed(images)
        mids = []
        for i, block in enumerate(vit.blocks):
            x = block(x)
            if i in self.mid4:
                mids.append(x[:, 1:])
        f_last = vit.norm(x)[:, 1:]
        # OpenGait `BigGait_utils/DINOv2.py`: non-affine LayerNorm over the concatenated 4C vector, jointly
        f_mid4 = F.layer_norm(torch.cat(mids, dim=-1), (self.mid4_dim,), eps=1e-6)
        return self._to_map(f_last), self._to_map(f_mid4)

    def _to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        b, _, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, *self.grid)
