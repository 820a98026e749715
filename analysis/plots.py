"""Figures of a study report (matplotlib ``Figure`` objects, Agg canvas, no pyplot state).

Each function takes plain tables and returns a :class:`matplotlib.figure.Figure`, or ``None``
when there is nothing to draw; the report says why in that case.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from ..names import COMPLETED, FAILED, PRUNED, RUNNING

COMPLETED_STYLE = dict(marker="o", color="tab:blue", s=36, zorder=3)
# A trial's later fate, at a rung where every trial is compared at the same iteration.
FATE = {
    COMPLETED: dict(marker="o", color="tab:blue", label="went on to complete"),
    PRUNED: dict(marker="v", color="tab:orange", label="stopped by ASHA (this rung or later)"),
    FAILED: dict(marker="x", color="tab:red", label="failed later"),
}
OTHER_FATE = dict(marker="s", color="tab:gray", label="running / interrupted")
MEAN = dict(fmt="-D", color="k", ms=4, capsize=4, lw=1.0, alpha=0.7, zorder=2)


def new_figure(width: float = 7.2, height: float = 4.6) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def legend_below(ax: Any, ncol: int = 2) -> None:
    """Legend under the axes, so it never hides a point."""
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, frameon=False)


def log_x(ax: Any) -> None:
    """Log x axis labelled 1, 2, 5 x 10^n in plain numbers (no crowded minor labels)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _floats(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _is_numeric(values: pd.Series) -> bool:
    v = values.dropna()
    if v.empty:
        return False
    return pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v)


def _fate_scatter(ax: Any, rows: pd.DataFrame, x: np.ndarray) -> None:
    y = _floats(rows["value"])
    status = rows["status"].astype(object).fillna(RUNNING).to_numpy()
    for fate, style in [*FATE.items(), ("other", OTHER_FATE)]:
        m = (status == fate) if fate != "other" else ~np.isin(status, list(FATE))
        if m.any():
            style = dict(style)
            label = f"{style.pop('label')} ({int(m.sum())})"
            ax.scatter(x[m], y[m], s=36, alpha=0.85, zorder=4, label=label, **style)


def _axis(
    ax: Any, values: pd.Series, numeric: bool, log: bool, cats: list[str], narrow: bool = False
) -> None:
    if not numeric:
        ax.set_xticks(range(len(cats)), cats)
        ax.set_xlim(-0.5, len(cats) - 0.5)
    elif log:
        log_x(ax)
        if narrow:  # decades only: 1, 2, 5 x 10^n labels collide on a narrow panel
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0,)))
    elif pd.api.types.is_integer_dtype(values.dropna()) and len(values.dropna()):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        lo, hi = float(values.min()) - 0.5, float(values.max()) + 0.5
        ax.set_xlim(lo, hi)
        if hi - lo <= 12:
            ax.set_xticks(range(math.ceil(lo), math.floor(hi) + 1))


class _XPositions:
    """Where a parameter's values sit on the x axis: themselves when numeric, else the index of
    their category (sorted as numbers when they all parse as numbers)."""

    def __init__(self, values: pd.Series):
        self.values = values
        self.numeric = _is_numeric(values)
        cats = sorted({str(v) for v in values.dropna()}, key=str) if not self.numeric else []
        if not self.numeric:
            try:
                cats = sorted(cats, key=float)
            except ValueError:
                pass
        self.cats = cats
        self.index = {c: i for i, c in enumerate(cats)}

    def of(self, s: pd.Series | Sequence[Any]) -> np.ndarray:
        if self.numeric:
            return _floats(pd.Series(s))
        return np.array(
            [self.index.get(str(v), np.nan) if not pd.isna(v) else np.nan for v in s], dtype=float
        )

    def axis(self, ax: Any, log: bool, narrow: bool = False) -> None:
        _axis(ax, self.values, self.numeric, log, self.cats, narrow)


