"""The pretrained mask branch BiggerGait freezes, read from any file that holds one (OpenGait
`BiggerGait__DINOv2.init_Mask_Branch`; the authors pretrain it with BigGait)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from biggait.compat.names import branch_key_to_ours
from biggait.errors import ConfigError
from biggait.formats import mask_branch_tensors
from biggait.models.backbone import restoring_from_checkpoint
from biggait.models.biggait import MaskBranchFileError
from biggait.models.state import state_diff

__all__ = ["load_mask_branch_state"]


def _read(path: Path, help_text: str) -> dict:
    if not path.is_file():
        raise MaskBranchFileError(f"mask-branch file not found: {path}; {help_text}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():  # torch's weights_only unpickler refused a class or function
            raise MaskBranchFileError(
                f"mask-branch file {path} holds Python objects or code, not only tensors, and was refused "
                f"unopened (weights_only=True); {help_text}"
            ) from None
        raise MaskBranchFileError(
            f"mask-branch file {path} cannot be read (not a PyTorch file); {help_text}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise MaskBranchFileError(f"mask-branch file {path} cannot be read ({first}); {help_text}") from None
    if not isinstance(blob, dict):
        raise MaskBranchFileError(
            f"mask-branch file {path} holds a {type(blob).__name__}, not a dict; {help_text}"
        )
    return blob


def load_mask_branch_state(
    source: str | Path | None, *, module: nn.Module, help_text: str
) -> dict[str, torch.Tensor] | None:
    """The state dict (our names) of the mask branch in `source`, checked against `module`; None for
    `source="random"` or while a checkpoint restores every weight (`weights_from_checkpoint`)."""
    if restoring_from_checkpoint() or str(source) == "random":
        return None
    if source is None or str(source) in ("", "None"):
        raise ConfigError(f"BiggerGait needs a pretrained mask branch: {help_text}")
    path = Path(source)
    found = mask_branch_tensors(_read(path, help_text))
    if found is None:
        raise MaskBranchFileError(
            f"{path} holds no mask branch (not a BigGait checkpoint, ours or official, nor MaskBranch_vits14.pt); "
            f"{help_text}"
        )
    what, tensors = found
    state = {branch_key_to_ours(k): v for k, v in tensors.items()}
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    diff = state_diff(module.state_dict(), {k: v for k, v in state.items() if k not in bad})
    if bad or diff:
        shapes = [f"{k} {given} vs {expected}" for k, given, expected in diff.shapes]
        raise MaskBranchFileError(
            f"{path} ({what}) has a mask branch that does not fit this model's (a backbone of another width?): "
            f"missing {diff.missing}, unexpected {diff.unexpected}, not tensors {bad}, shapes {shapes}"
        )
    if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
        raise MaskBranchFileError(f"{path} ({what}): the mask branch holds NaN or infinite values")
    return state
