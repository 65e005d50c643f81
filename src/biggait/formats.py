"""What a model file holds, told from its keys: the one home of format and architecture detection that
`biggait.checkpoint`, `biggait.compat.opengait`, the LightningModule and the mask-branch loader ask.

Only dictionaries are inspected here (no model is built, no file is read), so every module can import this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from biggait.errors import BiggaitError

__all__ = [
    "ARCHITECTURES",
    "ArchitectureError",
    "architecture_of",
    "checkpoint_kind",
    "lightning_architecture",
    "mask_branch_tensors",
    "official_architecture",
    "require_architecture",
    "upgrade_checkpoint",
]

# architecture name -> the model class that reads it (biggait.models)
ARCHITECTURES = {"biggait": "BigGait", "biggergait": "BiggerGait"}

# A key only an official checkpoint of each architecture has (OpenGait `BigGait.py`: the DINOv2 repository's
# ViT as `backbone`; `BiggerGait_DINOv2.py`: HF transformers' Dinov2Model as `Backbone`).
_OFFICIAL_MARKERS = {"biggait": "backbone.cls_token", "biggergait": "Backbone.embeddings.cls_token"}
# Module names only our state dict of each architecture has (biggait.models.BigGait / BiggerGait).
_OUR_MARKERS = {"biggait": ("head.",), "biggergait": ("heads.", "human_space.")}
# Official branch-local names of the mask branch (`infoDistillation`; MaskBranch_vits14.pt holds only these)
_BRANCH_LOCAL = ("bn_s.", "bn_t.", "down_sampling.", "up_sampling.")
# Checkpoints written before the model options moved to `model.net.*` (the lightning-hydra-template's name)
# keep the BigGait options under hyper_parameters["model"] and its weights under "model.*".
_LEGACY_NET_KEY = "model"


class ArchitectureError(BiggaitError, ValueError):
    """A checkpoint of one architecture handed to code for another."""


def official_architecture(state: Mapping[str, Any]) -> str | None:
    """'biggait' or 'biggergait' for an official OpenGait state dict, None for anything else."""
    return next((a for a, key in _OFFICIAL_MARKERS.items() if key in state), None)


def checkpoint_kind(blob: Mapping[str, Any]) -> str:
    """'lightning' (ours or converted: `state_dict` + `hyper_parameters`) or 'opengait' (`{'model': ...}`)."""
    if isinstance(blob.get("state_dict"), dict):
        return "lightning"
    model = blob.get("model")
    if isinstance(model, dict) and official_architecture(model) is not None:
        return "opengait"
    return "unknown"


def lightning_architecture(blob: Mapping[str, Any]) -> str:
    """The architecture of our Lightning checkpoint, from its weights' names ('biggait' for older files)."""
    state = blob.get("state_dict") or {}
    for arch, prefixes in _OUR_MARKERS.items():
        if arch != "biggait" and any(k.startswith(f"net.{p}") for k in state for p in prefixes):
            return arch
    return "biggait"


def architecture_of(blob: Mapping[str, Any]) -> str | None:
    """The architecture of a checkpoint dict of either kind; None when it is neither."""
    kind = checkpoint_kind(blob)
    if kind == "lightning":
        return lightning_architecture(blob)
    if kind == "opengait":
        return official_architecture(blob["model"])
    return None


def require_architecture(
    blob: Mapping[str, Any], expected: str, what: str, *, fix: str | None = None
) -> None:
    """One error line when `blob` is a checkpoint of another architecture than the `expected` one; `fix` (may
    name `{found}`, the file's architecture) replaces the default advice."""
    found = architecture_of(blob)
    if found is not None and found != expected:
        advice = (
            fix.format(found=found)
            if fix is not None
            else f"load it with biggait.load_model (which reads both), or pass a {ARCHITECTURES[expected]} checkpoint"
        )
        raise ArchitectureError(
            f"{what} is a {ARCHITECTURES[found]} checkpoint, but this needs a {ARCHITECTURES[expected]} one: {advice}"
        )


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


def _strip(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def mask_branch_tensors(blob: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(what the file is, the mask branch's tensors under branch-local names) of any file holding one: our
    Lightning checkpoint of either architecture (`net.mask_branch.*`; ours names), an official OpenGait BigGait or
    BiggerGait checkpoint (`Mask_Branch.*`) or the authors' `MaskBranch_vits14.pt` (`{'model': {bn_s...}}`)."""
    state = blob.get("state_dict")
    if isinstance(state, dict):
        for prefix in ("net.mask_branch.", f"{_LEGACY_NET_KEY}.mask_branch."):
            found = _strip(state, prefix)
            if found:
                return f"a biggait {ARCHITECTURES[lightning_architecture(blob)]} checkpoint", found
        return None
    model = blob.get("model")
    if not isinstance(model, dict):
        return None
    found = _strip(model, "Mask_Branch.")
    if found:
        return (
            f"an official OpenGait {ARCHITECTURES.get(official_architecture(model) or '', 'model')} checkpoint",
            found,
        )
    if model and all(isinstance(k, str) and k.startswith(_BRANCH_LOCAL) for k in model):
        return "a MaskBranch_vits14.pt-format file", dict(model)
    return None
