"""Seed statistics in a report: a designed ablation's cells and comparisons, a search's re-runs.

An ablation study (an ``ablation`` section in its study.yaml) gets, for test accuracy and test
MTE (validation accuracy where its runs read no test data): each cell's mean, standard deviation
and 95 % interval over seeds with its failures; each factor level against its reference level
and each control against the reference cell, paired on seeds, with Holm's correction across every
comparison of the report and a verdict; for a full factorial the ANOVA table and the interaction
plot. A search study gets the same intervals for its final re-runs and, when several
configurations were re-run, whether the best is distinguishable from the runner-up.

The arithmetic is :mod:`analysis.stats` (method doc, section 8); the design, with its cells and
comparisons, is rebuilt from study.yaml by :func:`zskt_ray.study.design.make_design`, which gives
the cell ids the runs were tagged with.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ...config import OBJECTIVE_FIELDS
from ...names import (
    FULL_FACTORIAL,
    KIND_ABLATION,
    KIND_FINAL,
    KIND_KDAT,
    MTE,
    SECTION_ABLATION,
    TEST_ACC,
    VAL_ACC,
)
from ...study.design import Design, DesignError, make_design
from .. import plots, stats, tables
from ..blocks import Bullets, Heading, Para, TableBlock
from ..paper import METHOD_DOC
from .overview import generated, identity
from .page import Page
from .view import StudyView


@dataclass(frozen=True)
class Metric:
    column: str  # the runs table's column
    label: str
    better: str  # "max" or "min"
    digits: int  # decimals shown


TEST_METRICS = (
    Metric(TEST_ACC, "test accuracy (%)", "max", 2),
    Metric(MTE, "test MTE", "min", 4),
)
VALIDATION_METRICS = (Metric(VAL_ACC, "validation accuracy (%)", "max", 2),)


def is_ablation(study: StudyView) -> bool:
    """The study is a designed ablation (its study.yaml has an ablation section)."""
    return bool(study.data.spec.get(SECTION_ABLATION))


def metrics_of(runs: pd.DataFrame) -> tuple[Metric, ...]:
    """Test accuracy and test MTE where some run has them, else validation accuracy."""
    found = tuple(m for m in TEST_METRICS if m.column in runs and runs[m.column].notna().any())
    return found or VALIDATION_METRICS


def design_of(spec: Mapping[str, Any]) -> tuple[Design | None, str]:
    """The ablation's design from study.yaml (``(None, why)`` when it cannot be rebuilt)."""
    section = spec.get(SECTION_ABLATION) or {}
    base = {
        **(spec.get("loop") or {}),
        "dataset": spec.get("dataset"),
        "teacher_arch": (spec.get("teacher") or {}).get("arch"),
        "student_arch": (spec.get("student") or {}).get("arch"),
    }
    try:
        design = make_design(
            {k: v for k, v in base.items() if v is not None},
            section.get("factors") or {},
            section.get("design") or FULL_FACTORIAL,
            section.get("seeds") or (),
            section.get("controls") or None,
            section.get("references") or None,
        )
    except (DesignError, TypeError, ValueError) as e:
        return None, f"the design in study.yaml could not be rebuilt ({e})"
    return design, ""


# ------------------------------------------------------------------ the ablation sections


def summary(study: StudyView, page: Page) -> None:
    """The title and what the ablation is: its cells, seeds, budget and metrics."""
    d = study.data
    if page.standalone:
        page.add(Heading(f"Ablation report: {d.ref.name}", 1))
    design, why = design_of(d.spec)
    loop = d.spec.get("loop") or {}
    info = identity(study)
    if design is not None:
        info += _design_lines(design, loop.get("iterations"))
    else:
        info.append(f"Design: unknown ({why})")
    info += [f"Method and statistics: {METHOD_DOC}, section 8", generated()]
    page.add(Bullets([i for i in info if i is not None]))


