"""Gait retrieval evaluation: OpenGait's protocols (OpenGait `opengait/evaluation/evaluator.py`) with bounded memory."""

from biggait.evaluation.distance import part_euclidean
from biggait.evaluation.metric import GaitRetrievalMetric
from biggait.evaluation.protocols import (
    PROTOCOLS,
    EvaluationResult,
    ProtocolError,
    evaluate,
    evaluate_detailed,
)

__all__ = [
    "PROTOCOLS",
    "EvaluationResult",
    "GaitRetrievalMetric",
    "ProtocolError",
    "evaluate",
    "evaluate_detailed",
    "part_euclidean",
]
