"""One loaded study as the sections read it: runs by kind, configurations, comparison budgets."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ...names import COMPLETED, KIND_FINAL, KIND_SEARCH
from .. import fronts, rungs, tables
from ..load import StudyData


@dataclass(frozen=True)
class ReportOptions:
    """What ``zskt report`` lets a user choose."""

    top_n: int = 3  # best search trials in the learning curves
    min_trials: int = rungs.DEFAULT_MIN_TRIALS  # the default view's rung: reached by this many
    rung: int | None = None  # compare at this rung instead
    importance: str = "fanova"  # Optuna importance evaluator


class StudyView:
    """The numbers every section of a study reads, computed once."""

    def __init__(self, data: StudyData, options: ReportOptions):
        self.data = data
        self.options = options
        self.runs = data.runs
        self.searched = list(data.searched)
        self.space = (data.spec.get("search") or {}).get("space") or {}
        self.search = self.runs[self.runs["kind"] == KIND_SEARCH]
        self.configs = tables.per_config(self.runs, self.searched, data.objective, data.mode)
        prefer, rule = fronts.tables_rule([data])  # a multi-objective study's declared rule
        self.chosen = tables.chosen_configs(self.configs, prefer)
        self.paper_tables = tables.build_tables(
            self.runs, self.searched, data.objective, data.mode, prefer, rule
        )
        self.rung_table = rungs.rung_values(data)
        self.budgets = rungs.budgets(self.rung_table, data)
        self.view, self.budget_note = self._pick_budget(options.rung, options.min_trials)
        self.full = next((b for b in self.budgets if b.full), None)

    def _pick_budget(
        self, rung: int | None, min_trials: int
    ) -> tuple[rungs.Budget | None, str | None]:
        """The budget the plots compare trials at, and a note when ``--rung`` names none."""
        if rung is None:
            return rungs.default_budget(self.budgets, min_trials), None
        for b in sorted(self.budgets, key=lambda b: b.full):  # a rung before the full budget
            if b.iteration == rung:
                return b, None
        known = ", ".join(str(b.iteration) for b in self.budgets) or "none"
        note = f"--rung {rung}: no such budget (budgets: {known}); default used"
        return rungs.default_budget(self.budgets, min_trials), note

    @property
    def digits(self) -> int:
        """Decimals of the objective in tables: accuracies in %, losses finer."""
        return 2 if self.data.objective == "val_acc" else 4

    def rows(self, b: rungs.Budget | None) -> pd.DataFrame:
        """The search trials' values at one budget (none when there is no budget)."""
        if b is None:
            return self.rung_table.iloc[0:0]
        return rungs.at_budget(self.rung_table, b)

    def full_rows(self) -> pd.DataFrame:
        """The values at the full budget when it is not the default view (else none)."""
        if self.full is not None and self.full != self.view:
            return self.rows(self.full)
        return self.rows(None)

    @property
    def view_label(self) -> str:
        return self.view.label if self.view else "no budget"

    @property
    def full_label(self) -> str:
        return self.full.label if self.full else "full budget"

    def best_search(self, n: int) -> pd.DataFrame:
        """The ``n`` best completed search trials by their objective."""
        s = self.search
        comp = s[(s["status"] == COMPLETED) & s["objective"].notna()]
        return comp.sort_values("objective", ascending=self.data.mode == "min").head(n)

    def chosen_final_runs(self) -> pd.DataFrame:
        """The completed final re-runs of the chosen configurations, by seed."""
        if self.chosen.empty:
            return self.runs.iloc[0:0]
        final = tables.completed(self.runs, KIND_FINAL)
        return final[final["config_id"].isin(self.chosen["config_id"])].sort_values("seed")