def _design_lines(design: Design, iterations: Any) -> list[str]:
    factors = "; ".join(
        f"{f.name} in {{{', '.join(map(_show, f.levels))}}} (reference {_show(f.reference)})"
        for f in design.factors
    )
    controls = [c.label for c in design.cells if c.control is not None]
    kind = design.kind.replace("_", " ")
    return [
        f"Design: {kind} over {factors or 'no factor'}"
        + (f"; controls: {', '.join(controls)}" if controls else ""),
        f"{len(design.cells)} cells × seeds {', '.join(map(str, design.seeds))} = "
        f"{len(design.runs)} runs, each at the full budget of {iterations} iterations; seed s "
        "is the same seed in every cell, so cells are compared seed by seed (paired)",
        f"Reference cell: {design.reference_cell.label}",
    ]


def statistics(study: StudyView, page: Page) -> None:
    """Per cell intervals, paired comparisons with verdicts, ANOVA and interaction plots."""
    design, why = design_of(study.data.spec)
    runs = study.runs[study.runs["kind"] == KIND_ABLATION]
    if runs.empty:
        page.section("Ablation: cells over seeds")
        page.missing("ablation statistics", "the study has no ablation runs in MLflow yet")
        return
    metrics = metrics_of(runs)
    factors = [f.name for f in design.factors] if design is not None else []
    frames = {m.column: stats.tidy(runs, m.column, factors=factors) for m in metrics}
    labels = _labels(runs, design)
    # A comparison of objectives opens with its methods side by side (the paper's Table 1).
    if design is not None and any(f.name in OBJECTIVE_FIELDS for f in design.factors):
        _methods(page, study, frames, metrics, design, labels)
    page.section("Ablation: cells over seeds")
    if design is None:
        page.add(Para(f"Per cell statistics only: {why}.", "warn"))
    expected = _expected(design, runs)
    _cells(page, frames, metrics, labels, expected, design)
    _kdat_reference(study, page, metrics)
    if design is None:
        return
    table = _comparisons(page, frames, metrics, design)
    _verdicts(page, table, design, metrics)
    if design.kind == FULL_FACTORIAL and design.factors:
        _anova(page, frames, metrics, design)


def _labels(runs: pd.DataFrame, design: Design | None) -> dict[str, str]:
    """Cell id -> what a reader sees (the reference cell marked)."""
    out = {
        str(c): str(lbl)
        for c, lbl in zip(runs["cell"], runs["cell_label"].fillna(runs["cell"]), strict=True)
    }
    if design is not None:
        out.update({c.id: c.label for c in design.cells})
        ref = design.reference_cell
        out[ref.id] = f"{ref.label} (reference)"
    return out


def _expected(design: Design | None, runs: pd.DataFrame) -> dict[str, int]:
    """Cell id -> runs of the design with no MLflow run at all (not started, or lost)."""
    if design is None:
        return {}
    have = set(zip(runs["cell"].astype(str), pd.to_numeric(runs["seed"]).astype("Int64")))
    out: dict[str, int] = {}
    for r in design.runs:
        if (r.cell.id, r.seed) not in have:
            out[r.cell.id] = out.get(r.cell.id, 0) + 1
    return out


