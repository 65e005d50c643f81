"""BigGait model: DINOv2 backbone, Gait Representation Extractor, GaitBase head."""

from biggait.models.backbone import (
    BACKBONE_PRESETS,
    DinoV2Backbone,
    interpolate_pos_embed,
    mid4_indices,
    weights_from_checkpoint,
)
from biggait.models.biggait import BigGait, MaskBranchFileError
from biggait.models.gaitbase import GaitBaseHead
from biggait.models.gre import DistillationBranch, black_da, select_foreground

__all__ = [
    "BACKBONE_PRESETS",
    "BigGait",
    "DinoV2Backbone",
    "DistillationBranch",
    "GaitBaseHead",
    "MaskBranchFileError",
    "black_da",
    "interpolate_pos_embed",
    "mid4_indices",
    "select_foreground",
    "weights_from_checkpoint",
]
