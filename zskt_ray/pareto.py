"""Pareto fronts of multi-objective studies: the non-dominated trials, their hypervolume, and
which of them to re-run.

A study with several objectives (``val_acc`` to maximise, ``val_mte`` or a cost to minimise) has
no single best trial. This module answers three questions on a table of objective values (one
row per trial, in trial order; one column per objective, each with a mode ``"max"`` or
``"min"``):

- which trials are *non-dominated* (:func:`pareto_front`);
- how much of the objective space the front covers, and whether the search stopped adding to it
  (:func:`hypervolume`, :func:`hypervolume_history`, against :func:`reference_point`);
- which configurations to re-run when only ``top_k`` may be (:func:`choose_reruns`).

Dominance and hypervolume come from ``moocore`` (the dimension-sweep non-dominance test and the
HV3D+/HV4D+ hypervolume algorithms, by the authors of those algorithms); this module adds the
study conventions around them: mixed directions, trials without values, a reference point fixed
for a whole study, and deterministic ties (the earlier trial wins).

A row with any missing or non-finite value (a failed or pruned trial, a NaN) takes no part: it is
never on the front, adds no volume and is never chosen. Pure numpy + moocore, so the runner and the
report layer can both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import moocore
import numpy as np

__all__ = [
    "MODES",
    "as_values",
    "choose_reruns",
    "extremes",
    "finite_rows",
    "hypervolume",
    "hypervolume_history",
    "pareto_front",
    "reference_point",
]

MODES = ("max", "min")
# Relative tolerance under which two hypervolume contributions count as equal, so that float
# rounding in the sweep does not decide a tie that the earlier trial should win.
_TIE_RTOL = 1e-12


# ----------------------------------------------------------------------------- input


def _maximise(modes: Sequence[str], m: int) -> list[bool]:
    """One flag per objective; ``modes`` must give ``"max"`` or ``"min"`` for each of ``m``."""
    if isinstance(modes, str):
        raise ValueError(
            f"modes must be a sequence of 'max'/'min', one per objective, got {modes!r}"
        )
    modes = list(modes)
    if len(modes) != m:
        raise ValueError(f"{len(modes)} modes for {m} objectives")
    bad = [x for x in modes if x not in MODES]
    if bad:
        raise ValueError(f"mode must be 'max' or 'min', got {bad[0]!r}")
    return [x == "max" for x in modes]


def as_values(rows: Any, n_objectives: int | None = None) -> np.ndarray:
    """Objective values as a float (n, m) array; a row that is ``None`` (a trial without values,
    as Optuna gives for pruned and failed trials) becomes a row of NaN.

    ``n_objectives`` is needed only when every row is ``None`` or there are no rows.
    """
    if isinstance(rows, np.ndarray) and rows.ndim == 2:
        return rows.astype(float, copy=False)
    rows = list(rows)
    widths = {len(r) for r in rows if r is not None}
    if len(widths) > 1:
        raise ValueError(f"rows have different numbers of objectives: {sorted(widths)}")
    m = widths.pop() if widths else n_objectives
    if m is None:
        raise ValueError("no row has values: pass n_objectives")
    if n_objectives is not None and m != n_objectives:
        raise ValueError(f"rows have {m} objectives, expected {n_objectives}")
    out = np.full((len(rows), m), np.nan)
    for i, r in enumerate(rows):
        if r is not None:
            out[i] = [np.nan if v is None else float(v) for v in r]
    return out


def _prepare(values: Any, modes: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
    v = as_values(values, len(modes) if not isinstance(modes, str) else None)
    if v.ndim != 2 or v.shape[1] == 0:
        raise ValueError(f"values must be a table of shape (trials, objectives), got {v.shape}")
    return v, _maximise(modes, v.shape[1])


def finite_rows(values: Any) -> np.ndarray:
    """Boolean mask of the rows whose every value is finite (the trials that take part)."""
    v = as_values(values) if not isinstance(values, np.ndarray) else values.astype(float)
    return np.isfinite(v).all(axis=1) if v.size else np.zeros(len(v), dtype=bool)


# ----------------------------------------------------------------------------- front


def pareto_front(values: Any, modes: Sequence[str]) -> np.ndarray:
    """Indices (ascending) of the non-dominated rows: no other row is at least as good in every
    objective and better in one. Rows with equal values are all on the front when one of them is
    (neither dominates the other)."""
    v, maximise = _prepare(values, modes)
    ok = np.flatnonzero(finite_rows(v))
    if ok.size == 0:
        return ok
    mask = moocore.is_nondominated(v[ok], maximise=maximise, keep_weakly=True)
    return ok[mask]


def _minimised(v: np.ndarray, maximise: list[bool]) -> np.ndarray:
    """Values with maximised objectives negated: smaller is better in every column."""
    return np.where(np.asarray(maximise), -v, v)


def extremes(values: Any, modes: Sequence[str]) -> list[int]:
    """For each objective in order, the front row that is best in it (ties: best in the following
    objectives, then in the earlier ones, then the earlier trial); the same row may be the
    extreme of several objectives, and is listed once, at its first objective."""
    v, maximise = _prepare(values, modes)
    front = pareto_front(v, modes)
    if front.size == 0:
        return []
    w = _minimised(v[front], maximise)
    m = w.shape[1]
    out: list[int] = []
    for i in range(m):
        order = [i, *range(i + 1, m), *range(i)]
        # np.lexsort sorts by the last key first; the row index is the final tie-break.
        keys = [front] + [w[:, j] for j in reversed(order)]
        best = int(front[np.lexsort(keys)[0]])
        if best not in out:
            out.append(best)
    return out


# ----------------------------------------------------------------------------- hypervolume


def reference_point(values: Any, modes: Sequence[str], margin: float = 0.1) -> np.ndarray:
    """The reference point of a study's hypervolume: the front's nadir (its worst value in each
    objective), moved away from the front by ``margin`` times the front's range in that objective.

    Why this point:

    - it is computed once from all of a study's trials and then kept for every prefix, so the
      hypervolume over trials (:func:`hypervolume_history`) can only grow;
    - it is worse than every front point in every objective, so every front point, the extremes
      included, adds volume (a reference at the nadir itself gives the extremes zero volume, and a
      greedy choice by volume would never pick them);
    - it depends on the front only: a dominated outlier (a diverged trial at chance accuracy) does
      not stretch the box until the front's changes vanish from the curve, as the worst observed
      values, or natural bounds such as accuracy 0, would.

    Where an objective's front has a single value, the margin is taken of that value's magnitude
    (of 1 if it is 0). A caller that wants volumes comparable across studies passes its own fixed
    reference to :func:`hypervolume` instead.
    """
    if not (np.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a positive number, got {margin!r}")
    v, maximise = _prepare(values, modes)
    front = pareto_front(v, modes)
    if front.size == 0:
        raise ValueError("no trial has finite values for every objective: no reference point")
    w = _minimised(v[front], maximise)
    nadir, ideal = w.max(axis=0), w.min(axis=0)
    span = nadir - ideal
    span = np.where(span > 0, span, np.where(nadir != 0, np.abs(nadir), 1.0))
    ref = nadir + margin * span
    return np.where(np.asarray(maximise), -ref, ref)


def _check_ref(ref: Any, m: int) -> np.ndarray:
    r = np.asarray(ref, dtype=float).reshape(-1)
    if r.size != m or not np.isfinite(r).all():
        raise ValueError(f"reference point must have {m} finite values, got {ref!r}")
    return r


def hypervolume(values: Any, modes: Sequence[str], ref: Any) -> float:
    """Volume of the objective space dominated by the rows and bounded by ``ref`` (in the
    objectives' own units). Rows that are not strictly better than ``ref`` in every objective add
    nothing; rows with missing values are left out."""
    v, maximise = _prepare(values, modes)
    r = _check_ref(ref, v.shape[1])
    ok = finite_rows(v)
    if not ok.any():
        return 0.0
    return float(moocore.hypervolume(v[ok], ref=r, maximise=maximise))


def hypervolume_history(values: Any, modes: Sequence[str], ref: Any | None = None) -> np.ndarray:
    """Hypervolume of the first 1, 2, ..., n rows (trial order): the study's convergence curve.

    ``ref`` defaults to :func:`reference_point` of all rows, fixed for every prefix, so the curve
    never decreases; a curve that is flat over the last trials says the search stopped finding
    better trade-offs. All zeros when no row has finite values.
    """
    v, maximise = _prepare(values, modes)
    ok = finite_rows(v)
    out = np.zeros(len(v))
    if not ok.any():
        return out
    r = reference_point(v, modes) if ref is None else _check_ref(ref, v.shape[1])
    current = 0.0
    for i in range(len(v)):
        if ok[i]:
            rows = v[: i + 1][ok[: i + 1]]
            # max(): the volume of a growing set cannot shrink; this keeps float rounding of the
            # sweep from making it look as if it did.
            current = max(current, float(moocore.hypervolume(rows, ref=r, maximise=maximise)))
        out[i] = current
    return out


# ----------------------------------------------------------------------------- re-runs


def choose_reruns(
    values: Any, modes: Sequence[str], top_k: int, ref: Any | None = None
) -> list[int]:
    """Up to ``top_k`` front rows to re-run, spread along the front, in the order chosen.

    First the extremes (:func:`extremes`: the best trial for each objective, primary objective
    first), so that "best accuracy" and "best MTE" are always among the re-runs; then, greedily,
    the front row that adds the most hypervolume to those already chosen (ties: the earlier trial).

    Why greedy hypervolume rather than crowding distance: the hypervolume is monotone and
    submodular, so the greedy set's volume is within a factor (1 - 1/e) of the best set of the same
    size that contains the extremes (Optuna's multi-objective TPE splits its trials by the same
    greedy subset selection); it prefers knees of the front (where a small loss in one objective buys much in another) over
    points that are merely far apart; and the order it picks in does not change when an objective
    is rescaled (seconds or hours, accuracy in % or fractions), whereas crowding distance needs a
    normalisation and, beyond two objectives, does not measure how a front is spread.

    Rows with the same values as a row already chosen add no volume and are not chosen: the result
    has at most as many rows as the front has distinct points. ``ref`` defaults to
    :func:`reference_point`.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    v, maximise = _prepare(values, modes)
    front = pareto_front(v, modes)
    if front.size == 0:
        return []
    r = reference_point(v, modes) if ref is None else _check_ref(ref, v.shape[1])
    chosen = extremes(v, modes)[:top_k]
    while len(chosen) < top_k:
        base = hypervolume(v[chosen], modes, r)
        gains = [
            (hypervolume(v[[*chosen, int(i)]], modes, r) - base, int(i))
            for i in front
            if int(i) not in chosen
        ]
        if not gains:
            break
        best = max(g for g, _ in gains)
        if best <= _TIE_RTOL * max(abs(base), 1e-300):
            break  # only duplicates of chosen rows (or rows at the reference) are left
        chosen.append(min(i for g, i in gains if g >= best - _TIE_RTOL * abs(best)))
    return chosen
