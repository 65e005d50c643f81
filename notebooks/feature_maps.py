# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.18.1
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Look inside BigGait (and BiggerGait)
#
# BigGait turns frozen DINOv2 features into a gait representation with three small branches
# (paper Sec. 3; OpenGait `BigGait.py`): the **mask branch** finds the body without supervision, the **denoising branch** splits it
# into parts that should be the same for every person, and the **appearance branch** keeps what clothing
# cannot hide. This notebook shows those maps for a few sequences so you can check each claim yourself.
#
# Set the parameters below. With `CHECKPOINT = None` nothing is trained: the notebook falls back to the
# **tiny random model** (so it always runs, in well under a minute on a CPU), and generates a tiny set of
# synthetic walkers with ground-truth silhouettes when `SHARDS` does not exist (`make data` builds the
# full synthetic set). Random weights show *what the panels look like*, not what BigGait
# learns; pass the `.ckpt` that `make train` writes (`outputs/.../checkpoints/last.ckpt`) for real maps.
#
# Headless, with the figures saved as PNG files: `make notebook CKPT=last.ckpt SEQUENCE=subject/type/view
# FIGURES=folder` (scripts/run_notebook.py sets the parameters below and keeps the executed notebook there too).

# %% tags=["parameters"]
CHECKPOINT = None  # path to a training .ckpt (BigGait or BiggerGait), or None for the tiny random model
ARCHITECTURE = "biggait"  # the tiny random model's, without a checkpoint: "biggait" or "biggergait"
SHARDS = "data/synthetic"  # shard root holding <SPLIT>/manifest.json (relative to the repository root)
SPLIT = "test"
PROTOCOL = "ccpg"  # evaluation protocol of the dataset (the synthetic set follows CCPG)
MAX_FRAMES = 8  # frames read per sequence (and columns per panel)
SEED = 0
SEQUENCE = (
    None  # "subject/type/view" of SPLIT for the first panel, or None for the first of the comparison trio
)
FIGURES = None  # a folder to also save every figure to as PNG, or None

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Image, display

from biggait import load_model
from biggait.io import atomic_write_bytes
from biggait.models import BiggerGait
from biggait.viz import comparison_panel, figure_png, group_panel, sequence_panel
from biggait.viz.demo import (
    comparison_sequences,
    make_demo_shards,
    named_sequence,
    rank1_heatmaps,
    tiny_random_model,
)


def show(fig, name):
    """Display a matplotlib Figure as a PNG (the same bytes as the saved panels), save it as FIGURES/<name>.png
    when FIGURES is set, then release it."""
    png = figure_png(fig)
    display(Image(png))
    if FIGURES:
        atomic_write_bytes(Path(FIGURES) / f"{name}.png", png)
    plt.close(fig)  # figures made through pyplot would otherwise be shown a second time


def repo_root() -> Path:
    here = Path.cwd().resolve()
    return next((p for p in (here, *here.parents) if (p / "pyproject.toml").is_file()), here)


torch.manual_seed(SEED)
shards = Path(SHARDS) if Path(SHARDS).is_absolute() else repo_root() / SHARDS

# %% [markdown]
# ## Data and model

# %%
if not (shards / SPLIT / "manifest.json").is_file():
    shards = Path(tempfile.mkdtemp(prefix="biggait-demo-")) / "synthetic"
    print(
        f"No shards at {SHARDS!r}: generating a tiny synthetic set in {shards} (make data builds the full one)."
    )
    make_demo_shards(shards, seed=SEED)

if CHECKPOINT:
    model = load_model(CHECKPOINT)
    print(f"Loaded {CHECKPOINT}")
else:
    model = tiny_random_model(seed=SEED, architecture=ARCHITECTURE)
    print(
        f"No checkpoint given: using the tiny RANDOM {type(model).__name__} (untrained, nothing is trained here)."
    )

seqs = comparison_sequences(
    model, shards, split=SPLIT, max_frames=MAX_FRAMES
)  # the trio, from the whole split
print("sequences:", [s.label for s in seqs])
first = named_sequence(model, shards, SEQUENCE, split=SPLIT, max_frames=MAX_FRAMES) if SEQUENCE else seqs[0]
print("first panel:", first.label)

