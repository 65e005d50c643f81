"""Model files in, a `BigGait` out: one loader for our Lightning checkpoints, converted files and official
OpenGait checkpoints; every file is checked before anything else reads it (one error line per bad file).

Every load is `torch.load(..., weights_only=True)`: a checkpoint is data, never code. Loading never reads the
original backbone weight file nor the network (`pretrained` matters only when training starts): every weight
comes from the checkpoint.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
import zipfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from biggait.compat.biggergait import official_biggergait_state
from biggait.compat.official_biggait import infer_config, map_official_state
from biggait.errors import BiggaitError, ConfigError
from biggait.formats import (
    checkpoint_kind,
    lightning_architecture,
    official_architecture,
    require_architecture,
    upgrade_checkpoint,
)
from biggait.models import BigGait, BiggerGait, weights_from_checkpoint
from biggait.models.bounds import check_option_bounds
from biggait.models.state import state_diff

__all__ = [
    "CheckpointError",
    "check_model_file",
    "checkpoint_kind",
    "lightning_config",
    "load_model",
    "model_fingerprint",
    "model_skeleton",
    "read_checkpoint",
    "upgrade_checkpoint",
    "validate_checkpoint",
]

_PICKLE_PROTOCOL_BYTE = b"\x80"
# architecture (biggait.formats) -> the model class built from a checkpoint of it
MODEL_CLASSES: dict[str, type[BigGait] | type[BiggerGait]] = {"biggait": BigGait, "biggergait": BiggerGait}
_DEFAULT_FRAME_SIZE = (256, 128)  # BigGait's default: CCPG's converter canvas


class CheckpointError(BiggaitError, ValueError):
    """A file given as a model checkpoint that is not one (or not one of BigGait)."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """`torch.load(path, weights_only=True)` with one readable `CheckpointError` for every way it can fail."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise CheckpointError(
            f"checkpoint {path} {what}: pass a .ckpt written by `make train` (outputs/.../checkpoints/last.ckpt), "
            "one converted with `python -m biggait.compat.opengait`, or an official OpenGait .pt"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a tensor-only PyTorch file: {_why(path, exc)}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {_why(path, exc)}") from None
    if not isinstance(blob, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(blob).__name__}, not a checkpoint dict (a Lightning .ckpt or an "
            "OpenGait {'model': state_dict} file)"
        )
    return blob


def _why(path: Path, exc: BaseException) -> str:
    text = str(exc)
    with path.open("rb") as f:
        head = f.read(4)
    if "Unsupported global" in text or "Unsupported operand" in text or "unsupported" in text.lower():
        return (
            "it holds Python objects or code, not only tensors, and was refused unopened (weights_only=True); "
            "a checkpoint that needs code to load is not one biggait accepts"
        )
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            return "the zip archive is truncated or corrupt (no central directory): copy the file again"
        return f"the archive is corrupt ({text.splitlines()[0] if text else type(exc).__name__})"
    if head[:1] == _PICKLE_PROTOCOL_BYTE:
        return "the pickle stream is truncated or corrupt: copy the file again"
    if len(head) == 0:
        return "the file is empty"
    return "it is neither a zip archive nor a pickle (a text file or another format?)"


def lightning_config(blob: dict[str, Any], path: Path) -> dict[str, Any]:
    """The model options (`hyper_parameters['net']`) of our Lightning checkpoint."""
    hp = blob.get("hyper_parameters")
    net = hp.get("net") if isinstance(hp, dict) else None
    if not isinstance(net, dict):
        raise CheckpointError(
            f"checkpoint {path} has no hyper_parameters['net']: it is not a biggait checkpoint (convert an "
            "official OpenGait file with `python -m biggait.compat.opengait IN OUT`)"
        )
    return dict(net)


def _official_config(
    official: dict[str, Any], path: Path, num_heads: int | None
) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """(architecture, model options inferred from the shapes, our state dict) of an official OpenGait state dict;
    tensors that map onto nothing keep their official names, so the strict load lists them."""
    arch = official_architecture(official)
    try:
        if arch == "biggergait":
            cfg, state = official_biggergait_state(official, num_heads=num_heads)
        else:
            cfg, state = infer_config(official, num_heads=num_heads), map_official_state(official)
    except BiggaitError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    return arch, cfg, state


def _model_config(
    blob: dict[str, Any], path: Path, num_heads: int | None = None
) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """(architecture, model kwargs, our state dict) of a checkpoint of either kind."""
    kind = checkpoint_kind(blob)
    if kind == "lightning":
        if num_heads is not None:
            raise ConfigError(
                f"num_heads applies to official OpenGait checkpoints only; checkpoint {path} records its backbone"
            )
        upgrade_checkpoint(blob)
        cfg = lightning_config(blob, path)
        state = {k.removeprefix("net."): v for k, v in blob["state_dict"].items() if k.startswith("net.")}
        return lightning_architecture(blob), cfg, state
    if kind == "opengait":
        _tensors_only(blob["model"], path)
        return _official_config(blob["model"], path, num_heads)
    keys = sorted(blob)[:6]
    raise CheckpointError(
        f"checkpoint {path} is neither a biggait Lightning checkpoint (state_dict + hyper_parameters) nor an "
        f"OpenGait BigGait / BiggerGait checkpoint ({{'model': state_dict}}); its top-level keys are {keys}"
    )


