"""What a trial reports, how a finished trial is classified, and how trials are labelled.

The trainable adds these keys to every ``tune.report``; the searcher (Optuna) and the tracker
(MLflow) read them back to decide, in one shared way, whether a trial completed, was pruned by the
scheduler, or failed. The labels of the final re-runs and baseline runs (``final-<rank>-seed<seed>``,
``kdat-seed<seed>``) are built and read here only. No Ray, Optuna or MLflow here.
"""

from __future__ import annotations

import dataclasses
import re
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
        return FAILED, str(result.get(REASON) or FAILED)
    if status == COMPLETED:
        return COMPLETED, ""
    if not result:
        return PRUNED, "stopped before its first report"
    it, budget = result.get(ITERATION), result.get(BUDGET)
    return PRUNED, f"stopped by the scheduler at iteration {it} of {budget}"


def worst_value(mode: str) -> float:
    """The objective's value of a trial that has none (it failed, or ended before reporting it):
    worse than anything a trial can reach in direction ``mode`` (``"max"`` or ``"min"``)."""
    return 0.0 if mode == "max" else 1e30


# ------------------------------------------------------------------ trial labels


@dataclasses.dataclass(frozen=True)
class TrialLabel:
    """What the label of a final re-run or baseline run says."""

    kind: str
    rank: int | None  # rank of the configuration a final re-run repeats (0 = best)
    seed: int


_LABELS = {
    KIND_FINAL: re.compile(rf"{KIND_FINAL}-(?P<rank>\d+)-seed(?P<seed>-?\d+)"),
    KIND_KDAT: re.compile(rf"{KIND_KDAT}-seed(?P<seed>-?\d+)"),
}


def trial_label(kind: str, rank: int | None = None, seed: int | None = None) -> str:
    """Trial id of a final re-run or a baseline run (search trials use Tune's trial id)."""
    if kind == KIND_FINAL:
        return f"{KIND_FINAL}-{rank}-seed{seed}"
    if kind == KIND_KDAT:
        return f"{KIND_KDAT}-seed{seed}"
    raise ValueError(f"no label for kind {kind!r}")


def parse_trial_label(label: str | None) -> TrialLabel | None:
    """The kind, rank and seed of a label made by :func:`trial_label`; None for any other id."""
    for kind, pattern in _LABELS.items():
        m = pattern.fullmatch(label or "")
        if m:
            rank = m.groupdict().get("rank")
            return TrialLabel(kind, int(rank) if rank is not None else None, int(m["seed"]))
    return None


def final_rank(label: str | None) -> int | None:
    """The configuration rank of a final re-run's label (``final-2-seed1`` -> 2), else None."""
    parsed = parse_trial_label(label)
    return parsed.rank if parsed is not None and parsed.kind == KIND_FINAL else None