def param_effect(
    at_rung: pd.DataFrame,
    effects: pd.DataFrame,
    full: pd.DataFrame,
    param: str,
    objective: str,
    mode: str,
    rung_label: str,
    full_label: str,
    log: bool = False,
) -> Figure | None:
    """The objective against one searched parameter, each panel at one budget.

    Left: every trial that reached the rung, at the rung's iteration (marker: what became of the
    trial later), with the marginal mean +- population std per level (``effects``). Right: the
    trials that completed the full budget, at it. No panel mixes budgets.
    """
    if param not in at_rung.columns and param not in full.columns:
        return None
    empty = pd.Series(dtype=object)
    x = _XPositions(
        pd.concat([at_rung.get(param, empty), full.get(param, empty)], ignore_index=True)
    )
    fig = new_figure(10.5, 4.4)
    ax, ax_full = fig.subplots(1, 2, sharey=True, sharex=True, width_ratios=[3, 2])
    if len(at_rung):
        _fate_scatter(ax, at_rung, x.of(at_rung[param]))
    if len(effects):
        ex = effects["x"].to_numpy(dtype=float) if x.numeric else x.of(effects["level"])
        ax.errorbar(ex, effects["mean"], yerr=effects["std"], label="mean ± std per level", **MEAN)
    ax.set_title(f"{rung_label}: {len(at_rung)} trials", fontsize=10)
    ax.set_xlabel(param)
    ax.set_ylabel(f"{objective} at that iteration")
    x.axis(ax, log)
    ax.grid(alpha=0.3)
    legend_below(ax)
    _full_budget_panel(ax_full, full, x.of(full[param]) if len(full) else np.array([]), mode)
    ax_full.set_title(f"{full_label}: {len(full)} trials", fontsize=10)
    ax_full.set_xlabel(param)
    x.axis(ax_full, log, narrow=True)
    ax_full.grid(alpha=0.3)
    fig.suptitle(f"Effect of {param} on {objective} ({mode}), compared at equal budgets")
    return fig


def _full_budget_panel(ax: Any, full: pd.DataFrame, x: np.ndarray, mode: str) -> None:
    """The trials that completed the full budget, the best one starred."""
    if not len(full):
        ax.text(
            0.5,
            0.5,
            "no trial completed\nthe full budget",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="0.4",
        )
        return
    y = _floats(full["value"])
    ax.scatter(x, y, label=f"completed ({len(full)})", **COMPLETED_STYLE)
    if np.isfinite(y).any():
        best = int(np.nanargmax(y) if mode == "max" else np.nanargmin(y))
        ax.scatter(
            x[[best]],
            y[[best]],
            marker="*",
            s=180,
            color="gold",
            edgecolors="k",
            zorder=5,
            label="best",
        )
    legend_below(ax, ncol=1)


def optimisation_history(
    at_rung: pd.DataFrame,
    full: pd.DataFrame,
    objective: str,
    mode: str,
    rung_label: str,
    full_label: str,
) -> Figure | None:
    """The objective per trial number at one rung (top) and at the full budget (bottom).

    Both frames have ``number`` and ``value`` (and ``status`` for the rung); each panel shows
    the best value so far at its budget.
    """
    if at_rung.empty and full.empty:
        return None
    fig = new_figure(9.0, 6.0)
    axes = fig.subplots(2, 1, sharex=True)
    for ax, rows, label in ((axes[0], at_rung, rung_label), (axes[1], full, full_label)):
        if rows.empty:
            ax.text(
                0.5,
                0.5,
                "no trial has a value at this budget",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="0.4",
            )
        else:
            t = rows.sort_values("number")
            x = _floats(t["number"])
            if "status" in t and label == rung_label:
                _fate_scatter(ax, t, x)
            else:
                ax.scatter(x, _floats(t["value"]), label=f"completed ({len(t)})", **COMPLETED_STYLE)
            vals = _floats(t["value"])
            acc = np.fmax.accumulate(vals) if mode == "max" else np.fmin.accumulate(vals)
            ax.step(x, acc, where="post", color="tab:red", label="best so far")
            ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        ax.set_title(f"{label}: {len(rows)} trials", fontsize=10)
        ax.set_ylabel(objective)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_xlabel("trial number")
    fig.suptitle(f"Optimisation history of {objective}, at equal budgets")
    return fig


