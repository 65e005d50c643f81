"""Typos in Hydra command-line overrides as one line with a suggestion (issue #22).

Hydra answers `experiment=biggait_cppg` with ten lines listing every experiment file, and `model.net.backbon=x`
with a `+model.net.backbon=x` hint that leads to a constructor error. `check_overrides` looks at the overrides
before Hydra does: an unknown option of a config group or an unknown key is one `ConfigError` naming the
closest valid choice.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from biggait.errors import ConfigError
from biggait.paths import conf_dir

__all__ = ["check_overrides"]


def _closest(word: str, choices: Sequence[str]) -> str:
    match = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {match[0]!r}? " if match else ""


def _check_group(group: str, name: str) -> bool:
    """True for `group=name` of an existing config group; an unknown name is a `ConfigError`."""
    folder = conf_dir() / group
    if "." in group or "/" in group or not folder.is_dir():
        return False
    choices = sorted(p.stem for p in folder.glob("*.yaml"))
    if name not in choices and name != "null":
        raise ConfigError(
            f"{group}={name}: no such {group}; {_closest(name, choices)}choose one of {choices}"
        )
    return True


def _check_key(cfg: DictConfig, key: str) -> None:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, throw_on_missing=False) if parent_key else cfg
    if not isinstance(parent, DictConfig):
        head = key.split(".")[0]
        hint = _closest(head, [str(k) for k in cfg]).strip()
        raise ConfigError(
            f"{key}: there is no {parent_key!r} in the configuration" + (f"; {hint}" if hint else "")
        )
    keys = [str(k) for k in parent]  # not `leaf in parent`: that is False for a key whose value is null
    if leaf not in keys:
        raise ConfigError(
            f"{key}: {parent_key or 'the configuration'} has no option {leaf!r}; {_closest(leaf, keys)}"
            f"its options are {sorted(keys)} (an option the config does not list: +{key}=...)"
        )


def check_overrides(config_name: str, overrides: Sequence[str]) -> None:
    """Refuse an unknown group choice (`experiment=...`, `data=...`) or an unknown key (`model.net.x=...`) of
    the `config_name` app; `+key=`, `~key`, `hydra.*` and anything Hydra's parser would reject are left to
    Hydra."""
    from hydra import compose, initialize_config_dir

    plain = [o for o in overrides if "=" in o and not o.startswith(("+", "~", "-", "hydra.", "hydra/"))]
    groups = [o for o in plain if _check_group(*o.split("=", 1))]
    keys = [o.split("=", 1)[0] for o in plain if o not in groups]
    if not keys:
        return
    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir()), job_name="check"):
        try:
            cfg = compose(config_name, overrides=[*groups, *(o for o in overrides if o.startswith("+"))])
        except Exception:  # noqa: BLE001 - any other problem is Hydra's to explain
            return
    for key in keys:
        _check_key(cfg, key)
