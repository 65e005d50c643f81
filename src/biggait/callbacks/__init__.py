"""Lightning callbacks of the training loop: each owns one concern."""

from biggait.callbacks.feature_maps import FeatureMapLogger
from biggait.callbacks.mask_schedule import MaskBranchSchedule
from biggait.callbacks.report import EvaluationReport
from biggait.callbacks.throughput import TrainThroughput

__all__ = ["EvaluationReport", "FeatureMapLogger", "MaskBranchSchedule", "TrainThroughput"]