def importances(
    values: Mapping[str, float], objective: str, method: str = "fANOVA", title: str = ""
) -> Figure | None:
    """Horizontal bars of parameter importances (Optuna's ``get_param_importances``)."""
    if not values:
        return None
    names = list(values)[::-1]
    fig = new_figure(7.2, 1.0 + 0.45 * max(len(names), 2))
    ax = fig.subplots()
    ax.barh(names, [values[n] for n in names], color="tab:blue")
    for i, n in enumerate(names):
        ax.text(values[n], i, f" {values[n]:.2f}", va="center", fontsize=8)
    ax.set_xlabel(f"importance for {objective} ({method}, sums to 1)")
    ax.set_xlim(0, max(1.0, max(values.values()) * 1.15))
    ax.set_title(title or "Parameter importances")
    return fig


def learning_curves(
    curves: Sequence[tuple[str, pd.DataFrame, str]], metric: str = "val_acc"
) -> Figure | None:
    """``metric`` against iteration; ``curves`` holds ``(label, step/value frame, style)``."""
    curves = [c for c in curves if len(c[1])]
    if not curves:
        return None
    fig = new_figure(8.0, 5.0)
    ax = fig.subplots()
    for label, df, style in curves:
        ax.plot(df["step"], df["value"], style, label=label, marker=".", ms=4)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"{metric} (%)" if metric.endswith("_acc") else metric)
    ax.set_title(f"Learning curves ({metric})")
    ax.grid(alpha=0.3)
    legend_below(ax)
    return fig


