"""Lightning callbacks of the training loop: each owns one concern."""

from biggait.callbacks.checkpoint import AtomicCheckpointIO, StepCheckpoint
from biggait.callbacks.feature_maps import FeatureMapLogger
from biggait.callbacks.gallery_writer import GalleryWriter
from biggait.callbacks.mask_schedule import MaskBranchSchedule
from biggait.callbacks.report import EvaluationReport
from biggait.callbacks.throughput import TrainThroughput

__all__ = [
    "AtomicCheckpointIO",
    "EvaluationReport",
    "FeatureMapLogger",
    "GalleryWriter",
    "MaskBranchSchedule",
    "StepCheckpoint",
    "TrainThroughput",
]