# %% [markdown]
# ## One sequence, map by map
#
# What to look for, row by row:
# * **f_last / f_mid4 PCA**: the backbone features, coloured by their top 3 principal components over the
#   foreground (fitted over all frames jointly, so a colour means the same feature in every frame). A good
#   backbone already separates head, torso and legs here.
# * **mask branch p(foreground)**: the unsupervised body probability. **foreground**: the selected pixels
#   (OpenGait `BigGait__Dinov2_Gaitbase.get_body`, `get_edge`). Where the dataset has silhouettes the overlay is white where both agree, red where only the
#   model fires, cyan where only the ground truth does; the title gives the IoU.
# * **denoising parts**: the argmax of the 16 soft parts, one fixed colour per part. They should be
#   *consistent*: the same colour on the same body region in every frame and for every person.
# * **denoising / appearance PCA**: the two branch outputs; appearance may change with clothes, denoising
#   should not.
#
# A **BiggerGait** (NeurIPS 2025; OpenGait `BiggerGait_DINOv2.py`) has no denoising or appearance branch: every
# backbone layer is normalised jointly, grouped, and each group goes through its own HumanSpace conv. Its panel
# shows the frozen mask branch's p(foreground) and foreground (the same overlay and IoU), then **one row per
# layer group**: the PCA colours of that group's masked HumanSpace maps (one basis per group over all frames),
# shallow layers at the top, so you can compare what each depth carries.

# %% tags=["figure"]
if isinstance(model, BiggerGait):
    show(group_panel([first], num_groups=model.num_groups, frames_per_sequence=MAX_FRAMES,
                     title=first.label), "sequence")  # fmt: skip
else:
    show(sequence_panel(first.frames, first.features, first.silhouettes, ratios=first.ratios,
                        max_frames=MAX_FRAMES, title=first.label), "sequence")  # fmt: skip

# %% [markdown]
# ## Same person in two outfits vs another person
#
# The first two column groups are one person in two clothing conditions, the last is someone else; PCA
# colours are shared across all of them. Maps that stay the same across the first two groups but differ for
# the third carry identity independent of clothing, which is what a gait representation should do.

# %% tags=["figure"]
if isinstance(model, BiggerGait):  # the per-group PCA colours are shared across the three sequences
    show(group_panel(seqs, num_groups=model.num_groups, frames_per_sequence=2), "comparison")
else:
    show(comparison_panel(seqs, frames_per_sequence=2), "comparison")

# %% [markdown]
# ## Rank-1 per view pair
#
# The evaluation draws one heatmap per condition (probe view x gallery view, rank-1 %, the excluded
# same-view diagonal framed). With a checkpoint the notebook shows the heatmaps its training run wrote
# (`<run>/evaluation/`); otherwise it evaluates the model on the split here, on the first `MAX_FRAMES` frames
# of each sequence (for the random model that is chance level: the point is the format).

# %% tags=["figure"]
run_heatmaps = (
    sorted(Path(CHECKPOINT).resolve().parents[1].glob("evaluation/*/rank1_*.png")) if CHECKPOINT else []
)
if run_heatmaps:
    latest = max({p.parent for p in run_heatmaps}, key=lambda d: d.stat().st_mtime)
    print(f"heatmaps of {latest}")
    for path in sorted(latest.glob("rank1_*.png")):
        display(Image(filename=str(path)))
        if FIGURES:
            atomic_write_bytes(Path(FIGURES) / path.name, path.read_bytes())
else:
    label = Path(CHECKPOINT).name if CHECKPOINT else "tiny random model"
    figures = rank1_heatmaps(
        model, shards, split=SPLIT, protocol=PROTOCOL, max_frames=MAX_FRAMES, label=label
    )
    for fig in figures:  # titled "<condition> rank-1 (%) ...": saved as rank1_<condition>.png, as a run does
        show(fig, "rank1_" + fig.axes[0].get_title().split()[0])
