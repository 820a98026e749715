"""Search trials compared at a common budget: values per ASHA rung, importances and effects there.

ASHA stops most trials early, so the last value of each trial belongs to a different budget
(iteration 25 for one, 100 for another): comparing those compares budgets, not parameters. Here
every comparison takes the value each trial had at one iteration: an ASHA rung (the first report
at or after the rung, the value ASHA itself judged) or the full search budget. The default view
is the deepest rung that at least ``min_trials`` trials reached; importances and per-parameter
effects are computed from every trial at that rung, whatever became of it later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..names import COMPLETED, KIND_SEARCH
from .load import StudyData

DEFAULT_MIN_TRIALS = 5
MIN_IMPORTANCE_TRIALS = 4  # fewer trials than this: no importances, the report says so


@dataclass(frozen=True)
class Budget:
    """One budget at which search trials are compared."""

    iteration: int
    full: bool  # the search's full budget (completed trials), else an ASHA rung
    n: int  # trials with a value there

    @property
    def label(self) -> str:
        if self.full:
            return f"full budget, iteration {self.iteration}"
        return f"ASHA rung at iteration {self.iteration}"


def rung_values(data: StudyData) -> pd.DataFrame:
    """One row per search trial and budget it reached: the objective at that iteration.

    Columns: ``run_id``, ``trial_id``, ``optuna_number``, ``status``, the searched parameters,
    ``iteration`` (the budget: an ASHA rung or the full budget), ``full`` (True at the full
    budget), ``step`` (the report that gave the value: the first at or after the rung) and
    ``value``. At the full budget only trials that completed it count.
    """
    search = data.runs[data.runs["kind"] == KIND_SEARCH]
    h = data.histories
    h = h[(h["key"] == data.objective) & h["run_id"].isin(search["run_id"])]
    cols = ["run_id", "trial_id", "optuna_number", "status", *data.searched]
    base = search[[c for c in cols if c in search.columns]].copy()
    out_cols = [*base.columns, "iteration", "full", "step", "value"]
    if h.empty or base.empty:
        return pd.DataFrame(columns=out_cols)
    h = h.sort_values(["run_id", "step"], kind="stable")
    frames = []
    budgets = [(r, False) for r in data.rungs]
    if data.budget is not None:
        budgets.append((data.budget, True))
    for it, full in budgets:
        at = h[h["step"] >= it].groupby("run_id", sort=False).head(1)
        if full:  # the full budget: the completed trials' value at it
            done = base.loc[base["status"] == COMPLETED, "run_id"]
            at = at[at["run_id"].isin(done)]
        at = at.assign(iteration=it, full=full)[["run_id", "iteration", "full", "step", "value"]]
        frames.append(base.merge(at, on="run_id", how="inner"))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=out_cols)
    df = df[np.isfinite(pd.to_numeric(df["value"], errors="coerce").astype(float))]
    return df.reset_index(drop=True)[out_cols]


def budgets(table: pd.DataFrame, data: StudyData) -> list[Budget]:
    """The rungs and the full budget, with the number of trials that have a value there."""
    out = []
    for r in data.rungs:
        out.append(Budget(r, False, int((~table["full"] & (table["iteration"] == r)).sum())))
    if data.budget is not None:
        n = int((table["full"] & (table["iteration"] == data.budget)).sum())
        out.append(Budget(data.budget, True, n))
    return out


def default_budget(bs: Sequence[Budget], min_trials: int = DEFAULT_MIN_TRIALS) -> Budget | None:
    """The deepest ASHA rung that at least ``min_trials`` trials reached.

    Without such a rung: the rung most trials reached (the shallowest); without ASHA rungs: the
    full budget.
    """
    rungs = [b for b in bs if not b.full and b.n > 0]
    if not rungs:
        full = [b for b in bs if b.full and b.n > 0]
        return full[0] if full else None
    enough = [b for b in rungs if b.n >= min_trials]
    if enough:
        return max(enough, key=lambda b: b.iteration)
    return max(rungs, key=lambda b: (b.n, -b.iteration))


def at_budget(table: pd.DataFrame, b: Budget) -> pd.DataFrame:
    return table[(table["iteration"] == b.iteration) & (table["full"] == b.full)].reset_index(
        drop=True
    )


# ------------------------------------------------------------------ importances


@dataclass
class Importances:
    values: dict[str, float]  # parameter -> importance (sums to 1), most important first
    n: int  # trials behind them
    method: str
    note: str = ""  # why there are none, when ``values`` is empty


def _distribution(name: str, spec: Mapping[str, Any] | None, values: pd.Series) -> Any:
    """The Optuna distribution of a searched parameter (from study.yaml, else from the values)."""
    import optuna.distributions as od

    spec = spec or {}
    kind = spec.get("type")
    vals = values.dropna()
    if kind == "categorical" or (kind is None and not pd.api.types.is_numeric_dtype(vals)):
        choices = list(spec.get("choices") or sorted(set(vals.tolist()), key=str))
        return od.CategoricalDistribution(choices)
    low = spec.get("low", vals.min() if len(vals) else 0)
    high = spec.get("high", vals.max() if len(vals) else 1)
    log = bool(spec.get("log"))
    if kind == "int" or (kind is None and pd.api.types.is_integer_dtype(vals)):
        step = int(spec.get("step") or 1)
        return od.IntDistribution(int(low), int(high), log=log, step=1 if log else step)
    step = spec.get("step")
    return od.FloatDistribution(
        float(low), float(high), log=log, step=None if log or step is None else float(step)
    )


def _param_value(dist: Any, v: Any) -> Any:
    import optuna.distributions as od

    if isinstance(dist, od.CategoricalDistribution):
        for c in dist.choices:  # the choice equal to the logged value (0 == 0.0, "0" -> 0)
            if c == v or str(c) == str(v):
                return c
        try:
            f = float(v)
            return next(c for c in dist.choices if isinstance(c, int | float) and c == f)
        except (TypeError, ValueError, StopIteration):
            return v
    if isinstance(dist, od.IntDistribution):
        return int(v)
    return float(v)


def importances(
    rows: pd.DataFrame,
    searched: Sequence[str],
    space: Mapping[str, Any],
    mode: str,
    method: str = "fanova",
    seed: int = 0,
) -> Importances:
    """Parameter importances of the values in ``rows`` (one budget), with Optuna's evaluators.

    An in-memory Optuna study is built from the rows (one COMPLETE trial per row: the trial's
    parameters and its value at that budget) and handed to ``get_param_importances`` with fANOVA
    (default) or PED-ANOVA.
    """
    import optuna

    name = "fANOVA" if method == "fanova" else "PED-ANOVA"
    rows = rows.dropna(subset=[p for p in searched if p in rows.columns])
    n = len(rows)
    varying = [p for p in searched if p in rows.columns and rows[p].nunique() > 1]
    if n < MIN_IMPORTANCE_TRIALS:
        return Importances(
            {}, n, name, f"they need at least {MIN_IMPORTANCE_TRIALS} trials and {n} reached it"
        )
    if not varying:
        return Importances({}, n, name, f"no searched parameter varies among the {n} trials")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {p: _distribution(p, space.get(p), rows[p]) for p in varying}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    trials = []
    for _, r in rows.iterrows():
        params = {p: _param_value(dists[p], r[p]) for p in varying}
        trials.append(
            optuna.trial.create_trial(params=params, distributions=dists, value=float(r["value"]))
        )
    study.add_trials(trials)
    if method == "fanova":
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    else:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True)
    except Exception as e:  # noqa: BLE001 - e.g. constant values: a note, not a crash
        return Importances({}, n, name, f"Optuna could not compute them: {str(e).splitlines()[0]}")
    imp = {k: float(v) for k, v in imp.items() if not math.isnan(float(v))}
    return Importances(dict(sorted(imp.items(), key=lambda kv: -kv[1])), n, name)


# ------------------------------------------------------------------ marginal effects


def marginal_effects(
    rows: pd.DataFrame, param: str, log: bool = False, max_bins: int = 5
) -> pd.DataFrame:
    """Mean, population std and count of the values per level of ``param`` (bins when continuous).

    Columns: ``level`` (label), ``x`` (position: the value, or the bin's centre; NaN for
    categories), ``n``, ``mean``, ``std``. Integer or categorical parameters with at most 12
    distinct values (and floats taking a few values, each at least twice) get one level per value;
    others up to ``max_bins`` quantile bins (about 3 trials or more per bin).
    """
    cols = ["level", "x", "n", "mean", "std"]
    r = rows.dropna(subset=[param, "value"])
    if r.empty:
        return pd.DataFrame(columns=cols)
    v = r[param]
    numeric = pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v)
    distinct = v.nunique()
    integer = numeric and pd.api.types.is_integer_dtype(v)
    repeated = numeric and distinct <= 6 and len(r) >= 2 * distinct  # a float grid, e.g. 0.1 / 0.2
    if not numeric or (integer and distinct <= 12) or repeated:
        groups = r.groupby(v.astype(object) if not numeric else v, sort=True)["value"]
        out = [
            {
                "level": f"{k:g}" if isinstance(k, float) else str(k),
                "x": float(k) if numeric else np.nan,
                "n": len(g),
                "mean": float(g.mean()),
                "std": float(g.std(ddof=0)),
            }
            for k, g in groups
        ]
        return pd.DataFrame(out, columns=cols)
    x = np.log10(v.astype(float)) if log else v.astype(float)
    k = int(min(max_bins, max(2, len(r) // 3)))
    bins = pd.qcut(x, q=k, duplicates="drop")
    out = []
    for interval, g in r.groupby(bins, observed=True, sort=True)["value"]:
        lo, hi = float(interval.left), float(interval.right)
        lo_v, hi_v = (10**lo, 10**hi) if log else (lo, hi)
        centre = 10 ** ((lo + hi) / 2) if log else (lo + hi) / 2
        out.append(
            {
                "level": f"{lo_v:.3g}–{hi_v:.3g}",
                "x": centre,
                "n": len(g),
                "mean": float(g.mean()),
                "std": float(g.std(ddof=0)),
            }
        )
    return pd.DataFrame(out, columns=cols)
