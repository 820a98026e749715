"""Search trials compared at equal budgets, and the optimisation history."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import plots, rungs, tables
from ..blocks import Para, TableBlock
from .page import Page
from .view import StudyView

TRIALS_CAPTION = (
    "Every search trial with its {objective} at each ASHA rung (the first report at or after that "
    "iteration, the value ASHA judged) and at the full budget (completed trials only); deepest "
    "budget reached first, then best value there. Search trials never give test accuracy."
)
_NUMERIC_COLUMNS = ["trial_id", "optuna_number", "status"]
_NUMERIC_TAIL = ["iterations_reached", "wall_time_s", "status_reason", "run_id", "config_id"]


def _values_by_budget(study: StudyView) -> pd.DataFrame:
    """One column per budget (``val_acc@10``, ..., ``val_acc@40 (full)``), a row per search trial."""
    wide = pd.DataFrame(index=study.search.index)
    for b in study.budgets:
        col = f"{study.data.objective}@{b.iteration}" + (" (full)" if b.full else "")
        vals = rungs.at_budget(study.rung_table, b).set_index("run_id")["value"]
        wide[col] = study.search["run_id"].map(vals)
    return wide


def _deepest_then_best(wide: pd.DataFrame, mode: str) -> np.ndarray:
    """Row order: the deepest budget a trial reached first, then its best value there."""
    depth = np.zeros(len(wide), dtype=float)
    last = np.full(len(wide), np.nan)
    for i, col in enumerate(wide.columns):
        v = wide[col].to_numpy(dtype=float)
        has = np.isfinite(v)
        depth[has] = i + 1
        last[has] = v[has]
    sign = -1.0 if mode == "max" else 1.0
    return np.lexsort((np.nan_to_num(sign * last, nan=np.inf), -depth))


def trials_table(study: StudyView) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every search trial with its value at each budget: (numeric, display)."""
    wide = _values_by_budget(study)
    order = _deepest_then_best(wide, study.data.mode)
    s, wide = study.search.iloc[order], wide.iloc[order]
    searched = [p for p in study.searched if p in s]
    numeric = pd.concat(
        [
            s[[*_NUMERIC_COLUMNS, *searched, *_NUMERIC_TAIL]].reset_index(drop=True),
            wide.reset_index(drop=True),
        ],
        axis=1,
    )
    display = pd.DataFrame(
        {
            "trial": s["trial_id"],
            "optuna #": s["optuna_number"],
            "status": s["status"],
            **{p: s[p] if p in s else None for p in study.searched},
            **{c: [tables.fmt_pm(v, None, digits=study.digits) for v in wide[c]] for c in wide},
            "iterations": s["iterations_reached"],
            "reason": s["status_reason"],
        }
    ).reset_index(drop=True)
    return numeric, display


def equal_budgets(study: StudyView, page: Page) -> None:
    """The budgets trials are compared at, and every search trial's value at each."""
    d = study.data
    numeric, display = trials_table(study)
    caption = TRIALS_CAPTION.format(objective=d.objective)
    page.table_file("search_trials", caption, numeric, display)
    page.section("Search trials at equal budgets")
    if study.search.empty:
        page.add(Para("No search trials.", "note"))
        return
    rows = []
    for b in study.budgets:
        vals = study.rows(b)["value"].astype(float)
        best = (vals.max() if d.mode == "max" else vals.min()) if len(vals) else math.nan
        mean, std, _ = tables.mean_std(vals)
        rows.append(
            {
                "budget": b.label,
                "trials with a value": b.n,
                f"best {d.objective}": tables.fmt_pm(best, None, digits=study.digits),
                f"mean ± std {d.objective}": tables.fmt_pm(mean, std, digits=study.digits),
                "default view": "yes" if study.view == b else "",
            }
        )
    page.add(
        TableBlock(
            pd.DataFrame(rows),
            "Budgets at which trials are compared: ASHA rungs and the full search budget.",
        )
    )
    if study.view is not None:
        page.add(
            Para(
                f"Plots below compare trials at the {study.view.label} ({study.view.n} trials), "
                "the deepest rung that at least the requested number of trials reached "
                "(zskt report --min-trials, --rung); completed trials at the full budget are "
                "shown apart."
            )
        )
    page.add(TableBlock(display, caption))


def optimisation_history(study: StudyView, page: Page) -> None:
    """The objective per trial in the order trials were tried."""
    d = study.data
    page.section("Optimisation history")
    number = study.search.set_index("run_id")["optuna_number"]
    by_start = study.search.sort_values("start_time")["run_id"]
    fallback = pd.Series(np.arange(len(study.search)), index=by_start)

    def numbered(rows: pd.DataFrame) -> pd.DataFrame:
        n = rows["run_id"].map(number)
        n = n.where(n.notna(), rows["run_id"].map(fallback))
        return rows.assign(number=pd.to_numeric(n, errors="coerce"))

    at, full = numbered(study.rows(study.view)), numbered(study.full_rows())
    labels = study.view_label, study.full_label
    fig = plots.optimisation_history(at, full, d.objective, d.mode, *labels)
    if fig is None:
        page.missing("optimisation history", "no search trial reported the objective")
        return
    source = "Optuna trial numbers" if d.optuna_study is not None else "MLflow runs by start time"
    page.figure(
        fig,
        "optuna_history",
        f"{d.objective} per trial ({source}) at the {labels[0]} (top) and at the {labels[1]} "
        "(bottom).",
    )