def transition_curves(groups: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]) -> Figure | None:
    """Average transition curves, the paper's Figure 4 style: one panel per student kind.

    ``groups``: ``(title, [transition_curves.json dicts])``; each panel shows the student's
    (network A, stepped on) and the teacher's (network B) mean probability of the target class
    against the step k, averaged over the runs in the group.
    """
    groups = [(t, [c for c in cs if c and c.get("mean_curve_a")]) for t, cs in groups]
    groups = [(t, cs) for t, cs in groups if cs]
    if not groups:
        return None
    fig = new_figure(min(5.0 * len(groups), 11.5), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(groups), sharey=True))
    for ax, (title, curves) in zip(axes, groups, strict=True):
        k = min(len(c["mean_curve_a"]) for c in curves)
        a = np.mean([np.asarray(c["mean_curve_a"][:k], dtype=float) for c in curves], axis=0)
        b = np.mean([np.asarray(c["mean_curve_b"][:k], dtype=float) for c in curves], axis=0)
        mtes = [float(c["mte"]) for c in curves if c.get("mte") is not None]
        xi = curves[0].get("xi")
        steps = np.arange(k)
        ax.plot(steps, a, color="tab:blue", label="student (A, stepped on)")
        ax.plot(steps, b, color="tab:red", ls="--", label="teacher (B)")
        ax.fill_between(steps, a, b, color="0.6", alpha=0.25, label="|A − B| (MTE)")
        mte = f"MTE {np.mean(mtes):.3f}" if mtes else "MTE n/a"
        xi_s = f"{float(xi):g}" if xi is not None else "?"
        ax.set_title(f"{title}\n{mte}, K={k}, ξ={xi_s}, {len(curves)} run(s)", fontsize=10)
        ax.set_xlabel("step k")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("p(target class j)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncol=3, frameon=False)
    return fig


def _level_text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _sorted_levels(values: pd.Series) -> list[Any]:
    levels = list(dict.fromkeys(values.dropna()))
    try:
        return sorted(levels, key=float)
    except (TypeError, ValueError):
        return sorted(levels, key=str)


def interaction(
    means: pd.DataFrame, x: str, trace: str, metric: str, better: str = "max"
) -> Figure | None:
    """Mean of ``metric`` per level of ``x``, one line per level of ``trace``, with each
    point's interval over seeds (``analysis.stats.interaction_means``: columns ``x``,
    ``trace``, ``n``, ``mean``, ``ci_low``, ``ci_high``). Parallel lines mean no interaction.
    Levels are evenly spaced categories; a point from one seed has no bar."""
    means = means[means["n"] > 0]
    if means.empty:
        return None
    xs, traces = _sorted_levels(means["x"]), _sorted_levels(means["trace"])
    fig = new_figure(6.4, 4.4)
    ax = fig.subplots()
    width = 0.12 * (len(traces) - 1)
    for k, tv in enumerate(traces):
        rows = means[means["trace"] == tv].set_index("x").reindex(xs)
        shift = (k / max(len(traces) - 1, 1) - 0.5) * width
        pos = np.arange(len(xs)) + shift
        mean = rows["mean"].to_numpy(dtype=float)
        low = mean - rows["ci_low"].to_numpy(dtype=float)
        high = rows["ci_high"].to_numpy(dtype=float) - mean
        err = np.nan_to_num(np.vstack([low, high]), nan=0.0)
        ax.errorbar(
            pos, mean, yerr=err, fmt="-o", ms=5, capsize=4, label=f"{trace}={_level_text(tv)}"
        )
        for xp, m, n in zip(pos, mean, rows["n"]):
            if np.isfinite(m):
                ax.annotate(
                    f"n={int(n)}",
                    (xp, m),
                    xytext=(4, 4),
                    textcoords="offset points",
                    fontsize=7,
                    color="0.4",
                )
    ax.set_xticks(range(len(xs)), [_level_text(v) for v in xs])
    ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.set_xlabel(x)
    ax.set_ylabel(f"{metric} ({better} is better)")
    ax.grid(alpha=0.3)
    legend_below(ax, ncol=min(len(traces), 4))
    ax.set_title(
        f"Interaction of {x} and {trace} on {metric}: mean and 95 % interval over seeds",
        fontsize=10,
    )
    return fig


def cell_intervals(summary: pd.DataFrame, metric: str, better: str = "max") -> Figure | None:
    """Each cell's mean with its 95 % interval over seeds, one row per cell, top to bottom in
    the design's order (``analysis.stats.cell_summary`` with a ``cell_label`` column). A cell's
    n and failures are written beside it; a cell without an interval is a bare point."""
    rows = summary[summary["n"].fillna(0) > 0]
    if rows.empty:
        return None
    fig = new_figure(7.2, 0.9 + 0.42 * len(summary))
    ax = fig.subplots()
    y = np.arange(len(summary))[::-1]
    mean = _floats(summary["mean"])
    low = mean - _floats(summary["ci_low"])
    high = _floats(summary["ci_high"]) - mean
    err = np.nan_to_num(np.vstack([low, high]), nan=0.0)
    ax.errorbar(mean, y, xerr=err, fmt="o", ms=5, capsize=4, color="tab:blue", lw=1.2)
    for yi, m, n, runs, failed in zip(
        y, mean, summary["n"], summary["n_runs"], summary["n_failed"], strict=True
    ):
        text = f"n={int(n)}" if pd.notna(n) else "n=0"
        if pd.notna(failed) and failed:
            text += f", {int(failed)}/{int(runs)} failed"
        ax.annotate(
            text,
            (m if np.isfinite(m) else np.nanmin(mean), yi),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=7,
            color="0.35",
        )
    ax.set_yticks(y, [str(v) for v in summary["cell_label"]], fontsize=8)
    ax.set_xlabel(f"{metric} ({better} is better)")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(f"{metric}: mean and 95 % interval over seeds", fontsize=10)
    return fig


def finite(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x)) and not pd.isna(x)
