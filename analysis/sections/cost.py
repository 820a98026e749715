"""Cost: the device time a study's trials used, what accuracy that time bought, and what each final
re-run cost.

Every trial run logs ``cost_device_s`` with each report: the wall seconds it has spent training
and evaluating so far, times its allocation (CPUs, or its GPU share; tag ``zskt.cost_device``),
its final evaluation included in the last value. The study's total is the sum of the runs' last
values, the same sum ``zskt study run`` prints at the end.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ...names import (
    COMPLETED,
    COST_DEVICE_S,
    COST_PASSES,
    COST_PEAK_MEM_MIB,
    COST_PSEUDO_IMAGES,
    COST_WALL_S,
    FAILED,
    KIND_ABLATION,
    KIND_FINAL,
    PRUNED,
    TEST_ACC,
    TRIAL_KINDS,
)
from .. import plots, tables
from ..blocks import Para, TableBlock
from .page import Page
from .view import StudyView

STATUS_COLOURS = {COMPLETED: "tab:blue", PRUNED: "tab:orange", FAILED: "tab:red"}


def unit(runs: pd.DataFrame) -> str:
    """``CPU`` or ``GPU`` (``CPU+GPU`` when runs counted both): what a device-second is."""
    kinds = sorted(set(runs["cost_device"].dropna().astype(str)))
    return "+".join(kinds).upper() or "CPU"


def totals(runs: pd.DataFrame) -> dict[str, float]:
    """Device-seconds of every trial run (the last ``cost_device_s``, missing as 0), in all, of
    pruned trials, and per kind."""
    spent = runs[COST_DEVICE_S].fillna(0.0)
    out = {"all": float(spent.sum()), PRUNED: float(spent[runs["status"] == PRUNED].sum())}
    for kind in TRIAL_KINDS:
        out[kind] = float(spent[runs["kind"] == kind].sum())
    return out


def by_kind_and_status(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs, device-seconds and their share, mean wall seconds, pseudo images per kind and status."""
    costed = runs.assign(spent=runs[COST_DEVICE_S].fillna(0.0))
    total = costed["spent"].sum()
    g = costed.groupby([costed["kind"].astype(object), costed["status"].astype(object)], sort=True)
    out = pd.DataFrame(
        {
            "runs": g.size(),
            "device-seconds": g["spent"].sum(),
            "share %": 100 * g["spent"].sum() / total if total > 0 else np.nan,
            "mean wall s": g[COST_WALL_S].mean(),
            "pseudo images": g[COST_PSEUDO_IMAGES].sum().astype("Int64"),
        }
    ).reset_index()
    return out.rename(columns={"kind": "kind", "status": "status"})


def trajectories(study: StudyView) -> pd.DataFrame:
    """Every search trial's (device-seconds, objective) at each report: ``run_id``, ``status``,
    ``step``, ``x`` (cumulative device-seconds), ``y`` (the objective), ``rung`` (the ASHA rung
    whose value this report gave, else NaN)."""
    d = study.data
    h = d.histories[d.histories["run_id"].isin(study.search["run_id"])]
    cols = ["run_id", "status", "step", "x", "y", "rung"]
    if h.empty:
        return pd.DataFrame(columns=cols)
    wide = h.pivot_table(index=["run_id", "step"], columns="key", values="value", aggfunc="last")
    if COST_DEVICE_S not in wide or d.objective not in wide:
        return pd.DataFrame(columns=cols)
    pts = wide[[COST_DEVICE_S, d.objective]].dropna().reset_index()
    pts = pts.rename(columns={COST_DEVICE_S: "x", d.objective: "y"})
    pts["status"] = pts["run_id"].map(study.search.set_index("run_id")["status"].astype(object))
    pts = pts.sort_values(["run_id", "step"], kind="stable")
    pts["rung"] = np.nan
    for r in d.rungs:  # the first report at or after each rung: the value ASHA judged
        first = pts[pts["step"] >= r].groupby("run_id").head(1).index
        pts.loc[first, "rung"] = r
    return pts[cols].reset_index(drop=True)


