"""The `biggait` console script: `biggait embed|identify|gallery|index|calibrate|annotate|track|train|eval|data|import-opengait|export ...`.

Each subcommand is the module of the same job (`python -m biggait.embed`, ...), with the same options.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

# subcommand -> (module, what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "embed": ("biggait.embed", "embed footage with a trained model into a gallery file"),
    "identify": (
        "biggait.identify",
        "name the people of every probe (top-k, open-set threshold/margin, --score)",
    ),
    "gallery": ("biggait.gallery_cli", "maintain a gallery: enrol | remove | list | merge"),
    "index": ("biggait.index", "a gallery past memory: memory-mapped folder + FAISS index for identify"),
    "calibrate": ("biggait.calibrate", "pick the open-set threshold and margin for a target FAR"),
    "annotate": (
        "biggait.annotate",
        "annotated video, MOT file with identities and contact sheet of a scene",
    ),
    "track": (
        "biggait.tracking",
        "MOTChallenge tracks of people walking before a static camera (no weights)",
    ),
    "train": ("biggait.train", "train and evaluate (Hydra overrides, e.g. experiment=synthetic)"),
    "eval": ("biggait.eval", "evaluate a checkpoint (Hydra overrides, e.g. ckpt_path=...)"),
    "data": ("biggait.data_prep", "build shards: biggait data <dataset> --out DIR [--raw DIR]"),
    "import-opengait": ("biggait.compat.opengait", "convert an official OpenGait checkpoint to a .ckpt"),
    "export": ("biggait.export", "export a model to ONNX / torch.export (pip install 'biggait[export]')"),
}
_HYDRA = {"train", "eval"}  # Hydra apps read sys.argv themselves


def _usage() -> str:
    lines = ["usage: biggait COMMAND [options]   (biggait COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<16} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    if command in _HYDRA:
        from biggait.errors import exit_on_error
        from biggait.overrides import check_overrides

        with exit_on_error():
            check_overrides(command, rest)
        sys.argv = [f"biggait {command}", *rest]
        module.main()
        return 0
    if "prog" in inspect.signature(module.main).parameters:  # `biggait embed --help` says `biggait embed`
        return int(module.main(rest, prog=f"biggait {command}") or 0)
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
