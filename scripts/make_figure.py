"""Render docs/synthetic_examples.png: a few identities in several outfits and views (data_prep/README.md).

python scripts/make_figure.py [--out docs/synthetic_examples.png]
"""

from __future__ import annotations

import argparse

import numpy as np

from biggait.data_prep.synthetic import SyntheticConfig, render_sequence
from biggait.viz.io import save_png


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/synthetic_examples.png")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = SyntheticConfig()
    subjects, types = (0, 1, 2), ("U0_D0", "U0_D0_BG", "U2_D2", "U3_D3")
    views = cfg.views
    fig, axes = plt.subplots(len(subjects), len(types) + len(views) + 1, figsize=(14, 6.4))
    for row, subject in enumerate(subjects):
        cells = [(t, 90) for t in types] + [("U0_D0", v) for v in views]
        for col, (seq_type, view) in enumerate(cells):
            rec = render_sequence((subject, seq_type, view, 0), cfg)
            axes[row, col].imshow(rec.frames[10])
            axes[row, col].set_title(f"{rec.subject} {seq_type}\n{rec.view}", fontsize=7)
        rec = render_sequence((subject, "U0_D0", 90, 0), cfg)
        axes[row, -1].imshow(np.asarray(rec.silhouettes[10]), cmap="gray")
        axes[row, -1].set_title("silhouette", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(
        "Synthetic gait world: rows = identities; outfits (side view), then views 30-120 deg (own outfit)"
    )
    fig.tight_layout()
    save_png(fig, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