def _construct(
    arch: str, cfg: dict[str, Any], path: Path, *, device: str | None = None
) -> BigGait | BiggerGait:
    cls = MODEL_CLASSES[arch]
    with weights_from_checkpoint(), torch.device(device) if device else nullcontext():
        try:
            return cls(**cfg)
        except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint {path}: its model options do not build a {cls.__name__} ({exc})"
            ) from None


def model_skeleton(
    cfg: dict[str, Any], path: str | Path, *, architecture: str = "biggait"
) -> BigGait | BiggerGait:
    """The model that options read from a file describe, on the meta device (no memory), after the options'
    bounds (`biggait.models.bounds`): a 2 KB file claiming a huge model is one `CheckpointError`."""
    try:
        check_option_bounds(cfg)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    return _construct(architecture, cfg, Path(path), device="meta")


def check_model_file(
    cfg: dict[str, Any], state: dict[str, Any], path: str | Path, *, architecture: str = "biggait"
) -> None:
    """Everything a model file declares, checked before any real tensor is allocated: option bounds, then
    every tensor's name and shape against `model_skeleton`, then that no weight is NaN or inf."""
    _tensors_only(state, path)
    skeleton = model_skeleton(cfg, path, architecture=architecture)
    _check_state(skeleton.state_dict(), state, Path(path), type(skeleton).__name__)
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {path}: tensor {bad} holds NaN or inf (a diverged training run?): it would embed "
            "every input as NaN; use an earlier checkpoint"
        )


def _tensors_only(state: dict[str, Any], path: str | Path) -> None:
    odd = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise CheckpointError(f"checkpoint {path}: {odd} is a {type(state[odd]).__name__}, not a tensor")


def _build(arch: str, cfg: dict[str, Any], state: dict[str, Any], path: Path) -> BigGait | BiggerGait:
    """The model a checkpoint describes, with its weights, after `check_model_file`."""
    check_model_file(cfg, state, path, architecture=arch)
    model = _construct(arch, cfg, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied into the parameter
        raise CheckpointError(
            f"checkpoint {path}: its tensors do not load ({str(exc).splitlines()[-1]})"
        ) from None
    return model


def _check_state(
    expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path, model_name: str
) -> None:
    diff = state_diff(expected, state)
    if diff:
        shapes = [f"{k} {given} vs {expected}" for k, given, expected in diff.shapes]
        parts = []
        for name, items in (
            ("missing", diff.missing),
            ("unexpected", diff.unexpected),
            ("shape mismatches", shapes),
        ):
            if items:
                parts.append(f"{len(items)} {name} (e.g. {items[0]})")
        raise CheckpointError(
            f"checkpoint {path} is not a {model_name} of the architecture it declares: {'; '.join(parts)}"
        )


def validate_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint for `make eval CKPT=` / `ckpt_path=`: returns the loaded dict.

    Raises `CheckpointError` (one line) for a text, truncated or code-carrying file, a checkpoint without
    `hyper_parameters` or one whose tensors do not fit the BigGait its hyper-parameters describe.
    """
    path = Path(path)
    blob = read_checkpoint(path)
    if checkpoint_kind(blob) != "lightning":
        raise CheckpointError(
            f"checkpoint {path} is not a Lightning checkpoint (no state_dict); an official OpenGait .pt must be "
            "converted first: `python -m biggait.compat.opengait IN.pt OUT.ckpt`"
        )
    arch, cfg, state = _model_config(blob, path)
    _build(arch, cfg, state, path)
    return blob


def load_model(
    path: str | Path, *, num_heads: int | None = None, architecture: str | None = None, **overrides: Any
) -> BigGait | BiggerGait:
    """A `BigGait` or `BiggerGait` (told from the file's keys) in eval mode from any model file: our Lightning
    `.ckpt`, a converted one, or an official OpenGait `.pt` (`{'model': state_dict}`, sizes inferred from the
    tensors; `num_heads`: the backbone's attention heads, which shapes cannot tell). `architecture`
    ("biggait" / "biggergait"): the only one the caller takes; another gives one error line.

    `overrides` replace model options that the tensors cannot tell (`frame_size`, `image_size`, `map_size`,
    `padding_resize_crop`, ...). No backbone weight file and no network is read.
    """
    path = Path(path)
    blob = read_checkpoint(path)
    if architecture is not None:
        require_architecture(blob, architecture, f"checkpoint {path}")
    arch, cfg, state = _model_config(blob, path, num_heads)
    if checkpoint_kind(blob) == "lightning" and "frame_size" not in cfg and "frame_size" not in overrides:
        warnings.warn(
            f"checkpoint {path} does not record the frame size it was trained on (written before biggait "
            f"recorded it): assuming {_DEFAULT_FRAME_SIZE}; pass frame_size=(H, W) "
            "if it was trained on another size",
            UserWarning,
            stacklevel=2,
        )
    cfg.update(overrides)
    model = _build(arch, cfg, state, path)
    if isinstance(blob.get("biggait"), dict) and blob["biggait"].get("mask_branch_frozen"):
        model.freeze_mask_branch()
    return model.eval()


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a model's options and every tensor of its state dict (names, shapes, dtypes, bytes):
    embeddings of two models compare only when their fingerprints are equal."""
    digest = hashlib.sha256()
    config = getattr(model, "config", {})
    digest.update(repr(sorted((k, v) for k, v in config.items() if k != "pretrained")).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
