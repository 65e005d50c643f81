"""Look inside BigGait and BiggerGait: PCA / part colourings of the feature maps, foreground IoU and figure panels."""

from biggait.evaluation.foreground import foreground_iou, silhouettes_to_map
from biggait.viz.groups import group_maps, group_panel
from biggait.viz.io import figure_png, read_labels, read_sequences, records_to_batch, save_png
from biggait.viz.maps import (
    PART_PALETTE,
    PCABasis,
    VizInputError,
    denormalize_frames,
    fit_pca,
    part_colors,
    pca_rgb,
    resize_mask,
)
from biggait.viz.panels import (
    MAP_KEYS,
    PanelSequence,
    comparison_indices,
    comparison_panel,
    frame_indices,
    panel_sequences,
    select_sequence,
    sequence_panel,
)

__all__ = [
    "MAP_KEYS",
    "PART_PALETTE",
    "PCABasis",
    "PanelSequence",
    "VizInputError",
    "comparison_indices",
    "comparison_panel",
    "denormalize_frames",
    "figure_png",
    "fit_pca",
    "foreground_iou",
    "frame_indices",
    "group_maps",
    "group_panel",
    "panel_sequences",
    "part_colors",
    "pca_rgb",
    "read_labels",
    "read_sequences",
    "records_to_batch",
    "resize_mask",
    "save_png",
    "select_sequence",
    "sequence_panel",
    "silhouettes_to_map",
]
