"""Gait retrieval evaluation: OpenGait's protocols (OpenGait `opengait/evaluation/evaluator.py`) with bounded memory."""

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
