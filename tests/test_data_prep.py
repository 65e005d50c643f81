"""`python -m biggait.data_prep`: the explicit dispatch table and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import biggait.data_prep as data_prep
from biggait.errors import ConfigError

BUILDER = textwrap.dedent(
    """
    import json, sys

    def main(argv):
        with open(argv[argv.index("--out") + 1], "w") as f:
            json.dump(list(argv), f)
        return 3
    """
)


@pytest.fixture
def fake_builder(tmp_path, monkeypatch):
    (tmp_path / "fake_builder_mod.py").write_text(BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(data_prep.DATASETS, "fake", "fake_builder_mod")
    return tmp_path / "argv.json"


@pytest.mark.parametrize("style", ["positional", "--dataset", "--dataset="])
def test_dispatch_forwards_the_remaining_arguments(fake_builder, style: str) -> None:
    rest = ["--out", str(fake_builder), "--workers", "2"]
    argv = {
        "positional": ["fake", *rest],
        "--dataset": ["--dataset", "fake", *rest],
        "--dataset=": ["--dataset=fake", *rest],
    }
    assert data_prep.main(argv[style]) == 3
    assert json.loads(fake_builder.read_text()) == rest


def test_unknown_or_missing_names_list_the_choices(monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"unknown dataset 'nope'.*ccpg"):
        data_prep.main(["nope", "--out", "x"])
    with pytest.raises(ConfigError, match="name the dataset"):
        data_prep.main(["--out", "x"])
    monkeypatch.setitem(data_prep.DATASETS, "ghost", "biggait.data_prep.ghost_builder_that_does_not_exist")
    with pytest.raises(ConfigError, match="not part of this installation"):
        data_prep.main(["ghost"])
    assert set(data_prep.DATASETS) >= {"synthetic", "ccpg", "casiab", "sustech1k", "opengait"}


def test_command_line_prints_one_error_line() -> None:
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "biggait.data_prep", "nope"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown dataset 'nope'") and "Traceback" not in proc.stderr
