"""Lightning callbacks of the training loop."""

from .feature_maps import FeatureMapLogger

__all__ = ["FeatureMapLogger"]
