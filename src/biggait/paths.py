"""Where the Hydra configs are: the repository's top-level `conf/` in a checkout, else the copy that the
build puts into the installed package (`biggait/conf`, see setup.py); and the name of each process's run log."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["conf_dir", "launch_log_suffix"]

_HERE = Path(__file__).resolve().parent


def conf_dir() -> Path:
    """The config directory holding train.yaml / eval.yaml."""
    for candidate in (_HERE.parent.parent / "conf", _HERE / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"no Hydra configs next to {_HERE}: reinstall biggait (`pip install .` copies conf/ into the package)"
    )


def launch_log_suffix(environ: Mapping[str, str] = os.environ) -> str:
    """The run log's name suffix for this process: "" for global rank 0 or a process started alone,
    `_rank<R>` under torchrun (`RANK`) or srun (`SLURM_PROCID`), `_node<N>` on node N > 0 of a launch by hand
    (`NODE_RANK`), so that the processes of a launch sharing a run directory write separate logs
    (docs/5_multi_gpu.md). Lightning's own per-node processes already differ by job name."""
    if "RANK" in environ:
        rank = environ["RANK"]
    elif int(environ.get("SLURM_NTASKS") or 1) > 1 and "SLURM_PROCID" in environ:
        rank = environ["SLURM_PROCID"]
    else:
        node = environ.get("NODE_RANK", "0")
        return "" if node in ("", "0") else f"_node{node}"
    return "" if rank in ("", "0") else f"_rank{rank}"


# Used by conf/hydra/default.yaml (the job log's file name); resolved when Hydra configures logging.
OmegaConf.register_new_resolver("biggait_log_suffix", lambda: launch_log_suffix(), replace=True)
