"""Dataset builders: `python -m biggait.data_prep <name> --out DIR [--raw DIR] [--workers N] [--shard-size N]`."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from biggait.errors import ConfigError

__all__ = ["DATASETS", "main", "split_dataset_arg"]

# Explicit table, no reflection: each module exposes `main(argv) -> int` and `prepare(...)`.
DATASETS: dict[str, str] = {
    "synthetic": "biggait.data_prep.synthetic",
    "ccpg": "biggait.data_prep.ccpg",
    "casiab": "biggait.data_prep.casiab",
    "sustech1k": "biggait.data_prep.sustech1k",
    "opengait": "biggait.data_prep.opengait",
}

USAGE = "usage: python -m biggait.data_prep <name> --out DIR [--raw DIR] [--workers N] [--shard-size N] [...]"


def split_dataset_arg(argv: Sequence[str]) -> tuple[str, list[str]]:
    """The dataset name (positional, or `--dataset NAME` as the Makefile passes it) and the builder's argv."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--dataset":
            if i + 1 >= len(args):
                raise ConfigError(f"--dataset needs a name; choose one of {sorted(DATASETS)}\n{USAGE}")
            return args[i + 1], args[:i] + args[i + 2 :]
        if arg.startswith("--dataset="):
            return arg.split("=", 1)[1], args[:i] + args[i + 1 :]
    if not args or args[0].startswith("-"):
        raise ConfigError(f"name the dataset to build, one of {sorted(DATASETS)}\n{USAGE}")
    return args[0], args[1:]


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to `biggait.data_prep.<name>.main(argv)`; an unknown name lists the choices."""
    argv = sys.argv[1:] if argv is None else argv
    if list(argv) in (["-h"], ["--help"]):
        print(f"{USAGE}\ndatasets: {', '.join(sorted(DATASETS))}; `<name> --help` shows a builder's options")
        return 0
    name, rest = split_dataset_arg(argv)
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    try:
        module = importlib.import_module(DATASETS[name])
    except ModuleNotFoundError as exc:
        if exc.name != DATASETS[name]:
            raise  # a dependency of the builder is missing: keep the real error
        raise ConfigError(
            f"the {name!r} builder ({DATASETS[name]}) is not part of this installation"
        ) from exc
    return int(module.main(rest) or 0)
