"""Gait retrieval evaluation: OpenGait's protocols (spec §8) with bounded memory."""

from .distance import part_euclidean
from .metric import GaitRetrievalMetric
from .protocols import PROTOCOLS, EvaluationResult, ProtocolError, evaluate, evaluate_detailed

__all__ = [
    "PROTOCOLS",
    "EvaluationResult",
    "GaitRetrievalMetric",
    "ProtocolError",
    "evaluate",
    "evaluate_detailed",
    "part_euclidean",
]