def _cells(
    page: Page,
    frames: Mapping[str, pd.DataFrame],
    metrics: Sequence[Metric],
    labels: Mapping[str, str],
    expected: Mapping[str, int],
    design: Design | None,
) -> None:
    order = [c.id for c in design.cells] if design is not None else None
    page.add(
        Para(
            "Per cell: n (seeds with a value) of the seeds run, the runs that failed (diverged: a "
            "loss became NaN or infinite) and the failure rate, then the mean, the sample standard "
            "deviation and the 95 % t-interval of the mean over the seeds with a value. Failed runs "
            "are counted, never dropped silently; an interval describes only the seeds that "
            "finished."
        )
    )
    for m in metrics:
        summ = stats.cell_summary(frames[m.column])
        if order is not None:
            rank = {c: i for i, c in enumerate(order)}
            summ = summ.sort_values("cell", key=lambda s: s.map(rank).fillna(len(rank)))
        summ = summ.reset_index(drop=True)
        summ.insert(1, "cell_label", summ["cell"].map(labels))
        summ["not_run"] = summ["cell"].map(expected).fillna(0).astype(int)
        missing = [c for c in expected if c not in set(summ["cell"])]
        for c in missing:  # a cell with no run at all
            summ.loc[len(summ)] = {"cell": c, "cell_label": labels.get(c, c), "n": 0}
            summ.loc[len(summ) - 1, "not_run"] = expected[c]
        page.subsection(f"Per cell: {m.label}")
        fig = plots.cell_intervals(summ, m.label, m.better)
        if fig is not None:
            page.figure(
                fig,
                f"cells_{m.column}",
                f"{m.label}: mean and 95 % interval over seeds per cell ({m.better} is better).",
            )
        display = _cell_display(summ, m.digits)
        page.add(TableBlock(display, f"{m.label} per cell, over seeds."))
        page.table_file(f"ablation_cells_{m.column}", f"{m.label} per cell.", summ, display)


def _cell_display(summ: pd.DataFrame, digits: int) -> pd.DataFrame:
    def failures(r: pd.Series) -> str:
        n_failed = int(r.get("n_failed") or 0)
        if not n_failed:
            return "0"
        div = int(r.get("n_diverged") or 0)
        return f"{n_failed} ({div} diverged)" if div else str(n_failed)

    rows = []
    for _, r in summ.iterrows():
        runs = int(r.get("n_runs") or 0) if pd.notna(r.get("n_runs")) else 0
        other = []
        if r.get("n_unfinished"):
            other.append(f"{int(r['n_unfinished'])} unfinished")
        if r.get("n_missing"):
            other.append(f"{int(r['n_missing'])} without the metric")
        if r.get("not_run"):
            other.append(f"{int(r['not_run'])} not run")
        note = "; ".join(filter(None, [str(r.get("note") or ""), *other]))
        rows.append(
            {
                "cell": r["cell_label"],
                "n / seeds run": f"{int(r['n'])} / {runs}",
                "failures": failures(r),
                "failure rate": _pct(r.get("failure_rate")),
                "mean": _num(r.get("mean"), digits),
                "std": _num(r.get("std"), digits),
                "95 % interval": _interval(r.get("ci_low"), r.get("ci_high"), digits),
                "note": note,
            }
        )
    return pd.DataFrame(rows)


def _methods(
    page: Page,
    study: StudyView,
    frames: Mapping[str, pd.DataFrame],
    metrics: Sequence[Metric],
    design: Design,
    labels: Mapping[str, str],
) -> None:
    """Table 1's layout with a row per method (cell) of the pair: each method's mean over seeds
    and its paired difference against the reference cell (ZSKT, where the objective's reference
    is the paper's), for a design whose factors include the generator's or student's objective."""
    ref = design.reference_cell
    page.section("Table 1 layout: methods for the pair")
    page.add(
        Para(
            "One row per cell of the design, named by its method: test values as mean ± sample "
            "standard deviation over the seeds with a value (n), and the paired difference "
            f"against {labels[ref.id]} over the seeds both have, with its 95 % interval (t, or BCa "
            f"bootstrap from {stats.BOOTSTRAP_MIN_N} seeds). The intervals are per row, "
            "uncorrected; the tests with Holm's correction are in the paired comparisons below."
        )
    )
    runs = study.runs[study.runs["kind"] == KIND_ABLATION]
    teacher = pd.to_numeric(runs.get("teacher_test_acc"), errors="coerce").dropna()
    base = design.base
    pair = f"{base.teacher_arch.upper()} → {base.student_arch.upper()}"
    rows = []
    for cell in design.cells:
        row: dict[str, str] = {
            "teacher → student": pair,
            "data set": base.dataset,
            "teacher": _num(teacher.mean() if len(teacher) else None),
            "method": labels[cell.id],
        }
        for m in metrics:
            frame = frames[m.column]
            values = frame.loc[(frame["cell"] == cell.id) & (frame["outcome"] == stats.OK)]
            v = values["value"].to_numpy(dtype=float)
            row[m.label] = (
                tables.fmt_pm(v.mean(), v.std(ddof=1) if len(v) > 1 else None, len(v), m.digits)
                if len(v)
                else tables.DASH
            )
            head = f"{m.label}: difference against the reference"
            if cell.id == ref.id:
                row[head] = "reference"
                continue
            cmp = stats.compare_pair(frame, (cell.id,), (ref.id,))
            row[head] = (
                f"{_signed(cmp['diff'], m.digits)} "
                f"{_interval(cmp['ci_low'], cmp['ci_high'], m.digits, signed=True)}"
                f" (n={cmp['n']})"
                if cmp["n"]
                else tables.DASH
            )
        rows.append(row)
    display = pd.DataFrame(rows)
    page.add(TableBlock(display, "Methods for the pair: test values and paired differences."))
    page.table_file("ablation_methods", "Methods for the pair.", display, display)


