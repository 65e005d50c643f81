"""Export the inference model (frames + ratios -> embeddings) to ONNX and to `torch.export` (docs/export.md).

    python -m biggait.export MODEL.ckpt --onnx biggait.onnx --torch-export biggait.pt2 --frame-size 128 64

The exported graph takes what `BigGait.forward` takes: `frames` float32 [n, s, 3, H, W], ImageNet-normalised
(`biggait.preprocess.normalize_frames`), and `ratios` float32 [n, s] (width / height of each original
person crop); it returns `embeddings` float32 [n, E, parts]. The numbers of sequences n and of frames s are
dynamic; the frame size H x W is fixed at export time. The GRE runs in its dense, static-shape form
(`BigGait.static_shapes`), equal to the gather/scatter form in eval mode. A `BiggerGait` exports the same way
(same inputs, its `ratios` unused: it stretches every frame; embeddings [n, E, groups x parts]).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from biggait.checkpoint import load_model
from biggait.errors import BiggaitError, ConfigError, exit_on_error
from biggait.io import atomic_write_bytes, check_writable
from biggait.models import BigGait, BiggerGait

__all__ = [
    "EmbeddingModel",
    "ExportError",
    "check_exported",
    "example_inputs",
    "export_onnx",
    "export_program",
    "export_torch",
    "main",
    "relative_error",
]

INPUT_NAMES = ("frames", "ratios")
OUTPUT_NAME = "embeddings"


class ExportError(BiggaitError, ValueError):
    """A model file that cannot be exported, or an export that does not match the eager model."""


class EmbeddingModel(nn.Module):
    """The inference graph of a `BigGait` or `BiggerGait`: frames [n, s, 3, H, W] + ratios [n, s] -> embeddings [n, E, p]."""

    def __init__(self, model: BigGait | BiggerGait) -> None:
        super().__init__()
        if not getattr(model, "static_shapes", True):  # BiggerGait has no gather/scatter path
            raise ConfigError(
                "export needs the dense GRE path: build the model with static_shapes=True (the default)"
            )
        self.model = model
        self.eval()  # the wrapper too: exporters warn about (and trace) training mode

    def forward(self, frames: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
        return self.model(frames, ratios)["embeddings"]


def example_inputs(
    frame_size: tuple[int, int], *, sequences: int = 2, frames: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normalised frames [sequences, frames, 3, H, W] and ratios in [0.3, 0.6) (a partial valid region)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sequences, frames, 3, *frame_size, generator=g)
    return x, 0.3 + 0.3 * torch.rand(sequences, frames, generator=g)


def _dynamic_shapes() -> dict[str, dict[int, torch.export.Dim]]:
    # example_inputs trace with n, s >= 2: torch.export would specialise a dimension traced at size 1
    n, s = torch.export.Dim("sequences", min=1), torch.export.Dim("frames", min=1)
    return {"frames": {0: n, 1: s}, "ratios": {0: n, 1: s}}


def _frame_size(model: BigGait | BiggerGait, frame_size: Sequence[int] | None) -> tuple[int, int]:
    size = frame_size if frame_size is not None else model.frame_size
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"frame size must be two positive integers H W, got {list(size)}")
    return int(size[0]), int(size[1])


def export_program(
    model: BigGait | BiggerGait, *, frame_size: Sequence[int] | None = None
) -> torch.export.ExportedProgram:
    """`torch.export` of `EmbeddingModel(model)` with dynamic n and s, static frame size."""
    wrapper = EmbeddingModel(model)
    args = example_inputs(_frame_size(model, frame_size))
    with torch.no_grad():
        return torch.export.export(wrapper, args, dynamic_shapes=_dynamic_shapes())


def export_torch(
    model: BigGait | BiggerGait,
    out: str | os.PathLike,
    *,
    frame_size: Sequence[int] | None = None,
    verify: Callable[[Path], object] | None = None,
) -> Path:
    """Write a `torch.export` program (`.pt2`, load with `torch.export.load`) atomically; returns the path.
    `verify(temporary path)` checks the complete file before it replaces `out` (a failed check leaves `out`)."""
    buffer = io.BytesIO()
    torch.export.save(export_program(model, frame_size=frame_size), buffer)
    return atomic_write_bytes(out, buffer.getvalue(), verify=verify)


def _needs_export_extras(exc: ImportError) -> ExportError:
    return ExportError(
        f"ONNX export needs the export extras ({exc.name or exc}): pip install 'biggait[export]' "
        "(onnx, onnxscript, onnxruntime; docs/export.md)"
    )


def export_onnx(
    model: BigGait | BiggerGait,
    out: str | os.PathLike,
    *,
    frame_size: Sequence[int] | None = None,
    verify: Callable[[Path], object] | None = None,
) -> Path:
    """Write an ONNX model (inputs `frames`, `ratios`; output `embeddings`) atomically, after `verify`;
    returns the path.

    Uses the torch.export-based ONNX exporter (`dynamo=True`, needs onnxscript: `pip install biggait[export]`).
    """
    try:
        import onnxscript  # noqa: F401  (torch.onnx.export(dynamo=True) imports it deep inside)
    except ImportError as exc:
        raise _needs_export_extras(exc) from None
    wrapper = EmbeddingModel(model)
    args = example_inputs(_frame_size(model, frame_size))
    with torch.no_grad(), warnings.catch_warnings():
        # n and s share their constraints across the two inputs: the exporter names each axis once
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape")
        program = torch.onnx.export(
            wrapper,
            args,
            dynamo=True,
            dynamic_shapes=_dynamic_shapes(),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            verbose=False,
        )
    return atomic_write_bytes(out, program.model_proto.SerializeToString(), verify=verify)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """|got - want| / |want| (Frobenius norms, in float64)."""
    got, want = torch.as_tensor(got).double(), want.double()
    return float((got - want).norm() / want.norm().clamp(min=1e-30))


def check_exported(
    model: BigGait | BiggerGait,
    *,
    onnx_path: str | os.PathLike | None = None,
    torch_path: str | os.PathLike | None = None,
    frame_size: Sequence[int] | None = None,
    sequences: int = 3,
    frames: int = 5,
    tolerance: float = 1e-4,
) -> dict[str, float]:
    """Run the exported files and the eager model on the same random inputs (other n, s than at export time).

    Returns the relative error of each; raises `ExportError` when one exceeds `tolerance`.
    """
    x, r = example_inputs(_frame_size(model, frame_size), sequences=sequences, frames=frames, seed=1)
    with torch.no_grad():
        want = EmbeddingModel(model)(x, r)
    errors: dict[str, float] = {}
    if torch_path is not None:
        program = torch.export.load(str(torch_path))
        with torch.no_grad():
            errors["torch.export"] = relative_error(program.module()(x, r), want)
    if onnx_path is not None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise _needs_export_extras(exc) from None

        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = session.run([OUTPUT_NAME], {"frames": x.numpy(), "ratios": r.numpy()})[0]
        errors["onnx"] = relative_error(torch.from_numpy(got), want)
    bad = {k: v for k, v in errors.items() if not v <= tolerance}
    if bad:
        raise ExportError(f"exported model differs from eager: relative errors {bad} > {tolerance}")
    return errors


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m biggait.export") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Export a trained BigGait (frames + ratios -> embeddings) to ONNX and/or torch.export, "
        "then check each file against the eager model (docs/export.md).",
    )
    p.add_argument(
        "model",
        type=Path,
        help="a model file: our Lightning .ckpt (e.g. from `make train`), a converted or an official OpenGait .pt",
    )
    p.add_argument("--onnx", type=Path, metavar="OUT.onnx", help="write an ONNX model here")
    p.add_argument("--torch-export", type=Path, metavar="OUT.pt2", help="write a torch.export program here")
    p.add_argument(
        "--frame-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input frame size the model was trained on (256 128 for CCPG, 128 64 for the synthetic world); "
        "default: the size the checkpoint records",
    )
    p.add_argument("--tolerance", type=float, default=1e-4, help="max relative error against eager (1e-4)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    with exit_on_error():
        if args.onnx is None and args.torch_export is None:
            raise ConfigError("nothing to write: pass --onnx OUT.onnx and/or --torch-export OUT.pt2")
        if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
            raise ConfigError(f"--tolerance must be a finite relative error >= 0, got {args.tolerance}")
        for flag, out in (("--torch-export", args.torch_export), ("--onnx", args.onnx)):
            if out is not None:
                check_writable(out, flag)
        overrides = {} if args.frame_size is None else {"frame_size": tuple(args.frame_size)}
        model = load_model(args.model, **overrides)
        size = _frame_size(model, None)
        errors: dict[str, float] = {}

        def verify(kind: str):  # each file is checked as a temporary file, and replaces OUT only if it passes
            key = "torch_path" if kind == "torch.export" else "onnx_path"
            return lambda tmp: errors.update(
                check_exported(model, frame_size=size, tolerance=args.tolerance, **{key: tmp})
            )

        if args.torch_export is not None:
            export_torch(model, args.torch_export, frame_size=size, verify=verify("torch.export"))
            print(f"wrote {args.torch_export}")
        if args.onnx is not None:
            export_onnx(model, args.onnx, frame_size=size, verify=verify("onnx"))
            print(f"wrote {args.onnx}")
        for name, err in errors.items():
            print(f"{name}: relative error against eager {err:.2e} (<= {args.tolerance:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
