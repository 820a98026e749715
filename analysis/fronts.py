"""Multi-objective studies in a report: every trial's objective values, the Pareto front, the
configurations re-run from it, and the figures that show them.

A multi-objective study (``search.objectives`` in its study file) tells Optuna every completed
trial's values of all its objectives, at the full search budget: that is the equal budget at which
its trials are compared here (a pruned trial stopped before it, a failed one has no values; both
are counted, never placed). Without the Optuna study the values come from the completed search
runs' metrics in MLflow.

The front, the hypervolume and the reference point are :mod:`zskt_ray.pareto`'s, so the report
and the runner (which chose the re-runs with :func:`zskt_ray.pareto.choose_reruns`) agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .. import pareto
from ..names import (
    ATTR_FINAL_CONFIGS,
    ATTR_STATUS,
    ATTR_TUNE_ID,
    COMPLETED,
    FAILED,
    KIND_FINAL,
    KIND_SEARCH,
    PRUNED,
)
from . import tables
from .load import StudyData
from .plots import legend_below, new_figure

_STATE_STATUS = {"COMPLETE": COMPLETED, "PRUNED": PRUNED, "FAIL": FAILED}


def is_multi(data: StudyData) -> bool:
    return len(data.objectives) > 1


def metrics_modes(data: StudyData) -> tuple[list[str], list[str]]:
    return [m for m, _ in data.objectives], [mode for _, mode in data.objectives]


# ------------------------------------------------------------------ values


def trial_values(data: StudyData) -> pd.DataFrame:
    """One row per search trial, in trial order: ``number``, ``trial_id``, ``status``, the
    searched parameters and one column per objective (NaN where the trial has no value at the
    full budget: pruned, failed or still running)."""
    metrics, _ = metrics_modes(data)
    if data.optuna_study is not None:
        rows = []
        for t in data.optuna_study.trials:
            values = (
                t.values
                if t.values and len(t.values) == len(metrics)
                else [math.nan] * len(metrics)
            )
            rows.append(
                {
                    "number": t.number,
                    "trial_id": t.user_attrs.get(ATTR_TUNE_ID),
                    "status": t.user_attrs.get(ATTR_STATUS)
                    or _STATE_STATUS.get(t.state.name, t.state.name.lower()),
                    **{p: t.params.get(p) for p in data.searched},
                    **dict(zip(metrics, map(float, values), strict=True)),
                }
            )
        return pd.DataFrame(
            rows, columns=["number", "trial_id", "status", *data.searched, *metrics]
        )
    runs = data.runs[data.runs["kind"] == KIND_SEARCH].sort_values("start_time", kind="stable")
    out = pd.DataFrame(
        {
            "number": np.arange(len(runs)),
            "trial_id": runs["trial_id"].to_numpy(dtype=object),
            "status": runs["status"].to_numpy(dtype=object),
            **{p: runs[p].to_numpy(dtype=object) for p in data.searched if p in runs},
        }
    )
    done = (runs["status"] == COMPLETED).to_numpy()
    for m in metrics:
        col = (
            pd.to_numeric(runs[m], errors="coerce").to_numpy(dtype=float)
            if m in runs
            else np.full(len(runs), np.nan)
        )
        out[m] = np.where(done, col, np.nan)
    return out


@dataclass(frozen=True)
class Front:
    """The search's trials and which of them are non-dominated."""

    trials: pd.DataFrame  # trial_values()
    metrics: list[str]
    modes: list[str]
    front: np.ndarray  # row positions of the non-dominated trials
    reruns: list[dict[str, Any]]  # the configurations chosen for the final re-runs (runner's)

    @property
    def values(self) -> np.ndarray:
        return self.trials[self.metrics].to_numpy(dtype=float)

    @property
    def with_values(self) -> int:
        return int(pareto.finite_rows(self.values).sum()) if len(self.trials) else 0

    def rerun_numbers(self) -> dict[int, int]:
        """Optuna trial number -> the rank it was re-run as."""
        return {int(r["number"]): int(r["rank"]) for r in self.reruns if "number" in r}