def _kdat_reference(study: StudyView, page: Page, metrics: Sequence[Metric]) -> None:
    """The KD+AT baseline, when the study ran it: a reference point beside the cells, not a
    comparison (its seeds are not the design's runs)."""
    kd = tables.completed(study.runs, KIND_KDAT)
    if kd.empty:
        return
    parts = []
    for m in metrics:
        values = pd.to_numeric(kd[m.column], errors="coerce").dropna().to_numpy(dtype=float)
        low, high, note = stats.t_interval(values)
        text = f"{m.label} {_num(values.mean() if len(values) else None, m.digits)}"
        text += f" {_interval(low, high, m.digits)}" if np.isfinite(low) else f" ({note})"
        parts.append(f"{text}, n={len(values)}")
    page.add(
        Para(
            "KD+AT baseline with the same teacher (few-shot or full data, real images): "
            + "; ".join(parts)
            + ". A reference point, not one of the design's cells: it is not in the comparisons."
        )
    )


def _comparisons(
    page: Page,
    frames: Mapping[str, pd.DataFrame],
    metrics: Sequence[Metric],
    design: Design,
) -> pd.DataFrame:
    """Every contrast on every metric, Holm-corrected together."""
    contrasts = design.contrasts()
    page.section("Ablation: paired comparisons")
    if not contrasts:
        page.missing("comparisons", "the design has a single cell")
        return pd.DataFrame()
    parts = [
        stats.compare(frames[m.column], contrasts, m.better, m.label, holm=False) for m in metrics
    ]
    table = stats.correct(pd.concat(parts, ignore_index=True))
    digits = table["metric"].map({m.label: m.digits for m in metrics}).to_numpy()
    n_tested = int(np.isfinite(table["p"].to_numpy(dtype=float)).sum())
    page.add(
        Para(
            "Each level of a factor against the factor's reference level (in a full factorial "
            "averaged over the other factors, cell by matching cell), and each control against "
            "the reference cell: the mean of the per-seed differences treatment − reference over "
            "the seeds both sides have, its 95 % interval (t: the paired t-interval; bootstrap: "
            f"BCa, from {stats.BOOTSTRAP_MIN_N} seeds), the paired t-test's and the Wilcoxon "
            "signed-rank test's p-values, and the t-test's p-value after Holm's correction across "
            f"all {n_tested} tested comparisons of this report (both metrics). Verdict: better or "
            "worse where the corrected p is below 0.05, in the metric's direction; else not "
            "distinguishable, with the smallest true difference this many seeds would detect "
            "with probability 0.8 (from the spread of the differences)."
        )
    )
    display = pd.DataFrame(
        {
            "metric": table["metric"],
            "comparison": table["contrast"],
            "n": table["n"].astype(int),
            "difference": [_signed(v, k) for v, k in zip(table["diff"], digits)],
            "95 % interval": [
                f"{_interval(lo, hi, k, signed=True)} ({m})" if m else tables.DASH
                for lo, hi, m, k in zip(
                    table["ci_low"], table["ci_high"], table["ci_method"], digits
                )
            ],
            "p (t)": table["p_t"].map(_p),
            "p (Wilcoxon)": table["p_wilcoxon"].map(_p),
            "p (Holm)": table["p_holm"].map(_p),
            "verdict": table["verdict"],
            "smallest detectable": [_num(v, k) for v, k in zip(table["mde"], digits)],
            "note": table["note"].fillna(""),
        }
    )
    page.add(TableBlock(display, "Paired comparisons, treatment − reference."))
    page.table_file("ablation_comparisons", "Paired comparisons.", table, display)
    return table