def front(points: pd.DataFrame, mode: str) -> pd.DataFrame:
    """The best objective reachable within each budget: at ``x``, the best value of any trial's
    report that had spent at most ``x`` device-seconds (``x``, ``y``, ``run_id``; a step each time
    it improves)."""
    pts = points.sort_values("x", kind="stable")
    rows, best = [], None
    for r in pts.itertuples():
        if best is None or (r.y > best if mode == "max" else r.y < best):
            best = r.y
            rows.append({"x": r.x, "y": r.y, "run_id": r.run_id, "step": r.step})
    return pd.DataFrame(rows, columns=["x", "y", "run_id", "step"])


def cost_figure(points: pd.DataFrame, best: pd.DataFrame, objective: str, u: str):
    """Objective against the device-seconds each search trial had spent, with its ASHA rungs and
    the front of the best value reachable within a budget."""
    if points.empty:
        return None
    fig = plots.new_figure(7.6, 4.8)
    ax = fig.subplots()
    for _, g in points.groupby("run_id", sort=False):
        colour = STATUS_COLOURS.get(g["status"].iloc[0], "tab:gray")
        ax.plot(g["x"], g["y"], "-", color=colour, alpha=0.55, lw=1, marker=".", ms=4)
    at = points[points["rung"].notna()]
    ax.scatter(at["x"], at["y"], s=42, facecolors="none", edgecolors="k", lw=1, zorder=4)
    if len(best):
        xmax = float(points["x"].max())
        xs = [*best["x"], max(xmax, float(best["x"].iloc[-1]))]
        ys = [*best["y"], float(best["y"].iloc[-1])]
        ax.step(xs, ys, where="post", color="k", lw=2, zorder=5)
    ax.set_xlabel(f"device time the trial had spent ({u}-seconds)")
    ax.set_ylabel(f"{objective} (%)" if objective.endswith("_acc") else objective)
    ax.set_title(f"{objective} against device time, every search trial")
    ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], color=c, marker=".", label=f"trial that ended {s}")
        for s, c in STATUS_COLOURS.items()
        if (points["status"] == s).any()
    ]
    if len(at):
        handles.append(
            Line2D([], [], ls="", marker="o", mfc="none", mec="k", label="report at an ASHA rung")
        )
    handles.append(Line2D([], [], color="k", lw=2, label="best value reachable within the budget"))
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    return fig


def measured_costs(runs: pd.DataFrame, kind: str = KIND_FINAL) -> pd.DataFrame:
    """One row per full-budget measurement (a final re-run, or a designed ablation's run with
    ``kind`` ablation): what it cost (wall, device time, images, passes, peak memory)."""
    order = ["final_rank", "seed"] if kind == KIND_FINAL else ["cell", "seed"]
    final = runs[runs["kind"] == kind].sort_values(order, kind="stable")
    cols = [
        "trial_id",
        "config_id",
        "cell_label",
        "seed",
        "status",
        "iterations_reached",
        COST_WALL_S,
        COST_DEVICE_S,
        COST_PSEUDO_IMAGES,
        *COST_PASSES,
        COST_PEAK_MEM_MIB,
        TEST_ACC,
    ]
    return final[cols].reset_index(drop=True)


def _fmt(v: object, digits: int = 1) -> str:
    if v is None or pd.isna(v):
        return tables.DASH
    return f"{float(v):,.{digits}f}" if isinstance(v, float) else f"{int(v):,}"


