"""BigGait and BiggerGait models: DINOv2 backbone, Gait Representation Extractor / HumanSpace convs, GaitBase heads."""

from biggait.models.backbone import (
    BACKBONE_PRESETS,
    DinoV2Backbone,
    interpolate_pos_embed,
    interpolate_pos_embed_hf,
    mid4_indices,
    weights_from_checkpoint,
)
from biggait.models.biggait import BigGait, MaskBranchFileError
from biggait.models.biggergait import BiggerGait
from biggait.models.gaitbase import GaitBaseHead, GaitBaseSingle
from biggait.models.gre import DistillationBranch, black_da, select_foreground

__all__ = [
    "BACKBONE_PRESETS",
    "BigGait",
    "BiggerGait",
    "DinoV2Backbone",
    "DistillationBranch",
    "GaitBaseHead",
    "GaitBaseSingle",
    "MaskBranchFileError",
    "black_da",
    "interpolate_pos_embed",
    "interpolate_pos_embed_hf",
    "mid4_indices",
    "select_foreground",
    "weights_from_checkpoint",
]
