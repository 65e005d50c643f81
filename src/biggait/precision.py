"""`precision=auto`: the lowest precision the hardware runs fast, and why it was picked.

On a CPU, bf16 pays off only with bf16 dot-product units (AMX or AVX-512 BF16); without them oneDNN emulates
bf16 and it is several times slower than fp32. On a GPU, bf16 needs compute capability 8.0 (Ampere) or newer;
older GPUs get fp16 autocast with a loss scaler, which is what the official OpenGait run uses
(`enable_float16: true` in `configs/biggait/BigGait_CCPG.yaml`, applied by
`opengait/modeling/base_model.py`, `BaseModel.train_step` / `BaseModel.inference`). Where "auto" picks a
low precision it also keeps evaluation's numbers: the GRE and GaitBase evaluate and embed in fp32
(`BigGait(eval_precision="fp32")`), only the frozen backbone, ~90 % of the FLOPs, runs in bf16 / fp16.
docs/performance.md has the measurements.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "CPU_BF16_FLAGS",
    "PRECISION_ALIASES",
    "PrecisionChoice",
    "describe_precision_on",
    "autocast_dtype",
    "choose_precision",
    "cpu_flags",
    "describe_precision",
    "resolve_precision",
]

log = logging.getLogger(__name__)

# /proc/cpuinfo flags of units that execute bf16 dot products natively
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# short names accepted next to Lightning's precision strings
PRECISION_ALIASES = {
    "fp32": "32-true",
    "32": "32-true",
    "bf16": "bf16-mixed",
    "fp16": "16-mixed",
    "16": "16-mixed",
}
_AUTOCAST = {
    "bf16-mixed": torch.bfloat16,
    "bf16-true": torch.bfloat16,
    "16-mixed": torch.float16,
    "16-true": torch.float16,
    "32-true": None,
    "64-true": None,
}


@dataclass(frozen=True)
class PrecisionChoice:
    """A Lightning precision string, the reason it was chosen, and the GRE + GaitBase precision in evaluation."""

    precision: str
    reason: str
    eval_precision: str | None = None  # "fp32": BigGait(eval_precision="fp32"); None: follow `precision`

    def __str__(self) -> str:
        text = f"{self.precision} ({self.reason})"
        if self.eval_precision is not None:
            text += f"; evaluation: GRE + GaitBase in {self.eval_precision}, the frozen backbone in the low precision"
        return text


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU feature flags of the first processor in `cpuinfo`, or None where that file does not exist."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def choose_precision(
    accelerator: str, *, flags: Iterable[str] | None = None, capability: tuple[int, int] | None = None
) -> PrecisionChoice:
    """What `precision=auto` picks for a CPU with these `flags` or a CUDA GPU of this `capability`."""
    if accelerator == "cpu":
        if flags is None:
            return PrecisionChoice("32-true", "CPU flags unknown (no /proc/cpuinfo): fp32")
        have = [f for f in CPU_BF16_FLAGS if f in set(flags)]
        if have:
            return PrecisionChoice("bf16-mixed", f"CPU has bf16 units ({', '.join(have)})", "fp32")
        return PrecisionChoice("32-true", "CPU has no bf16 units (neither amx_bf16 nor avx512_bf16): fp32")
    if accelerator in ("gpu", "cuda"):
        if capability is None:
            raise ValueError("choose_precision(accelerator='gpu') needs the CUDA compute capability")
        name = f"compute capability {capability[0]}.{capability[1]}"
        if tuple(capability) >= (8, 0):
            return PrecisionChoice("bf16-mixed", f"GPU {name} has bf16 tensor cores", "fp32")
        return PrecisionChoice("16-mixed", f"GPU {name} has no bf16: fp16 autocast + loss scaling", "fp32")
    return PrecisionChoice("32-true", f"accelerator {accelerator!r}: fp32")


def _accelerator(accelerator: str) -> str:
    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return "gpu" if accelerator == "cuda" else accelerator


def describe_precision(requested: str, *, accelerator: str = "auto") -> PrecisionChoice:
    """The precision that `requested` means on this machine's `accelerator`, with the reason (for logs)."""
    requested = str(requested)
    if requested != "auto":
        precision = PRECISION_ALIASES.get(requested, requested)
        return PrecisionChoice(precision, "requested")
    kind = _accelerator(accelerator)
    if kind == "gpu":
        if not torch.cuda.is_available():
            return PrecisionChoice("32-true", "accelerator gpu requested but CUDA is unavailable: fp32")
        return choose_precision("gpu", capability=torch.cuda.get_device_capability())
    return choose_precision(kind, flags=cpu_flags() if kind == "cpu" else None)


def describe_precision_on(requested: str, device: torch.device) -> PrecisionChoice:
    """`describe_precision` for the accelerator of `device` (cuda -> gpu, cpu -> cpu)."""
    return describe_precision(requested, accelerator="gpu" if device.type == "cuda" else device.type)


def resolve_precision(requested: str, *, accelerator: str = "auto") -> str:
    """`requested` ("auto", a Lightning precision string or fp32/bf16/fp16) -> a Lightning precision string.

    "auto" picks bf16-mixed on CPUs with AMX / AVX-512 BF16 and on GPUs with compute capability >= 8.0,
    16-mixed on older GPUs and 32-true elsewhere, and logs the choice and the reason.
    """
    choice = describe_precision(requested, accelerator=accelerator)
    if str(requested) == "auto":
        log.info("precision=auto -> %s", choice)
    return choice.precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision string (or alias): bf16, fp16, or None for fp32."""
    precision = PRECISION_ALIASES.get(str(precision), str(precision))
    if precision not in _AUTOCAST:
        raise ValueError(
            f"unknown precision {precision!r}: use auto, fp32, bf16, fp16 or one of {sorted(_AUTOCAST)}"
        )
    return _AUTOCAST[precision]
