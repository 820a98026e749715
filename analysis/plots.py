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

COMPLETED = dict(marker="o", color="tab:blue", s=36, zorder=3)
PRUNED = dict(marker="o", facecolors="none", edgecolors="tab:orange", s=36, zorder=2)
FINAL = dict(fmt="D", color="tab:red", ms=6, capsize=4, zorder=6)  # above the best-trial star


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


def param_effect(
    search: pd.DataFrame,
    final_configs: pd.DataFrame,
    param: str,
    objective: str,
    mode: str,
    log: bool = False,
) -> Figure | None:
    """Objective against one searched parameter: every search trial, plus final seeds' spread.

    Completed trials are filled dots, pruned trials hollow dots at the value they had when stopped
    (a partial run), failed trials are not drawn but counted in the legend. Final re-runs of a
    configuration are a diamond at mean +- population std over seeds.
    """
    if param not in search.columns and param not in final_configs.columns:
        return None
    fig = new_figure()
    ax = fig.subplots()
    values = search[param] if param in search else pd.Series(dtype=object)
    finals = final_configs[param] if param in final_configs else pd.Series(dtype=object)
    numeric = _is_numeric(pd.concat([values, finals], ignore_index=True))
    if numeric:

        def xpos(s: pd.Series) -> np.ndarray:
            return _floats(s)
    else:
        cats = sorted({str(v) for v in pd.concat([values, finals]).dropna()}, key=str)
        index = {c: i for i, c in enumerate(cats)}

        def xpos(s: pd.Series) -> np.ndarray:
            return np.array(
                [index.get(str(v), np.nan) if not pd.isna(v) else np.nan for v in s], dtype=float
            )

        ax.set_xticks(range(len(cats)), cats)
    comp = search[search["status"] == "completed"]
    pru = search[search["status"] == "pruned"]
    n_failed = int((search["status"] == "failed").sum())
    n_other = int((~search["status"].isin(["completed", "pruned", "failed"])).sum())
    y_c = _floats(comp["objective"])
    ax.scatter(xpos(comp[param]), y_c, label=f"completed trial ({len(comp)})", **COMPLETED)
    y_p = _floats(pru["objective"])
    shown_p = int(np.isfinite(y_p).sum())
    if len(pru):
        ax.scatter(
            xpos(pru[param]),
            y_p,
            label=f"pruned trial, value when stopped ({shown_p} of {len(pru)})",
            **PRUNED,
        )
    if len(comp) and np.isfinite(y_c).any():
        best = int(np.nanargmax(y_c) if mode == "max" else np.nanargmin(y_c))
        ax.scatter(
            xpos(comp[param].iloc[[best]]),
            y_c[[best]],
            marker="*",
            s=180,
            color="gold",
            edgecolors="k",
            zorder=5,
            label="best search trial",
        )
    if len(final_configs) and param in final_configs:
        fc = final_configs.dropna(subset=["objective_mean"])
        if len(fc):
            ax.errorbar(
                xpos(fc[param]),
                _floats(fc["objective_mean"]),
                yerr=_floats(fc["objective_std"]),
                label="final re-runs (mean ± std over seeds)",
                **FINAL,
            )
    if n_failed or n_other:
        extra = (
            f"failed: {n_failed}" + (f", unfinished: {n_other}" if n_other else "") + " (not drawn)"
        )
        ax.plot([], [], " ", label=extra)
    if numeric and log:
        log_x(ax)
    elif numeric and pd.api.types.is_integer_dtype(values.dropna()):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        lo, hi = ax.get_xlim()
        lo, hi = min(lo, float(values.min()) - 0.5), max(hi, float(values.max()) + 0.5)
        ax.set_xlim(lo, hi)
        if hi - lo <= 12:  # few integers in view: tick each one
            ax.set_xticks(range(math.ceil(lo), math.floor(hi) + 1))
    ax.set_xlabel(param)
    ax.set_ylabel(f"{objective} (last reported)")
    ax.set_title(f"Effect of {param} on {objective} ({mode})")
    ax.grid(alpha=0.3)
    legend_below(ax)
    return fig


def optimisation_history(
    trials: pd.DataFrame, objective: str, mode: str, source: str
) -> Figure | None:
    """Objective per trial in order, with the best value so far.

    ``trials`` has columns ``number``, ``state`` (COMPLETE / PRUNED / FAIL / ...) and ``value``
    (for pruned trials the last reported value, may be NaN).
    """
    if trials.empty:
        return None
    fig = new_figure()
    ax = fig.subplots()
    t = trials.sort_values("number")
    comp = t[t["state"] == "COMPLETE"]
    pru = t[t["state"] == "PRUNED"]
    n_fail = int((~t["state"].isin(["COMPLETE", "PRUNED"])).sum())
    ax.scatter(
        _floats(comp["number"]),
        _floats(comp["value"]),
        label=f"completed ({len(comp)})",
        **COMPLETED,
    )
    if len(pru):
        ax.scatter(
            _floats(pru["number"]),
            _floats(pru["value"]),
            label=f"pruned ({len(pru)}), value when stopped",
            **PRUNED,
        )
    vals = _floats(comp["value"])
    if np.isfinite(vals).any():
        acc = np.fmax.accumulate(vals) if mode == "max" else np.fmin.accumulate(vals)
        ax.step(_floats(comp["number"]), acc, where="post", color="tab:red", label="best so far")
    if n_fail:
        ax.plot([], [], " ", label=f"failed / unfinished: {n_fail} (not drawn)")
    ax.set_xlabel("trial number")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(-0.5, float(t["number"].max()) + 0.5)
    ax.set_ylabel(objective)
    ax.set_title(f"Optimisation history ({source})")
    ax.grid(alpha=0.3)
    legend_below(ax)
    return fig


def importances(values: Mapping[str, float], objective: str) -> Figure | None:
    """Horizontal bars of parameter importances (Optuna's ``get_param_importances``)."""
    if not values:
        return None
    names = list(values)[::-1]
    fig = new_figure(7.2, 1.0 + 0.45 * max(len(names), 2))
    ax = fig.subplots()
    ax.barh(names, [values[n] for n in names], color="tab:blue")
    for i, n in enumerate(names):
        ax.text(values[n], i, f" {values[n]:.2f}", va="center", fontsize=8)
    ax.set_xlabel(f"importance for {objective} (fANOVA, sums to 1)")
    ax.set_xlim(0, max(1.0, max(values.values()) * 1.15))
    ax.set_title("Parameter importances (completed trials)")
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


def finite(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x)) and not pd.isna(x)
