"""BigGait (CVPR 2024) in PyTorch Lightning; `biggait.load_model(path)` gives a trained model for inference.

The names below are imported on first use, so `import biggait` stays cheap (no torch until needed).
"""

from __future__ import annotations

from typing import Any

__all__ = ["BigGait", "Gallery", "embed_sequences", "identify", "load_gallery", "load_model"]

_LAZY = {
    "BigGait": "biggait.models",
    "load_model": "biggait.checkpoint",
    "Gallery": "biggait.gallery",
    "load_gallery": "biggait.gallery",
    "embed_sequences": "biggait.inference",
    "identify": "biggait.identify",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'biggait' has no attribute {name!r}")
