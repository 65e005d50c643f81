"""Where the Hydra configs are: the repository's top-level `conf/` in a checkout, else the copy that the
build puts into the installed package (`biggait/conf`, see setup.py)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["conf_dir"]

_HERE = Path(__file__).resolve().parent


def conf_dir() -> Path:
    """The config directory holding train.yaml / eval.yaml."""
    for candidate in (_HERE.parent.parent / "conf", _HERE / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"no Hydra configs next to {_HERE}: reinstall biggait (`pip install .` copies conf/ into the package)"
    )