def front_of(data: StudyData) -> Front:
    trials = trial_values(data)
    metrics, modes = metrics_modes(data)
    values = trials[metrics].to_numpy(dtype=float) if len(trials) else np.zeros((0, len(metrics)))
    return Front(trials, metrics, modes, pareto.pareto_front(values, modes), final_configs(data))


def final_configs(data: StudyData) -> list[dict[str, Any]]:
    """The configurations the runner chose for re-runs (stored in the Optuna study), else []."""
    if data.optuna_study is None:
        return []
    return list(data.optuna_study.user_attrs.get(ATTR_FINAL_CONFIGS) or [])


def rerun_table(data: StudyData, front: Front) -> pd.DataFrame:
    """One row per re-run configuration: its rank, why it was chosen, its search values and
    parameters, and test accuracy and test MTE over its completed final re-runs."""
    final = tables.completed(data.runs, KIND_FINAL)
    by_rank = {int(r["rank"]): r for r in front.reruns}
    ranks = sorted(set(by_rank) | {int(r) for r in final["final_rank"].dropna()})
    rows = []
    for rank in ranks:
        chosen = by_rank.get(rank, {})
        runs = final[final["final_rank"] == rank]
        acc, acc_sd, n = tables.mean_std(runs["test_acc"])
        mte, mte_sd, n_mte = tables.mean_std(runs["mte"])
        rows.append(
            {
                "rank": rank,
                "chosen": chosen.get("chosen", ""),
                "trial": chosen.get("number"),
                **{
                    f"search {m}": (chosen.get("values") or {}).get(m, math.nan)
                    for m in front.metrics
                },
                **{p: (chosen.get("params") or {}).get(p, _first(runs, p)) for p in data.searched},
                "seeds": n,
                "test_acc_mean": acc,
                "test_acc_std": acc_sd,
                "mte_mean": mte,
                "mte_std": mte_sd,
                "mte_n": n_mte,
            }
        )
    return pd.DataFrame(rows)


def _first(runs: pd.DataFrame, column: str) -> Any:
    values = runs[column].dropna() if column in runs else pd.Series(dtype=object)
    return values.iloc[0] if len(values) else None


# ------------------------------------------------------------------ Table 1 and Table 2


@dataclass(frozen=True)
class TableChoice:
    """Which re-run configuration stands for a multi-objective study in Table 1 and Table 2."""

    config_ids: frozenset[str]  # the final runs' configuration id (one per study)
    rule: str  # the rule, for the tables' captions
    note: str = ""  # how the rule could not be applied, when it could not


def table_choice(data: StudyData) -> TableChoice | None:
    """The declared rule (``final.table_objective``): the re-run configuration whose search value
    of that objective is best. None for a single-objective study (its tables keep their rule)."""
    if not is_multi(data):
        return None
    metrics, modes = metrics_modes(data)
    objective = str((data.spec.get("final") or {}).get("table_objective") or metrics[0])
    mode = modes[metrics.index(objective)] if objective in metrics else "max"
    rule = f"the re-run configuration of the Pareto front best in search {objective} (final.table_objective)"
    reruns = [r for r in final_configs(data) if objective in (r.get("values") or {})]
    note = ""
    if reruns:
        sign = -1.0 if mode == "max" else 1.0
        rank = min(reruns, key=lambda r: (sign * r["values"][objective], r["rank"]))["rank"]
    else:
        rank = 0
        note = f"the search values of the re-runs are not known ({data.optuna_note or 'no Optuna study'}): re-run rank 0 (best in {metrics[0]}) stands for the study"
    final = tables.completed(data.runs, KIND_FINAL)
    ids = final.loc[final["final_rank"] == rank, "config_id"].dropna().unique()
    return TableChoice(frozenset(str(i) for i in ids), rule, note)


