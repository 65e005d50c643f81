"""BiggerGait's frozen mask branch from any file that holds one (`model.net.mask_branch=<path>`, OpenGait
`BiggerGait__DINOv2.init_Mask_Branch`): our BigGait / BiggerGait checkpoints, official BigGait / BiggerGait ones,
the authors' MaskBranch_vits14.pt format; broken and hostile files give one error line and run no code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from biggait.compat.opengait import export_lightning_checkpoint
from biggait.errors import ConfigError
from biggait.models import BigGait, BiggerGait, MaskBranchFileError, weights_from_checkpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OFFICIAL_BIGGAIT = FIXTURES / "official_tiny" / "checkpoint.pt"  # DINOv2 width 32 (tests/fixtures/README.md)
OFFICIAL_BIGGERGAIT = FIXTURES / "official_biggergait" / "checkpoint.pt"  # width 32


def biggergait(mask_branch: str | Path | None, *, width: int = 32) -> BiggerGait:
    return BiggerGait(
        None,
        5,
        backbone_width=width,
        backbone_depth=4,
        backbone_heads=2,
        pretrained="random",
        mask_branch=None if mask_branch is None else str(mask_branch),
        image_size=(112, 56),
        map_size=(32, 16),
        gait_heads=2,
        humanspace_dim=4,
        channels=(8, 16, 32, 64),
        embed_dim=16,
        parts=8,
    )


def official_branch(path: Path) -> dict[str, torch.Tensor]:
    model = torch.load(path, weights_only=True)["model"]
    return {k.removeprefix("Mask_Branch."): v for k, v in model.items() if k.startswith("Mask_Branch.")}


def assert_loaded(model: BiggerGait, official: dict[str, torch.Tensor]) -> None:
    ours = model.mask_branch.state_dict()
    names = {"bn_s.": "bn_in.", "bn_t.": "bn_out.", "down_sampling.": "down.", "up_sampling.": "up."}
    assert len(ours) == len(official)
    for key, value in official.items():
        prefix = next(p for p in names if key.startswith(p))
        assert torch.equal(ours[names[prefix] + key.removeprefix(prefix)], value), key


@pytest.mark.parametrize("source", [OFFICIAL_BIGGAIT, OFFICIAL_BIGGERGAIT], ids=["biggait", "biggergait"])
def test_official_checkpoints_give_their_mask_branch(source: Path) -> None:
    assert_loaded(biggergait(source), official_branch(source))


def test_mask_branch_vits14_format(tmp_path: Path) -> None:
    """MaskBranch_vits14.pt: `{'model': infoDistillation.state_dict()}`, branch-local names."""
    branch = official_branch(OFFICIAL_BIGGAIT)
    path = tmp_path / "MaskBranch_vits14.pt"
    torch.save({"model": branch}, path)
    assert_loaded(biggergait(path), branch)


def test_our_biggait_checkpoint_gives_its_mask_branch(tmp_path: Path) -> None:
    teacher = BigGait("tiny", 5, pretrained="random", image_size=(112, 56), map_size=(32, 16))
    with torch.no_grad():
        for p in teacher.mask_branch.parameters():
            p.normal_()
        teacher.mask_branch.bn_in.running_mean.normal_()
    path = export_lightning_checkpoint(teacher, tmp_path / "biggait.ckpt")
    student = biggergait(path, width=64)
    for key, value in teacher.mask_branch.state_dict().items():
        assert torch.equal(student.mask_branch.state_dict()[key], value), key
    # and a BiggerGait checkpoint of ours passes its frozen branch on
    again = biggergait(export_lightning_checkpoint(student, tmp_path / "biggergait.ckpt"), width=64)
    assert all(torch.equal(a, b) for a, b in zip(again.mask_branch.state_dict().values(), student.mask_branch.state_dict().values(), strict=True))  # fmt: skip


def test_no_mask_branch_says_how_to_get_one() -> None:
    with pytest.raises(
        ConfigError, match=r"needs a pretrained mask branch: pass model\.net\.mask_branch="
    ) as err:
        biggergait(None)
    assert "\n" not in str(err.value) and "MaskBranch_vits14.pt" in str(err.value)
    with weights_from_checkpoint():  # restoring a checkpoint: its own mask branch comes with it, no file read
        biggergait("/nonexistent/mask.pt")


class _RunsCode:
    """Unpickling this calls os.system: the payload of a code-carrying file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _truncated(tmp_path: Path) -> Path:
    data = OFFICIAL_BIGGERGAIT.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    return path


def _saved(tmp_path: Path, obj) -> Path:
    path = tmp_path / "file.pt"
    torch.save(obj, path)
    return path


def _with_branch(tmp_path: Path, edit) -> Path:
    branch = official_branch(OFFICIAL_BIGGAIT)
    edit(branch)
    return _saved(tmp_path, {"model": branch})


BROKEN = {
    "missing": (lambda t: t / "nope.pt", "not found"),
    "a directory": (lambda t: t, "not found"),
    "text": (lambda t: (t / "x.pt").write_text("not a checkpoint\n") and t / "x.pt", "cannot be read"),
    "empty": (lambda t: (t / "e.pt").write_bytes(b"") or t / "e.pt", "cannot be read"),
    "truncated zip": (_truncated, "cannot be read"),
    "a tensor": (lambda t: _saved(t, torch.zeros(3)), "holds a Tensor, not a dict"),
    "no mask branch": (
        lambda t: _saved(t, {"model": {"other.weight": torch.zeros(2)}}),
        "holds no mask branch",
    ),
    "other width": (
        lambda t: _saved(t, {"model": {k: torch.zeros(3) for k in official_branch(OFFICIAL_BIGGAIT)}}),
        "does not fit",
    ),  # fmt: skip
    "missing tensor": (lambda t: _with_branch(t, lambda b: b.pop("up_sampling.bias")), "does not fit"),
    "not a tensor": (
        lambda t: _with_branch(t, lambda b: b.__setitem__("down_sampling.bias", 3)),
        "not tensors",
    ),
    "NaN": (
        lambda t: _with_branch(t, lambda b: b["down_sampling.weight"].fill_(float("nan"))),
        "NaN or infinite",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_files_give_one_error_line(tmp_path: Path, case: str) -> None:
    make, message = BROKEN[case]
    with pytest.raises(MaskBranchFileError, match=message) as err:
        biggergait(make(tmp_path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "wrap", [lambda x: x, lambda x: {"model": {"bn_s.running_mean": x}}], ids=["bare", "inside"]
)
def test_hostile_file_is_refused_unopened(tmp_path: Path, wrap) -> None:
    marker = tmp_path / "pwned"
    path = _saved(tmp_path, wrap(_RunsCode(marker)))
    with pytest.raises(MaskBranchFileError, match="refused unopened") as err:
        biggergait(path)
    assert "\n" not in str(err.value)
    assert not marker.exists(), "unpickling ran the file's code"


def test_the_recipe_stops_with_one_line_without_a_mask_branch(tiny_shards: Path, tmp_path: Path) -> None:
    """`python -m biggait.train` of a BiggerGait recipe without model.net.mask_branch: one line, exit 2."""
    cmd = [
        sys.executable, "-m", "biggait.train", "model=biggergait_tiny", "model.net.mask_branch=null",
        f"data.root={tiny_shards}", "data_prep=none", "logger=none", f"paths.output_dir={tmp_path}",
        f"hydra.run.dir={tmp_path}",
    ]  # fmt: skip
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_MODE": "disabled"}
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "needs a pretrained mask branch" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
