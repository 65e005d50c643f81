"""A torchmetrics Metric that gathers embeddings (and their string labels) across ranks for `evaluate`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from biggait.evaluation.protocols import PROTOCOLS, EvaluationResult, ProtocolError, evaluate_detailed

__all__ = ["GaitRetrievalMetric"]

_STR_BYTES = 64  # subjects, types and views travel as fixed-width UTF-8 byte rows


def _encode(strings: Sequence[str], device: torch.device) -> torch.Tensor:
    rows = torch.zeros(len(strings), _STR_BYTES, dtype=torch.uint8)
    for i, s in enumerate(strings):
        data = str(s).encode()
        if len(data) > _STR_BYTES:
            raise ProtocolError(f"label {s!r} is longer than {_STR_BYTES} bytes; shorten the dataset's names")
        rows[i, : len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return rows.to(device)


def _decode(rows: torch.Tensor) -> list[str]:
    return [bytes(r[r > 0].tolist()).decode() for r in rows.cpu()]


class GaitRetrievalMetric(Metric):
    """Collects [n, C, P] embeddings with subjects/types/views on every rank; `compute` runs the protocol.

    Strings are stored as byte tensors (states must be tensors, and per-rank vocabularies would not
    agree after the gather), concatenated across ranks by torchmetrics (`dist_reduce_fx="cat"`).
    `result` holds the last `compute()`'s `EvaluationResult`, also after `reset()` (which frees the gathered
    embeddings): the report callback reads the matrices and counts behind the logged numbers there.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, protocol: str, **kwargs) -> None:
        super().__init__(**kwargs)
        if protocol not in PROTOCOLS:
            raise ProtocolError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
        self.protocol = protocol
        for name in ("embeddings", "subjects", "types", "views"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.add_state("skipped", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        # Set by the caller before compute(): the sequences the whole test set holds (its manifest), and why
        # this evaluation reads only part of it (e.g. ["limit_test_batches=10"]).
        self.expected_sequences: int | None = None
        self.limits: list[str] = []
        self.result: EvaluationResult | None = None

    def update(
        self,
        embeddings: torch.Tensor,
        subjects: Sequence[str],
        types: Sequence[str],
        views: Sequence[str],
        skipped: int | torch.Tensor = 0,
    ) -> None:
        """Add a batch of embeddings; `skipped` = sequences the data stream skipped as bad since the last batch."""
        n = embeddings.shape[0]
        if not (len(subjects) == len(types) == len(views) == n):
            raise ProtocolError(
                f"update got {n} embeddings but {len(subjects)} subjects, {len(types)} types, {len(views)} views"
            )
        self.embeddings.append(embeddings.detach().float())
        self.subjects.append(_encode(subjects, embeddings.device))
        self.types.append(_encode(types, embeddings.device))
        self.views.append(_encode(views, embeddings.device))
        self.skipped += torch.as_tensor(skipped, dtype=torch.int64, device=self.skipped.device).sum()

    def compute(self) -> EvaluationResult:
        if isinstance(self.embeddings, list) and not self.embeddings:
            raise ProtocolError(
                "GaitRetrievalMetric.compute() before any update: the evaluation set was empty"
            )
        embeddings = dim_zero_cat(self.embeddings)
        n, expected, skipped = int(embeddings.shape[0]), self.expected_sequences, int(self.skipped)
        partial = list(self.limits)
        if skipped:
            partial.append(f"{skipped} sequence(s) skipped as bad data")
        if expected is not None and n < expected:
            partial.append(f"{n} of {expected} sequences evaluated")
        if expected is not None and n + skipped > expected:
            # More than the test set holds: a sequence was scored twice (e.g. read by two ranks or nodes), which
            # would silently change the numbers.
            raise ProtocolError(
                f"{n} sequences evaluated and {skipped} skipped, but the test set holds {expected}: some were "
                "read twice (a data-reader bug across ranks or nodes, docs/5_multi_gpu.md); the numbers would be wrong"
            )
        result = evaluate_detailed(
            self.protocol,
            embeddings,
            _decode(dim_zero_cat(self.subjects)),
            _decode(dim_zero_cat(self.types)),
            _decode(dim_zero_cat(self.views)),
            partial=partial,
        )
        result.counts.update(sequences_expected=expected, sequences_skipped=skipped)
        self.result = result
        return result
