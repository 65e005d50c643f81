"""Lightning callbacks of the training loop: each owns one concern."""

from .checkpoint import AtomicCheckpointIO, StepCheckpoint
from .feature_maps import FeatureMapLogger
from .gallery_writer import GalleryWriter
from .mask_schedule import MaskBranchSchedule
from .report import EvaluationReport
from .throughput import TrainThroughput

__all__ = [
    "AtomicCheckpointIO",
    "EvaluationReport",
    "FeatureMapLogger",
    "GalleryWriter",
    "MaskBranchSchedule",
    "StepCheckpoint",
    "TrainThroughput",
]