def _verdicts(page: Page, table: pd.DataFrame, design: Design, metrics: Sequence[Metric]) -> None:
    """The comparisons in words, the controls first (whether the method's ingredient helps)."""
    if table.empty:
        return
    controls = {c.control for c in design.cells if c.control is not None}
    first = table["factor"].isin(controls)
    rows = pd.concat([table[first], table[~first]])
    digits = {m.label: m.digits for m in metrics}
    items = [
        f"{r['metric']}, {r['contrast']}: {stats.summary_line(r, digits[r['metric']])}"
        for _, r in rows.iterrows()
    ]
    page.add(Para("In words:"), Bullets(items))


def _anova(
    page: Page,
    frames: Mapping[str, pd.DataFrame],
    metrics: Sequence[Metric],
    design: Design,
) -> None:
    """Main effects and two-factor interactions with seeds as blocks, and interaction plots."""
    cells = [c.id for c in design.cells if c.control is None]
    factors = [f.name for f in design.factors]
    page.section("Ablation: analysis of variance")
    page.add(
        Para(
            f"value ~ seed + {' + '.join(factors)}"
            + (" + two-factor interactions" if len(factors) > 1 else "")
            + ", by least squares with type II sums of squares (statsmodels), seeds as blocks, "
            "over the design's cells without the controls. Not corrected for multiple testing: "
            "the verdicts are the comparisons'."
        )
    )
    for m in metrics:
        result = stats.anova(frames[m.column], factors, cells=cells)
        k = m.digits
        page.subsection(f"ANOVA: {m.label}")
        if result.table.empty:
            page.missing(f"ANOVA of {m.label}", result.note)
            continue
        t = result.table
        display = pd.DataFrame(
            {
                "term": t["term"],
                "df": t["df"].map(lambda v: f"{v:g}"),
                "sum of squares": [_num(v, k) for v in t["sum_sq"]],
                "mean square": [_num(v, k) for v in t["mean_sq"]],
                "F": [_num(v, 2) for v in t["F"]],
                "p": t["p"].map(_p),
                "partial η²": [_num(v, 2) for v in t["partial_eta_sq"]],
            }
        )
        caption = f"ANOVA of {m.label} ({result.n} runs)" + (
            f"; {result.note}" if result.note else ""
        )
        page.add(TableBlock(display, caption + "."))
        page.table_file(f"ablation_anova_{m.column}", caption + ".", t, display)
        for x, trace in itertools.combinations(factors, 2):
            means = stats.interaction_means(frames[m.column], x, trace, cells=cells)
            fig = plots.interaction(means, x, trace, m.label, m.better)
            if fig is not None:
                page.figure(
                    fig,
                    f"interaction_{m.column}_{x}_{trace}",
                    f"Interaction of {x} and {trace} on {m.label}: mean and 95 % interval over "
                    "seeds per pair of levels; parallel lines mean no interaction.",
                )


# ------------------------------------------------------------------ a search's final re-runs


