"""What a trial reports, and how a finished trial is classified.

The trainable adds these keys to every ``tune.report``; the searcher (Optuna) and the tracker
(MLflow) read them back to decide, in one shared way, whether a trial completed, was pruned by the
scheduler, or failed. No Ray, Optuna or MLflow here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..names import (
    BUDGET,
    COMPLETED,
    FAILED,
    ITERATION,
    KIND_FINAL,
    KIND_KDAT,
    PRUNED,
    REASON,
    STATUS,
)


def outcome(result: Mapping[str, Any] | None, error: bool = False) -> tuple[str, str]:
    """``(status, reason)`` of a finished trial from its last result.

    A trial that raised is failed; one whose last report says completed/failed is that; any other
    trial ended without reaching its budget, so the scheduler stopped it: pruned.
    """
    result = result or {}
    status = result.get(STATUS)
    if error:
        reason = result.get(REASON) or "the trial raised an error (see the Tune trial log)"
        return FAILED, str(reason)
    if status == FAILED:
        return FAILED, str(result.get(REASON) or "failed")
    if status == COMPLETED:
        return COMPLETED, ""
    if not result:
        return PRUNED, "stopped before its first report"
    it, budget = result.get(ITERATION), result.get(BUDGET)
    return PRUNED, f"stopped by the scheduler at iteration {it} of {budget}"


def trial_label(kind: str, rank: int | None = None, seed: int | None = None) -> str:
    """Trial id of a final re-run or a baseline run (search trials use Tune's trial id)."""
    if kind == KIND_FINAL:
        return f"final-{rank}-seed{seed}"
    if kind == KIND_KDAT:
        return f"kdat-seed{seed}"
    raise ValueError(f"no label for kind {kind!r}")
