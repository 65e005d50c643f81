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

from biggait.errors import BiggaitError, ConfigError
from biggait.models import BigGait, weights_from_checkpoint
from biggait.models.bounds import check_option_bounds
from biggait.models.state import state_diff

__all__ = [
    "CheckpointError",
    "check_model_file",
    "checkpoint_kind",
    "load_model",
    "load_module",
    "model_fingerprint",
    "model_skeleton",
    "read_checkpoint",
    "upgrade_checkpoint",
    "validate_checkpoint",
]

_PICKLE_PROTOCOL_BYTE = b"\x80"
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


def checkpoint_kind(blob: dict[str, Any]) -> str:
    """'lightning' (ours or converted: `state_dict` + `hyper_parameters`) or 'opengait' (`{'model': ...}`)."""
    if isinstance(blob.get("state_dict"), dict):
        return "lightning"
    model = blob.get("model")
    if isinstance(model, dict) and "backbone.cls_token" in model:
        return "opengait"
    return "unknown"


# Checkpoints written before the model options moved to `model.net.*` (the lightning-hydra-template's name)
# keep the BigGait options under hyper_parameters["model"] and its weights under "model.*".
_LEGACY_NET_KEY = "model"


def upgrade_checkpoint(blob: dict[str, Any]) -> dict[str, Any]:
    """Bring a Lightning checkpoint of an older biggait to today's layout, in place (and return it):
    hyper_parameters["model"] -> ["net"], state_dict "model.*" -> "net.*". Today's checkpoints pass unchanged."""
    hp = blob.get("hyper_parameters")
    if isinstance(hp, dict) and "net" not in hp and isinstance(hp.get(_LEGACY_NET_KEY), dict):
        hp["net"] = hp.pop(_LEGACY_NET_KEY)
    state = blob.get("state_dict")
    if isinstance(state, dict) and not any(k.startswith("net.") for k in state):
        prefix = f"{_LEGACY_NET_KEY}."
        for key in [k for k in state if k.startswith(prefix)]:
            state["net." + key.removeprefix(prefix)] = state.pop(key)
    return blob


def _lightning_config(blob: dict[str, Any], path: Path) -> dict[str, Any]:
    hp = blob.get("hyper_parameters")
    net = hp.get("net") if isinstance(hp, dict) else None
    if not isinstance(net, dict):
        raise CheckpointError(
            f"checkpoint {path} has no hyper_parameters['net']: it is not a biggait checkpoint (convert an "
            "official OpenGait file with `python -m biggait.compat.opengait IN OUT`)"
        )
    return dict(net)


def _model_config(blob: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(BigGait kwargs, our state dict) of a checkpoint of either kind."""
    from biggait.compat.opengait import infer_config, map_official_state

    kind = checkpoint_kind(blob)
    if kind == "lightning":
        upgrade_checkpoint(blob)
        cfg = _lightning_config(blob, path)
        state = {k.removeprefix("net."): v for k, v in blob["state_dict"].items() if k.startswith("net.")}
        return cfg, state
    if kind == "opengait":
        official = blob["model"]
        _tensors_only(official, path)
        try:
            cfg = infer_config(official)
        except BiggaitError as exc:
            raise CheckpointError(f"checkpoint {path}: {exc}") from None
        return cfg, map_official_state(official)
    keys = sorted(blob)[:6]
    raise CheckpointError(
        f"checkpoint {path} is neither a biggait Lightning checkpoint (state_dict + hyper_parameters) nor an "
        f"OpenGait BigGait checkpoint ({{'model': state_dict}}); its top-level keys are {keys}"
    )


def _construct(cfg: dict[str, Any], path: Path, *, device: str | None = None) -> BigGait:
    with weights_from_checkpoint(), torch.device(device) if device else nullcontext():
        try:
            return BigGait(**cfg)
        except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint {path}: its model options do not build a BigGait ({exc})"
            ) from None


def model_skeleton(cfg: dict[str, Any], path: str | Path) -> BigGait:
    """The BigGait that model options read from a file describe, on the meta device (no memory), after the
    options' bounds (`biggait.models.bounds`): a 2 KB file claiming a huge model is one `CheckpointError`."""
    try:
        check_option_bounds(cfg)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    return _construct(cfg, Path(path), device="meta")


def check_model_file(cfg: dict[str, Any], state: dict[str, Any], path: str | Path) -> None:
    """Everything a model file declares, checked before any real tensor is allocated: option bounds, then
    every tensor's name and shape against `model_skeleton`, then that no weight is NaN or inf."""
    _tensors_only(state, path)
    _check_state(model_skeleton(cfg, path).state_dict(), state, Path(path))
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


def _build(cfg: dict[str, Any], state: dict[str, Any], path: Path) -> BigGait:
    """The model a checkpoint describes, with its weights, after `check_model_file`."""
    check_model_file(cfg, state, path)
    model = _construct(cfg, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied into the parameter
        raise CheckpointError(
            f"checkpoint {path}: its tensors do not load ({str(exc).splitlines()[-1]})"
        ) from None
    return model


def _check_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path) -> None:
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
            f"checkpoint {path} is not a BigGait of the architecture it declares: {'; '.join(parts)}"
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
    cfg, state = _model_config(blob, path)
    _build(cfg, state, path)
    return blob


def load_model(path: str | Path, **overrides: Any) -> BigGait:
    """A `BigGait` in eval mode from any model file: our Lightning `.ckpt`, a converted one, or an official
    OpenGait `.pt` (`{'model': state_dict}`, sizes inferred from the tensors).

    `overrides` replace model options that the tensors cannot tell (`frame_size`, `image_size`, `map_size`,
    `padding_resize_crop`, ...). No backbone weight file and no network is read.
    """
    path = Path(path)
    blob = read_checkpoint(path)
    cfg, state = _model_config(blob, path)
    if checkpoint_kind(blob) == "lightning" and "frame_size" not in cfg and "frame_size" not in overrides:
        warnings.warn(
            f"checkpoint {path} does not record the frame size it was trained on (written before biggait "
            f"recorded it): assuming {_DEFAULT_FRAME_SIZE}; pass frame_size=(H, W) "
            "if it was trained on another size",
            UserWarning,
            stacklevel=2,
        )
    cfg.update(overrides)
    model = _build(cfg, state, path)
    if isinstance(blob.get("biggait"), dict) and blob["biggait"].get("mask_branch_frozen"):
        model.freeze_mask_branch()
    return model.eval()


def load_module(path: str | Path, *, net_options: dict[str, Any] | None = None, **overrides: Any):
    """A `BigGaitModule` restored from a validated Lightning checkpoint without reading `pretrained`
    (`overrides` go to the module, e.g. `protocol=`; `net_options` replace options of its `BigGait`)."""
    from biggait.lit_module import BigGaitModule

    net = {**_lightning_config(validate_checkpoint(path), Path(path)), **(net_options or {})}
    overrides.setdefault(
        "net", net
    )  # an older checkpoint names it "model" (BigGaitModule.on_load_checkpoint)
    with weights_from_checkpoint():
        return BigGaitModule.load_from_checkpoint(path, map_location="cpu", weights_only=True, **overrides)


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
