"""``zskt report``: a study's runs -> runs.parquet, tables, report.html (self-contained) and report.md.

The report is built once as a list of blocks (headings, text, tables, figures) and rendered twice:
to Markdown (figures as PNG files beside it, in ``figures/``) and to HTML (the same PNGs embedded as
base64, so the file opens offline on its own).

Output directory layout::

    runs.parquet               the runs table (analysis.schema, version in the file metadata)
    tables/<name>.{csv,md,tex} accuracy_per_config, table1, table2, search_trials
    figures/*.png              every figure of the report
    report.md                  Markdown, images from figures/
    report.html                self-contained HTML
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..names import IMAGES_ARTIFACT_DIR, REGIONS_GIF, REGIONS_PNG
from . import plots, rungs, schema, tables
from .load import StudyData, StudyRef, load_studies
from .paper import METHOD_DOC

# ------------------------------------------------------------------ document blocks


@dataclass
class Heading:
    text: str
    level: int = 2

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.text.lower()).strip("-")


@dataclass
class Para:
    text: str
    kind: str = ""  # "" | "note" | "warn"


@dataclass
class Bullets:
    items: list[str]


@dataclass
class TableBlock:
    df: pd.DataFrame
    caption: str = ""


@dataclass
class Img:
    path: str  # relative to the output directory
    caption: str


@dataclass
class ImgRow:
    images: list[Img]
    caption: str = ""


@dataclass
class Pre:
    text: str
    summary: str = ""  # HTML: collapsed under this summary when given


Block = Heading | Para | Bullets | TableBlock | Img | ImgRow | Pre


@dataclass
class ReportResult:
    study: str
    out_dir: Path
    html: Path
    markdown: Path
    parquet: Path
    tables: list[Path]
    figures: list[Path]  # every image of the report (plots and pseudo-image grids)
    n_runs: int
    n_excluded: int
    excluded: dict[str, int] = field(default_factory=dict)  # status -> count
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ entry points


def make_report(
    refs: StudyRef | Sequence[StudyRef],
    out_dir: str | Path,
    top_n: int = 3,
    with_optuna: bool = True,
    min_trials: int = rungs.DEFAULT_MIN_TRIALS,
    rung: int | None = None,
    importance: str = "fanova",
    progress: bool | None = None,
) -> ReportResult:
    """Load one study or several and write their report into ``out_dir``."""
    refs = [refs] if isinstance(refs, StudyRef) else list(refs)
    datas = load_studies(refs, with_optuna=with_optuna, progress=progress)
    return build_report(
        datas, out_dir, top_n=top_n, min_trials=min_trials, rung=rung, importance=importance
    )


def build_report(
    data: StudyData | Sequence[StudyData],
    out_dir: str | Path,
    top_n: int = 3,
    min_trials: int = rungs.DEFAULT_MIN_TRIALS,
    rung: int | None = None,
    importance: str = "fanova",
) -> ReportResult:
    """Write runs.parquet, tables/, figures/, report.md and report.html for loaded studies.

    One study: its report. Several: one Table 1 and one Table 2 over all their pairs and data
    sets (the paper's order), one accuracy table, then each study's ablation sections.
    """
    datas = [data] if isinstance(data, StudyData) else list(data)
    if not datas:
        raise ValueError("no study to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figdir = out / "figures"
    if figdir.exists():
        shutil.rmtree(figdir)
    figdir.mkdir()
    names = [d.ref.name or d.ref.experiment for d in datas]
    runs = (
        pd.concat([d.runs for d in datas], ignore_index=True) if len(datas) > 1 else datas[0].runs
    )
    objective, mode = datas[0].objective, datas[0].mode
    parquet = schema.write_parquet(runs, out / "runs.parquet", objective, mode, ",".join(names))
    opts = dict(top_n=top_n, min_trials=min_trials, rung=rung, importance=importance)
    blocks: list[Block] = []
    figures: list[Path] = []
    notes: list[str] = []
    table_list: list[tables.Table] = []
    if len(datas) == 1:
        b = _Builder(datas[0], out, figdir, **opts)
        b.build()
        blocks, figures, notes, table_list = b.blocks, b.figures, b.notes, b.tables
        title = f"zskt study report: {names[0]}"
    else:
        searched = list(dict.fromkeys(p for d in datas for p in d.searched))
        table_list = tables.build_tables(runs, searched, objective, mode)
        blocks.append(Heading(f"Study report: {len(datas)} studies ({', '.join(names)})", 1))
        blocks.append(
            Bullets(
                [
                    f"{n}: MLflow experiment {d.ref.experiment} at {d.ref.tracking_uri}; "
                    f"{len(d.runs)} runs; searched {', '.join(d.searched) or 'nothing'}"
                    for n, d in zip(names, datas, strict=True)
                ]
                + [
                    f"Generated: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by zskt report",
                    f"Method and published values: {METHOD_DOC}",
                ]
            )
        )
        if len({d.mode for d in datas}) > 1 or len({d.objective for d in datas}) > 1:
            notes.append(
                "the studies optimise different objectives; each pair's configuration is chosen on its own study's"
            )
        blocks += _tables_blocks(table_list, level=2)
        for i, d in enumerate(datas):
            b = _Builder(d, out, figdir, level=3, prefix=f"s{i}_", **opts)
            b.build(with_tables=False)
            blocks.append(Heading(f"Study {names[i]}", 2))
            blocks += b.blocks
            figures += b.figures
            notes += [f"{names[i]}: {n}" for n in b.notes]
            table_list += [
                t
                for t in b.tables
                if t.name.startswith(("search_trials", "effects", "importances"))
            ]
    table_paths: list[Path] = []
    for t in table_list:
        table_paths += t.write(out / "tables")
    md = out / "report.md"
    md.write_text(render_markdown(blocks))
    page = out / "report.html"
    title = title if len(datas) == 1 else f"zskt report: {', '.join(names)}"
    page.write_text(render_html(blocks, out, title=title))
    excluded = runs[runs["status"] != "completed"]
    return ReportResult(
        study=",".join(names),
        out_dir=out,
        html=page,
        markdown=md,
        parquet=parquet,
        tables=table_paths,
        figures=figures,
        n_runs=len(runs),
        n_excluded=len(excluded),
        excluded={str(k): int(v) for k, v in excluded["status"].value_counts().items()},
        notes=notes,
    )


def _tables_blocks(table_list: Sequence[tables.Table], level: int) -> list[Block]:
    out: list[Block] = [Heading("Tables", level)]
    for t in table_list:
        if t.name not in _TABLE_TITLES:
            continue
        out.append(Heading(_TABLE_TITLES[t.name], level + 1))
        if t.display.empty:
            out.append(Para(_EMPTY_TABLE.get(t.name, "No rows."), "note"))
        else:
            out.append(TableBlock(t.display, t.caption))
    return out


# ------------------------------------------------------------------ content


class _Builder:
    """The sections of one study's report (headings from ``level`` down)."""

    def __init__(
        self,
        data: StudyData,
        out: Path,
        figdir: Path,
        top_n: int = 3,
        min_trials: int = rungs.DEFAULT_MIN_TRIALS,
        rung: int | None = None,
        importance: str = "fanova",
        level: int = 2,
        prefix: str = "",
    ):
        self.data = data
        self.runs = data.runs
        self.out = out
        self.figdir = figdir
        self.top_n = top_n
        self.level = level
        self.prefix = prefix
        self.importance = importance
        self.blocks: list[Block] = []
        self.figures: list[Path] = []
        self.notes: list[str] = []
        self.searched = [p for p in data.searched]
        self.space = (data.spec.get("search") or {}).get("space") or {}
        self.search = self.runs[self.runs["kind"] == "search"]
        self.configs = tables.per_config(self.runs, self.searched, data.objective, data.mode)
        self.chosen = tables.chosen_configs(self.configs)
        self.rung_table = rungs.rung_values(data)
        self.budgets = rungs.budgets(self.rung_table, data)
        self.view = self._pick_budget(rung, min_trials)
        self.full = next((b for b in self.budgets if b.full), None)
        self.tables = tables.build_tables(self.runs, self.searched, data.objective, data.mode)
        self.tables.append(self._search_table())

    def _pick_budget(self, rung: int | None, min_trials: int) -> rungs.Budget | None:
        if rung is not None:
            for b in self.budgets:
                if b.iteration == rung and not b.full:
                    return b
            for b in self.budgets:
                if b.iteration == rung:
                    return b
            known = ", ".join(str(b.iteration) for b in self.budgets) or "none"
            self.notes.append(f"--rung {rung}: no such budget (budgets: {known}); default used")
        return rungs.default_budget(self.budgets, min_trials)

    # ---- helpers

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def h(self, text: str, sub: int = 0) -> Heading:
        return Heading(text, self.level + sub)

    def figure(self, fig: Any, name: str, caption: str) -> None:
        path = self.figdir / f"{self.prefix}{name}.png"
        fig.savefig(path, dpi=100)
        self.figures.append(path)
        self.add(Img(str(path.relative_to(self.out)), caption))

    def missing(self, what: str, why: str) -> None:
        self.notes.append(f"{what}: {why}")
        self.add(Para(f"No {what}: {why}.", "note"))

    def _rows(self, b: rungs.Budget | None) -> pd.DataFrame:
        if b is None:
            return self.rung_table.iloc[0:0]
        return rungs.at_budget(self.rung_table, b)

    # ---- sections

    def build(self, with_tables: bool = True) -> None:
        d = self.data
        if self.level == 2:
            self.add(Heading(f"Study report: {d.ref.name}", 1))
        info = [
            f"MLflow experiment: {d.ref.experiment} (tracking URI {d.ref.tracking_uri})",
            f"Parent run: {d.parent_run_id or 'none found'}",
            f"Search objective: {d.objective} ({d.mode})",
            f"Searched parameters: {', '.join(self.searched) or 'none'}",
            f"Search budget: {d.budget if d.budget is not None else '?'} iterations; ASHA rungs: "
            + (", ".join(str(r) for r in d.rungs) or "none"),
            f"Method and published values: {METHOD_DOC}",
            f"Generated: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by zskt report",
        ]
        if len(self.runs):
            info.insert(1, f"Browse its runs in MLflow: {_mlflow_link(d)}")
        if d.ref.source:
            info.insert(0, f"Study file: {d.ref.source}")
        if d.spec.get("description"):
            info.insert(0, f"Description: {d.spec['description']}")
        self.add(Bullets(info))
        self._runs_section()
        if with_tables:
            self.add(*_tables_blocks(self.tables, self.level))
        self._search_section()
        self._effects_section()
        self._importance_section()
        self._history_section()
        self._curves_section()
        self._transition_section()
        self._images_section()
        self._config_section()

    def _runs_section(self) -> None:
        runs = self.runs
        self.add(self.h("Runs and exclusions"))
        if runs.empty:
            self.add(Para("This study has no trial runs in MLflow yet.", "warn"))
            return
        counts = pd.crosstab(runs["kind"].astype(object), runs["status"].astype(object))
        counts = counts.reindex(index=[k for k in ("search", "final", "kdat") if k in counts.index])
        counts.insert(0, "kind", counts.index)
        counts["total"] = counts.drop(columns="kind").sum(axis=1)
        self.add(TableBlock(counts.reset_index(drop=True), "Runs per kind and status."))
        excluded = runs[runs["status"] != "completed"]
        by_status = excluded["status"].value_counts()
        parts = [f"{int(n)} {s}" for s, n in by_status.items()]
        text = (
            f"{len(runs)} runs in total; {len(excluded)} excluded from the accuracy and MTE "
            "tables and the final statistics" + (f" ({', '.join(parts)})." if parts else ".")
        )
        if by_status.get("pruned", 0):
            text += (
                " Pruned trials were stopped early by ASHA: the search plots and tables compare "
                "every trial at the same iteration (an ASHA rung, or the full budget), so the "
                "values of pruned trials count at the rungs they reached."
            )
        text += " Test accuracy comes only from the completed final seeded re-runs, never from search trials."
        self.add(Para(text, "warn" if len(excluded) else ""))
        if len(excluded):
            reasons = (
                excluded.assign(reason=excluded["status_reason"].fillna("(no reason recorded)"))
                .groupby(["kind", "status", "reason"], sort=True)
                .size()
                .reset_index(name="runs")
            )
            items = [f"{r.runs} × {r.kind} {r.status}: {r.reason}" for r in reasons.itertuples()]
            self.add(Para("Why they were excluded:"), Bullets(items))

    def _search_table(self) -> tables.Table:
        """Every search trial with its value at each budget (rungs, then the full budget)."""
        d = self.data
        s = self.search
        wide = pd.DataFrame({"run_id": s["run_id"]})
        cols = []
        for b in self.budgets:
            col = f"{d.objective}@{b.iteration}" + (" (full)" if b.full else "")
            vals = rungs.at_budget(self.rung_table, b).set_index("run_id")["value"]
            wide[col] = wide["run_id"].map(vals)
            cols.append(col)
        depth = np.zeros(len(s), dtype=float)
        last = np.full(len(s), np.nan)
        for i, col in enumerate(cols):
            v = wide[col].to_numpy(dtype=float)
            has = np.isfinite(v)
            depth[has] = i + 1
            last[has] = v[has]
        sign = -1.0 if d.mode == "max" else 1.0
        order = np.lexsort((np.nan_to_num(sign * last, nan=np.inf), -depth))
        s = s.iloc[order]
        wide = wide.iloc[order]
        numeric = pd.concat(
            [
                s[
                    [
                        "trial_id",
                        "optuna_number",
                        "status",
                        *[p for p in self.searched if p in s],
                        "iterations_reached",
                        "wall_time_s",
                        "status_reason",
                        "run_id",
                        "config_id",
                    ]
                ].reset_index(drop=True),
                wide[cols].reset_index(drop=True),
            ],
            axis=1,
        )
        fmt_digits = 2 if d.objective == "val_acc" else 4
        disp = pd.DataFrame(
            {
                "trial": s["trial_id"],
                "optuna #": s["optuna_number"],
                "status": s["status"],
                **{p: s[p] if p in s else None for p in self.searched},
                **{c: [tables.fmt_pm(v, None, digits=fmt_digits) for v in wide[c]] for c in cols},
                "iterations": s["iterations_reached"],
                "reason": s["status_reason"],
            }
        ).reset_index(drop=True)
        caption = (
            f"Every search trial with its {d.objective} at each ASHA rung (the first report at or "
            "after that iteration, the value ASHA judged) and at the full budget (completed trials "
            "only); deepest budget reached first, then best value there. Search trials never give "
            "test accuracy."
        )
        name = "search_trials" if not self.prefix else f"search_trials_{self.data.ref.name}"
        return tables.Table(name, caption, numeric, disp)

    def _search_section(self) -> None:
        d = self.data
        self.add(self.h("Search trials at equal budgets"))
        if self.search.empty:
            self.add(Para("No search trials.", "note"))
            return
        rows = []
        digits = 2 if d.objective == "val_acc" else 4
        for b in self.budgets:
            r = self._rows(b)
            vals = r["value"].astype(float)
            best = (vals.max() if d.mode == "max" else vals.min()) if len(vals) else math.nan
            rows.append(
                {
                    "budget": b.label,
                    "trials with a value": b.n,
                    f"best {d.objective}": tables.fmt_pm(best, None, digits=digits),
                    f"mean ± std {d.objective}": tables.fmt_pm(
                        *(tables.mean_std(vals)[:2]), digits=digits
                    ),
                    "default view": "yes" if self.view == b else "",
                }
            )
        self.add(
            TableBlock(
                pd.DataFrame(rows),
                "Budgets at which trials are compared: ASHA rungs and the full search budget.",
            )
        )
        if self.view is not None:
            self.add(
                Para(
                    f"Plots below compare trials at the {self.view.label} ({self.view.n} trials), "
                    "the deepest rung that at least the requested number of trials reached "
                    "(zskt report --min-trials, --rung); completed trials at the full budget are "
                    "shown apart."
                )
            )
        st = self.tables[-1]
        self.add(TableBlock(st.display, st.caption))

    def _effects_section(self) -> None:
        d = self.data
        self.add(self.h("Effect of each searched parameter"))
        if not self.searched:
            self.missing("parameter plots", "the study searched no parameters")
            return
        if self.search.empty:
            self.missing("parameter plots", "no search trials were recorded")
            return
        at = self._rows(self.view)
        full = (
            self._rows(self.full)
            if self.full is not None and self.full != self.view
            else self._rows(None)
        )
        label = self.view.label if self.view else "no budget"
        full_label = self.full.label if self.full else "full budget"
        self.add(
            Para(
                f"One plot per searched parameter. Left: {d.objective} of every trial at the "
                f"{label} ({len(at)} trials), marked by what became of the trial later, with the "
                "mean ± population std per level (the marginal effect). Right: the trials that "
                "completed the full budget, at it. Final re-runs (another budget) are in the tables."
            )
        )
        effect_rows = []
        for p in self.searched:
            eff = (
                rungs.marginal_effects(at, p, d.log_scale.get(p, False))
                if p in at
                else pd.DataFrame()
            )
            for r in eff.itertuples():
                effect_rows.append(
                    {
                        "parameter": p,
                        "level": r.level,
                        "trials": r.n,
                        f"{d.objective} mean ± std": tables.fmt_pm(r.mean, r.std, digits=3),
                    }
                )
            fig = plots.param_effect(
                at, eff, full, p, d.objective, d.mode, label, full_label, d.log_scale.get(p, False)
            )
            if fig is None:
                self.missing(f"plot for {p}", "no run logged this parameter")
                continue
            self.figure(
                fig,
                f"effect_{p}",
                f"{d.objective} against {p}: {label} ({len(at)} trials) and {full_label} ({len(full)} trials).",
            )
        if effect_rows:
            df = pd.DataFrame(effect_rows)
            self.add(
                TableBlock(
                    df,
                    f"Marginal effects at the {label}: mean ± population std of {d.objective} per "
                    "level of each parameter (quantile bins for continuous ones), with the trials "
                    "behind each.",
                )
            )
            name = "effects" if not self.prefix else f"effects_{self.data.ref.name}"
            self.tables.append(tables.Table(name, f"Marginal effects at the {label}.", df, df))

    def _importance_section(self) -> None:
        d = self.data
        self.add(self.h("Parameter importances"))
        if not self.searched:
            self.missing("parameter importances", "the study searched no parameters")
            return
        budgets = [self.view] if self.view is not None else []
        if self.full is not None and self.full != self.view:
            budgets.append(self.full)
        rows = []
        for b in budgets:
            at = self._rows(b)
            imp = rungs.importances(at, self.searched, self.space, d.mode, self.importance)
            if not imp.values:
                self.missing(f"parameter importances at the {b.label}", imp.note)
                continue
            for k, v in imp.values.items():
                rows.append(
                    {
                        "budget": b.label,
                        "parameter": k,
                        "importance": round(v, 4),
                        "trials": imp.n,
                        "method": imp.method,
                    }
                )
            fig = plots.importances(
                imp.values,
                d.objective,
                imp.method,
                f"Parameter importances at the {b.label}: {imp.n} trials",
            )
            rough = "; with so few trials they are a rough guide only" if imp.n < 10 else ""
            self.figure(
                fig,
                f"importances_{b.iteration}{'_full' if b.full else ''}",
                f"Importances of the searched parameters for {d.objective} at the {b.label}, "
                f"computed ({imp.method}, Optuna) from all {imp.n} trials with a value there{rough}.",
            )
            top = next(iter(imp.values))
            self.add(
                Para(
                    f"At the {b.label}: {top} matters most ({imp.values[top]:.2f} of the "
                    f"explained variance, {imp.method}, {imp.n} trials)."
                )
            )
        if rows:
            df = pd.DataFrame(rows)
            name = "importances" if not self.prefix else f"importances_{self.data.ref.name}"
            self.tables.append(tables.Table(name, "Parameter importances per budget.", df, df))
        elif not budgets:
            self.missing("parameter importances", "no search trial reported the objective")

    def _history_section(self) -> None:
        d = self.data
        self.add(self.h("Optimisation history"))
        number = self.search.set_index("run_id")["optuna_number"]
        fallback = pd.Series(
            np.arange(len(self.search)), index=self.search.sort_values("start_time")["run_id"]
        )

        def numbered(rows: pd.DataFrame) -> pd.DataFrame:
            n = rows["run_id"].map(number)
            n = n.where(n.notna(), rows["run_id"].map(fallback))
            return rows.assign(number=pd.to_numeric(n, errors="coerce"))

        at = numbered(self._rows(self.view))
        full = (
            numbered(self._rows(self.full))
            if self.full is not None and self.full != self.view
            else at.iloc[0:0]
        )
        label = self.view.label if self.view else "no budget"
        full_label = self.full.label if self.full else "full budget"
        fig = plots.optimisation_history(at, full, d.objective, d.mode, label, full_label)
        if fig is None:
            self.missing("optimisation history", "no search trial reported the objective")
            return
        source = (
            "Optuna trial numbers" if d.optuna_study is not None else "MLflow runs by start time"
        )
        self.figure(
            fig,
            "optuna_history",
            f"{d.objective} per trial ({source}) at the {label} (top) and at the {full_label} (bottom).",
        )

    def _best_search(self, n: int) -> pd.DataFrame:
        comp = self.search[
            (self.search["status"] == "completed") & self.search["objective"].notna()
        ]
        return comp.sort_values("objective", ascending=self.data.mode == "min").head(n)

    def _chosen_final_runs(self) -> pd.DataFrame:
        if self.chosen.empty:
            return self.runs.iloc[0:0]
        final = tables.completed(self.runs, "final")
        return final[final["config_id"].isin(self.chosen["config_id"])].sort_values("seed")

    def _curves_section(self) -> None:
        d = self.data
        self.add(self.h("Learning curves of the best trials"))
        curves = []
        for _, r in self._best_search(self.top_n).iterrows():
            label = f"search {r['trial_id']} ({d.objective} {r['objective']:.4g})"
            curves.append((label, d.metric_history(r["run_id"], "val_acc"), "-"))
        for _, r in self._chosen_final_runs().iterrows():
            curves.append(
                (
                    f"final {r['config_id']} seed {r['seed']}",
                    d.metric_history(r["run_id"], "val_acc"),
                    "--",
                )
            )
        n_search = sum(1 for c in curves if c[2] == "-" and len(c[1]))
        fig = plots.learning_curves(curves)
        if fig is None:
            self.missing("learning curves", "no completed trial logged val_acc over iterations")
            return
        self.figure(
            fig,
            "learning_curves",
            f"Validation accuracy against iteration: the {n_search} best completed search trial(s) "
            "(solid) and the final re-runs of the chosen configuration (dashed).",
        )

    def _transition_section(self) -> None:
        d = self.data
        self.add(self.h("Average transition curves"))
        self.add(
            Para(
                "Mean probability of the target class while stepping the student's input towards it "
                "(network A, the student, is stepped on; B is the teacher), averaged over images, "
                "targets and runs, as in the paper's Figure 4. The closer the curves, the lower the MTE."
            )
        )
        any_fig = False
        pairs = _pairs_of(self.runs)
        for i, key in enumerate(pairs):
            groups: list[tuple[str, list[dict[str, Any]]]] = []
            finals = self._chosen_final_runs()
            finals = finals[_match(finals, key)]
            if len(finals):
                title = f"zero-shot (final re-runs, config {finals['config_id'].iloc[0]})"
                groups.append((title, [d.transition_curves(r) for r in finals["run_id"]]))
            best = self._best_search(1)
            best = best[_match(best, key)]
            if not any(c for _, cs in groups for c in cs) and len(best):
                groups = [
                    (
                        "zero-shot (best search trial; no final curves)",
                        [d.transition_curves(best["run_id"].iloc[0])],
                    )
                ]
            kd = tables.completed(self.runs, "kdat")
            kd = kd[_match(kd, key)]
            for m, g in kd.groupby("m_per_class", sort=True):
                label = "full data" if int(m) == -1 else f"M={int(m)}"
                groups.append((f"KD+AT ({label})", [d.transition_curves(r) for r in g["run_id"]]))
            fig = plots.transition_curves(groups)
            if fig is None:
                continue
            any_fig = True
            pair = f"{key[1]} → {key[2]} on {key[0]}"
            self.figure(fig, f"transition_curves_{i}", f"Average transition curves, {pair}.")
        if not any_fig:
            self.missing("transition curves", "no run has the artifact mte/transition_curves.json")

    def _images_section(self) -> None:
        d = self.data
        self.add(self.h("Pseudo images from the generator"))
        finals = self._chosen_final_runs()
        cands = [(r["run_id"], f"final re-run {r['trial_id']}") for _, r in finals.iterrows()]
        cands += [
            (r["run_id"], f"search trial {r['trial_id']}")
            for _, r in self._best_search(1).iterrows()
        ]
        if self._regions_picture(cands):
            return
        for run_id, label in cands:
            files = [f for f in d.list_artifacts(run_id, "images") if _ITER.search(f)]
            if not files:
                continue
            files.sort(key=lambda f: int(_ITER.search(f).group(1)))
            pick = [
                files[i]
                for i in sorted(
                    {round(x) for x in np.linspace(0, len(files) - 1, min(4, len(files)))}
                )
            ]
            imgs = []
            for f in pick:
                local = d.download(run_id, f)
                if local is None:
                    continue
                it = int(_ITER.search(f).group(1))
                dst = self.figdir / f"{self.prefix}pseudo_{run_id[:8]}_iter{it:06d}.png"
                shutil.copyfile(local, dst)
                self.figures.append(dst)
                imgs.append(Img(str(dst.relative_to(self.out)), f"iteration {it}"))
            if imgs:
                self.add(
                    ImgRow(imgs, f"Generator samples during training, {label} (run {run_id}).")
                )
                return
        self.missing("pseudo-image grids", "no run has images/pseudo_iter*.png artifacts")

    def _regions_picture(self, cands: list[tuple[str, str]]) -> bool:
        """The toy problem's decision-region strip of the best configuration, if a run has one."""
        artifact = f"{IMAGES_ARTIFACT_DIR}/{REGIONS_PNG}"
        for run_id, label in cands:
            if artifact not in self.data.list_artifacts(run_id, IMAGES_ARTIFACT_DIR):
                continue
            local = self.data.download(run_id, artifact)
            if local is None:
                continue
            dst = self.figdir / f"regions_{run_id[:8]}.png"
            shutil.copyfile(local, dst)
            self.figures.append(dst)
            self.add(
                Para(
                    "2-D data: the generator's pseudo points (black) over the teacher's decision "
                    "regions (top) and the student's (bottom), from the start of training to the "
                    "end; the student never sees a real point (faint). An animated version is the "
                    f"run's artifact {IMAGES_ARTIFACT_DIR}/{REGIONS_GIF}."
                ),
                Img(str(dst.relative_to(self.out)), f"Decision regions, {label} (run {run_id})."),
            )
            return True
        return False

    def _config_section(self) -> None:
        d = self.data
        runs = self.runs
        self.add(self.h("Run configuration and hardware"))
        loop = d.spec.get("loop") if isinstance(d.spec.get("loop"), dict) else None
        if not loop and len(self.search):
            fixed = {}
            for c in schema.PARAM_NAMES:
                vals = self.search[c].dropna().unique() if c in self.search else []
                if len(vals) == 1 and c not in self.searched:
                    fixed[c] = vals[0]
            loop = fixed
        if loop:
            settings: dict[str, Any] = {}
            if d.spec.get("dataset"):
                settings["data set"] = d.spec["dataset"]
            if isinstance(d.spec.get("teacher"), dict):
                t = d.spec["teacher"]
                settings["teacher"] = (
                    f"{t.get('arch')} ({t['path']})" if t.get("path") else t.get("arch")
                )
            if isinstance(d.spec.get("student"), dict):
                settings["student"] = d.spec["student"].get("arch")
            settings.update({k: v for k, v in loop.items() if k not in self.searched})
            df = pd.DataFrame(
                {
                    "setting": list(settings),
                    "value": [tables.fmt_value(v) for v in settings.values()],
                }
            )
            self.add(
                self.h("Fixed settings", 1),
                TableBlock(
                    df, "Settings shared by every zero-shot trial (searched parameters left out)."
                ),
            )
        if not runs.empty:
            hw_cols = ["hw_device", "hw_gpu_name", "hw_hostname", "hw_torch_version"]
            g = runs.assign(**{c: runs[c].fillna("?") for c in hw_cols})
            hw = (
                g.groupby(["kind", *hw_cols], sort=True)
                .agg(
                    runs=("run_id", "size"),
                    wall_h=("wall_time_s", lambda s: s.sum() / 3600),
                    iters_per_s=("iters_per_s", "mean"),
                )
                .reset_index()
                .rename(columns={c: c.removeprefix("hw_") for c in hw_cols})
            )
            hw["wall_h"] = hw["wall_h"].map(lambda v: f"{v:.3g}")
            hw["iters_per_s"] = hw["iters_per_s"].map(
                lambda v: tables.DASH if pd.isna(v) else f"{v:.3g}"
            )
            self.add(
                self.h("Hardware", 1),
                TableBlock(hw, "Where the runs ran; wall_h: total wall time in hours."),
            )
            span = runs["start_time"].min(), runs["end_time"].max()
            if not pd.isna(span[0]):
                self.add(
                    Para(
                        f"Runs started {span[0]:%Y-%m-%d %H:%M} UTC, last ended {span[1]:%Y-%m-%d %H:%M} UTC."
                    )
                )
        if d.spec:
            self.add(self.h("Resolved study (study.yaml of the parent run)", 1))
            self.add(Pre(yaml.safe_dump(d.spec, sort_keys=False), "study.yaml"))
        else:
            self.missing("study.yaml", "the parent run has no study.yaml artifact")


_ITER = re.compile(r"pseudo_iter(\d+)\.png$")
_TABLE_TITLES = {
    "accuracy_per_config": "Accuracy per configuration (final re-runs)",
    "table1": "Table 1: teacher, zero-shot and KD+AT accuracy",
    "table2": "Table 2: Mean Transition Error",
}
_EMPTY_TABLE = {
    "accuracy_per_config": "No completed final re-runs: test accuracy is reported only from final seeded re-runs.",
    "table1": "No completed final or KD+AT runs.",
    "table2": "No completed final or KD+AT runs.",
}


def _mlflow_link(d: StudyData) -> str:
    """The experiment's runs page (after ``mlflow ui`` for a local store)."""
    exp_id = (
        str(d.runs["experiment_id"].dropna().iloc[0])
        if d.runs["experiment_id"].notna().any()
        else "?"
    )
    uri = d.ref.tracking_uri
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{exp_id}/runs"
    return (
        f"`mlflow ui --backend-store-uri {uri}`, then "
        f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs"
    )


def _pairs_of(runs: pd.DataFrame) -> list[tuple]:
    ok = runs[runs["status"] == "completed"].dropna(subset=tables.PAIR)
    return list(dict.fromkeys(tuple(r) for r in ok[tables.PAIR].itertuples(index=False)))


def _match(df: pd.DataFrame, key: tuple) -> pd.Series:
    m = pd.Series(True, index=df.index)
    for col, v in zip(tables.PAIR, key, strict=True):
        m &= (df[col] == v).fillna(False).astype(bool)
    return m


# ------------------------------------------------------------------ renderers


def _md_escape(text: str) -> str:
    return text.replace("<", "&lt;")


def render_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}\n")
        elif isinstance(b, Para):
            prefix = {"note": "> **Note.** ", "warn": "> **Excluded runs.** "}.get(b.kind, "")
            out.append(prefix + _md_escape(b.text) + "\n")
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {_md_escape(i)}" for i in b.items) + "\n")
        elif isinstance(b, TableBlock):
            if b.caption:
                out.append(f"*{_md_escape(b.caption)}*\n")
            out.append(tables.to_markdown(b.df))
        elif isinstance(b, Img):
            out.append(f"![{b.caption}]({b.path})\n\n*{_md_escape(b.caption)}*\n")
        elif isinstance(b, ImgRow):
            out.append(" ".join(f"![{i.caption}]({i.path})" for i in b.images) + "\n")
            out.append(
                f"*{_md_escape(b.caption)} " + "; ".join(i.caption for i in b.images) + ".*\n"
            )
        elif isinstance(b, Pre):
            out.append(f"```yaml\n{b.text.rstrip()}\n```\n")
    return "\n".join(out)


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;margin:24px auto;
padding:0 16px;color:#1b1f24;line-height:1.45}
h1{border-bottom:2px solid #d0d7de;padding-bottom:6px}h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:8px 0 4px;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f7}tr:nth-child(even) td{background:#fafbfc}
.caption{font-size:12.5px;color:#57606a;margin:2px 0 14px}
figure{margin:12px 0 20px}figure img{max-width:100%;border:1px solid #e5e7eb}
.row{display:flex;flex-wrap:wrap;gap:12px}.row figure{margin:4px 0}.row img{width:240px;image-rendering:pixelated}
.note{background:#f6f8fa;border-left:4px solid #8c959f;padding:6px 10px}
.warn{background:#fff8c5;border-left:4px solid #d4a72c;padding:6px 10px}
pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:12px}nav{font-size:13px}
nav a{margin-right:12px}
"""


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(tables.fmt_value(v))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(blocks: Sequence[Block], base: Path, title: str) -> str:
    """Self-contained HTML: every image is embedded as a base64 data URI."""
    parts: list[str] = []
    toc = [b for b in blocks if isinstance(b, Heading) and b.level == 2]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f'<h{b.level} id="{b.anchor}">{html.escape(b.text)}</h{b.level}>')
            if b.level == 1 and toc:
                links = "".join(f'<a href="#{h.anchor}">{html.escape(h.text)}</a>' for h in toc)
                parts.append(f"<nav>{links}</nav>")
        elif isinstance(b, Para):
            cls = f' class="{b.kind}"' if b.kind else ""
            parts.append(f"<p{cls}>{html.escape(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, TableBlock):
            parts.append(_html_table(b.df))
            if b.caption:
                parts.append(f'<p class="caption">{html.escape(b.caption)}</p>')
        elif isinstance(b, Img):
            parts.append(
                f'<figure><img src="{_data_uri(base / b.path)}" alt="{html.escape(b.caption)}">'
                f'<figcaption class="caption">{html.escape(b.caption)}</figcaption></figure>'
            )
        elif isinstance(b, ImgRow):
            figs = "".join(
                f'<figure><img src="{_data_uri(base / i.path)}" alt="{html.escape(i.caption)}">'
                f'<figcaption class="caption">{html.escape(i.caption)}</figcaption></figure>'
                for i in b.images
            )
            parts.append(
                f'<div class="row">{figs}</div><p class="caption">{html.escape(b.caption)}</p>'
            )
        elif isinstance(b, Pre):
            pre = f"<pre>{html.escape(b.text)}</pre>"
            parts.append(
                f"<details><summary>{html.escape(b.summary)}</summary>{pre}</details>"
                if b.summary
                else pre
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