def cost(study: StudyView, page: Page) -> None:
    """The study's device time (pruned share), accuracy against it, and each final re-run's cost
    (a designed ablation: each run's cost)."""
    runs = study.runs
    page.section("Cost")
    if runs.empty or runs[COST_DEVICE_S].isna().all():
        page.missing("cost figures", "no run logged cost_device_s (runs from before cost metrics)")
        return
    u = unit(runs)
    t = totals(runs)
    share = f" ({100 * t[PRUNED] / t['all']:.0f} %)" if t["all"] > 0 else ""
    page.add(
        Para(
            f"This study used {t['all'] / 3600:.3g} {u}-hours in its trials ({t['all']:.0f} "
            f"{u}-seconds: allocated {u}s x wall seconds), {t[PRUNED] / 3600:.3g} of them{share} "
            "in pruned trials. "
            + "; ".join(f"{k}: {t[k]:.0f} s" for k in TRIAL_KINDS if t[k] > 0)
            + ". A trial's time runs from the start of its training to its last report, its final "
            "evaluation included; setting up (data, teacher, Ray) and the teacher's own training "
            "are not in it."
        )
    )
    table = by_kind_and_status(runs)
    display = table.assign(
        **{c: [_fmt(v) for v in table[c]] for c in ("device-seconds", "share %", "mean wall s")},
        **{"pseudo images": [_fmt(v) for v in table["pseudo images"]]},
    )
    page.add(TableBlock(display, f"Device time ({u}-seconds) per kind and outcome of run."))
    page.table_file("cost", "Device time per kind and outcome of run.", table, display)
    if (runs["kind"] == KIND_ABLATION).any():  # a designed ablation: no search to plot
        _measured_runs(runs, page, u, KIND_ABLATION)
        return
    points = trajectories(study)
    fig = cost_figure(points, front(points, study.data.mode), study.data.objective, u)
    if fig is None:
        page.missing("cost figure", "no search trial logged cost_device_s with the objective")
    else:
        rungs = ", ".join(str(r) for r in study.data.rungs) or "none"
        page.figure(
            fig,
            "cost_accuracy",
            f"{study.data.objective} at each report against the {u}-seconds the trial had spent "
            f"by then; open circles: the report ASHA judged at a rung (iterations {rungs}); "
            "black steps: the best value any trial had reached within that much device time.",
        )
    _measured_runs(runs, page, u, KIND_FINAL)


def _measured_runs(runs: pd.DataFrame, page: Page, u: str, kind: str) -> None:
    """What each final re-run (or each ablation run) cost."""
    what = "final re-run" if kind == KIND_FINAL else "ablation run"
    page.subsection(f"Cost per {what}")
    final = measured_costs(runs, kind)
    if final.empty:
        page.add(Para(f"No {what}s.", "note"))
        return
    first = (
        {"run": final["trial_id"], "config": final["config_id"]}
        if kind == KIND_FINAL
        else {"run": final["trial_id"], "cell": final["cell_label"]}
    )
    shown = pd.DataFrame(
        {
            **first,
            "seed": final["seed"],
            "status": final["status"],
            "iterations": final["iterations_reached"],
            "wall s": [_fmt(v) for v in final[COST_WALL_S]],
            f"{u}-s": [_fmt(v) for v in final[COST_DEVICE_S]],
            "pseudo images": [_fmt(v) for v in final[COST_PSEUDO_IMAGES]],
            **{
                c.removeprefix("cost_").replace("_", " "): [_fmt(v) for v in final[c]]
                for c in COST_PASSES
            },
            "peak MiB": [_fmt(v, 0) for v in final[COST_PEAK_MEM_MIB]],
            "test acc %": [_fmt(v, 2) for v in final[TEST_ACC]],
        }
    )
    page.add(
        TableBlock(
            shown,
            f"What each {what} cost: wall and device seconds, pseudo images, forward and "
            "backward passes of teacher, student and generator (evaluation passes included), "
            "peak memory (CUDA max allocated, else the worker's peak RSS).",
        )
    )
    name = "final_costs" if kind == KIND_FINAL else "ablation_costs"
    page.table_file(name, f"Cost per {what}.", final, shown)
