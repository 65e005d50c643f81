"""Run notebooks/feature_maps.py headless on any checkpoint and save its figures: `make notebook` (docs/6_visualisation.md).

    python scripts/run_notebook.py [--checkpoint last.ckpt] [--sequence subject/type/view] [--out outputs/notebook]
                                   [--shards data/synthetic] [--split test] [--protocol ccpg] [--max-frames 8]

The parameters go into a cell after the notebook's `parameters` cell (papermill's convention), the notebook is
executed by nbclient in a kernel of this Python, and the folder gets every figure as PNG plus the executed
notebook (feature_maps.ipynb, with its outputs). Without a checkpoint the notebook shows the tiny random model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "feature_maps.py"
KERNEL = "biggait-headless"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="a training .ckpt (none: tiny random model)")
    p.add_argument("--sequence", default=None, help="subject/type/view of the split for the first panel")
    p.add_argument("--out", type=Path, default=Path("outputs/notebook"), help="folder for the figures")
    p.add_argument("--shards", default=None, help="shard root (the notebook's default: data/synthetic)")
    p.add_argument("--split", default=None)
    p.add_argument("--protocol", default=None)
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    return p.parse_args(argv)


def parameters(args: argparse.Namespace) -> dict[str, object]:
    """The notebook parameters to set: only those given, paths made absolute (the kernel may start elsewhere)."""
    values: dict[str, object] = {"FIGURES": str(args.out.resolve())}
    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            raise SystemExit(
                f"error: checkpoint not found: {args.checkpoint} (pass CKPT=<a .ckpt of make train>)"
            )
        values["CHECKPOINT"] = str(args.checkpoint.resolve())
    for key, value in (
        ("SEQUENCE", args.sequence),
        ("SHARDS", args.shards and str(Path(args.shards).resolve())),
        ("SPLIT", args.split),
        ("PROTOCOL", args.protocol),
        ("MAX_FRAMES", args.max_frames),
    ):
        if value is not None:
            values[key] = value
    return values


def with_parameters(nb, values: dict[str, object]):
    """The notebook with an `injected-parameters` cell after its `parameters` cell."""
    import nbformat

    index = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), None)
    if index is None:
        raise SystemExit(f"error: {NOTEBOOK} has no cell tagged 'parameters'")
    source = "# Parameters set by scripts/run_notebook.py\n" + "".join(
        f"{k} = {v!r}\n" for k, v in values.items()
    )
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)
    return nb


@contextmanager
def kernel_of_this_python():
    """A kernelspec running this interpreter (so the notebook sees this venv), found first via JUPYTER_PATH."""
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "MPLBACKEND")}
    with tempfile.TemporaryDirectory(prefix="biggait-kernel-") as tmp:
        spec_dir = Path(tmp) / "kernels" / KERNEL
        spec_dir.mkdir(parents=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        spec = {"argv": argv, "display_name": "biggait", "language": "python"}
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (tmp, saved["JUPYTER_PATH"]) if p)
        os.environ["MPLBACKEND"] = "Agg"
        try:
            yield KERNEL
        finally:
            for key, value in saved.items():
                os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        import jupytext
        import nbclient
        import nbformat
    except ImportError as exc:
        raise SystemExit(
            f"error: {exc.name} is missing: install the dev extras (pip install -e '.[dev]')"
        ) from exc
    from biggait.io import atomic_write_bytes

    values = parameters(args)
    nb = with_parameters(jupytext.read(NOTEBOOK), values)
    args.out.mkdir(parents=True, exist_ok=True)
    with kernel_of_this_python() as kernel:
        client = nbclient.NotebookClient(
            nb, timeout=args.timeout, kernel_name=kernel, resources={"metadata": {"path": os.getcwd()}}
        )
        try:
            client.execute()
            failed = None
        except nbclient.exceptions.CellExecutionError as exc:
            failed = exc
    executed = args.out / "feature_maps.ipynb"
    atomic_write_bytes(executed, nbformat.writes(nb).encode())
    if failed is not None:
        reason = f"{failed.ename}: {failed.evalue}" if failed.ename else str(failed)
        print(f"error: the notebook stopped: {reason} (the traceback is in {executed})", file=sys.stderr)
        return 1
    figures = sorted(p.name for p in args.out.glob("*.png"))
    print(f"wrote {len(figures)} figures to {args.out}: {', '.join(figures)} (executed notebook: {executed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