def tables_rule(datas: Sequence[StudyData]) -> tuple[frozenset[str], str]:
    """For ``tables.build_tables`` over one study or several: the configuration ids the declared
    rules of the multi-objective studies chose, and the rule in words ("" when none is one)."""
    choices = [(d, c) for d in datas if (c := table_choice(d)) is not None]
    if not choices:
        return frozenset(), ""
    ids = frozenset().union(*(c.config_ids for _, c in choices))
    if len(datas) == 1:
        return ids, choices[0][1].rule
    objective, mode = datas[0].objective, datas[0].mode
    return ids, (
        f"the configuration with the best mean {objective} ({mode}) over the final seeds; for "
        f"the multi-objective studies ({', '.join(str(d.ref.name) for d, _ in choices)}), "
        f"{choices[0][1].rule}"
    )


# ------------------------------------------------------------------ figures


def front_figure(front: Front, budget_label: str) -> Figure | None:
    """Every trial with values at the full budget, the non-dominated ones highlighted and joined,
    the re-run ones numbered by rank; one panel per pair of objectives."""
    values = front.values
    ok = pareto.finite_rows(values) if len(values) else np.zeros(0, dtype=bool)
    if not ok.any():
        return None
    pairs = [(i, j) for i in range(len(front.metrics)) for j in range(i + 1, len(front.metrics))]
    fig = new_figure(max(8.0, 6.4 * min(len(pairs), 3)), 5.2 * math.ceil(len(pairs) / 3))
    axes = np.atleast_1d(fig.subplots(math.ceil(len(pairs) / 3), min(len(pairs), 3))).ravel()
    on_front = np.zeros(len(values), dtype=bool)
    on_front[front.front] = True
    reruns = front.rerun_numbers()
    numbers = front.trials["number"].to_numpy()
    for ax, (i, j) in zip(axes, pairs, strict=False):
        x, y = values[:, i], values[:, j]
        rest = ok & ~on_front
        ax.scatter(
            x[rest], y[rest], s=30, color="0.6", label=f"dominated ({int(rest.sum())})", zorder=2
        )
        order = np.argsort(x[on_front])
        fx, fy = x[on_front][order], y[on_front][order]
        ax.plot(fx, fy, color="tab:red", lw=1, alpha=0.6, zorder=3)
        ax.scatter(
            fx,
            fy,
            s=54,
            color="tab:red",
            edgecolor="k",
            label=f"non-dominated ({len(fx)})",
            zorder=4,
        )
        for row in np.flatnonzero(ok):
            rank = reruns.get(int(numbers[row]))
            if rank is not None:
                ax.annotate(
                    f"#{rank}",
                    (x[row], y[row]),
                    xytext=(6, 6),
                    textcoords="offset points",
                    fontsize=9,
                    weight="bold",
                )
        if reruns:
            ax.scatter([], [], s=0, label="#r: re-run as rank r")
        ax.set_xlabel(f"{front.metrics[i]} ({_better(front.modes[i])})")
        ax.set_ylabel(f"{front.metrics[j]} ({_better(front.modes[j])})")
        ax.grid(alpha=0.3)
        legend_below(ax, ncol=3)
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"Pareto front of the search at the {budget_label} ({int(ok.sum())} trials with values)",
        fontsize=11,
    )
    return fig


def _better(mode: str) -> str:
    return "higher is better" if mode == "max" else "lower is better"


def hypervolume_figure(numbers: Sequence[int], history: np.ndarray, n_front: int) -> Figure:
    """The hypervolume of the trials so far, by trial number."""
    fig = new_figure(8.0, 3.8)
    ax = fig.subplots()
    ax.step(numbers, history, where="post", color="tab:blue", lw=1.5)
    ax.scatter(numbers, history, s=14, color="tab:blue", zorder=3)
    ax.set_xlabel("trial number")
    ax.set_ylabel("hypervolume")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    trials = "trial" if n_front == 1 else "trials"
    ax.set_title(f"Hypervolume of the trials so far (a front of {n_front} {trials} at the end)")
    return fig