def final_seed_statistics(study: StudyView, page: Page) -> None:
    """The final re-runs' intervals per configuration; best against the runner-up (paired)."""
    final = study.runs[study.runs["kind"] == KIND_FINAL]
    if final.empty or is_ablation(study):
        return
    metrics = metrics_of(final)
    page.section("Final re-runs: intervals over seeds")
    summaries, parts = [], []
    digits = {m.label: m.digits for m in metrics}
    for m in metrics:
        try:
            summ, table = stats.final_seed_statistics(study.runs, m.column, m.better)
        except ValueError as e:
            page.missing(f"seed statistics of {m.label}", str(e))
            return
        summaries.append(summ.assign(metric=m.label))
        if len(table):
            parts.append(table.assign(metric=m.label))
    display = _final_display(summaries, digits)
    front = len(study.data.objectives) > 1  # ranks are the order chosen along the Pareto front
    rank = (
        "its place in the order the configurations were chosen from the Pareto front"
        if front
        else "its place in the search, by the validation objective"
    )
    page.add(
        Para(
            f"Each re-run configuration (rank: {rank}; configuration: its config id): mean, "
            "sample standard deviation and 95 % t-interval over its seeds, failures counted."
        ),
        TableBlock(display, "Final re-runs per configuration."),
    )
    page.table_file("final_seed_statistics", "Final re-runs per configuration.", display, display)
    if not parts:
        page.add(Para("One configuration was re-run: nothing to compare it with.", "note"))
        return
    table = stats.correct(pd.concat(parts, ignore_index=True))
    items = [
        f"{r['metric']}, {r['contrast']}: {stats.summary_line(r, digits[r['metric']])}"
        for _, r in table.iterrows()
    ]
    runner_up = table.groupby("metric", sort=False).head(1)  # each metric's first: the runner-up
    said = [
        f"on {r['metric']} the best configuration is "
        + ("" if r["verdict"] in (stats.BETTER, stats.WORSE) else "not ")
        + f"distinguishable from the runner-up ({stats.summary_line(r, digits[r['metric']])})"
        for _, r in runner_up.iterrows()
    ]
    if front:  # no configuration of a front is best: rank 0 is the first objective's best
        said = [x.replace("the best configuration", "rank 0") for x in said]
    page.add(
        Para(
            ("Rank 0" if front else "The best-ranked configuration")
            + " against each other re-run configuration, paired on "
            "the seeds they share, Holm-corrected across these comparisons: "
            + ("; ".join(said) if said else "no runner-up with shared seeds")
            + "."
        ),
        Bullets(items),
    )


def _final_display(summaries: Sequence[pd.DataFrame], digits: Mapping[str, int]) -> pd.DataFrame:
    """The per-configuration summaries of every metric as one table to read."""
    frames = []
    for s in summaries:
        k = [digits[m] for m in s["metric"]]
        frames.append(
            pd.DataFrame(
                {
                    "metric": s["metric"],
                    "rank": s["final_rank"],
                    "configuration": s["cell"],
                    "n / seeds run": [f"{int(n)} / {int(r)}" for n, r in zip(s["n"], s["n_runs"])],
                    "failures": s["n_failed"],
                    "mean": [_num(v, d) for v, d in zip(s["mean"], k)],
                    "std": [_num(v, d) for v, d in zip(s["std"], k)],
                    "95 % interval": [
                        _interval(lo, hi, d) for lo, hi, d in zip(s["ci_low"], s["ci_high"], k)
                    ],
                    "note": s["note"],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------ formatting


def _show(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _finite(v: Any) -> bool:
    return v is not None and not pd.isna(v) and bool(np.isfinite(float(v)))


def _num(v: Any, digits: int = 2) -> str:
    return f"{float(v):.{digits}f}" if _finite(v) else tables.DASH


def _signed(v: Any, digits: int = 2) -> str:
    return f"{float(v):+.{digits}f}" if _finite(v) else tables.DASH


def _interval(low: Any, high: Any, digits: int = 2, signed: bool = False) -> str:
    if not _finite(low):
        return tables.DASH
    f = _signed if signed else _num
    return f"[{f(low, digits)}, {f(high, digits)}]"


def _p(v: Any) -> str:
    if v is None or pd.isna(v):
        return tables.DASH
    return f"{float(v):.2g}"


def _pct(v: Any) -> str:
    if v is None or pd.isna(v):
        return tables.DASH
    return f"{100 * float(v):.0f} %"
