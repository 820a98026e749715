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
from . import plots, schema, tables
from .load import StudyData, StudyRef, load_study

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
    ref: StudyRef, out_dir: str | Path, top_n: int = 3, with_optuna: bool = True
) -> ReportResult:
    """Load a study and write its report into ``out_dir``."""
    return build_report(load_study(ref, with_optuna=with_optuna), out_dir, top_n=top_n)


def build_report(data: StudyData, out_dir: str | Path, top_n: int = 3) -> ReportResult:
    """Write runs.parquet, tables/, figures/, report.md and report.html for a loaded study."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figdir = out / "figures"
    if figdir.exists():
        shutil.rmtree(figdir)
    figdir.mkdir()
    runs = data.runs
    parquet = schema.write_parquet(
        runs, out / "runs.parquet", data.objective, data.mode, data.ref.name or ""
    )

    b = _Builder(data, out, figdir, top_n)
    b.build()
    table_paths: list[Path] = []
    for t in b.tables:
        table_paths += t.write(out / "tables")
    md = out / "report.md"
    md.write_text(render_markdown(b.blocks))
    page = out / "report.html"
    page.write_text(render_html(b.blocks, out, title=f"zskt study report: {data.ref.name}"))
    excluded = runs[runs["status"] != "completed"]
    return ReportResult(
        study=data.ref.name or "",
        out_dir=out,
        html=page,
        markdown=md,
        parquet=parquet,
        tables=table_paths,
        figures=b.figures,
        n_runs=len(runs),
        n_excluded=len(excluded),
        excluded={str(k): int(v) for k, v in excluded["status"].value_counts().items()},
        notes=b.notes,
    )


# ------------------------------------------------------------------ content


class _Builder:
    def __init__(self, data: StudyData, out: Path, figdir: Path, top_n: int):
        self.data = data
        self.runs = data.runs
        self.out = out
        self.figdir = figdir
        self.top_n = top_n
        self.blocks: list[Block] = []
        self.figures: list[Path] = []
        self.notes: list[str] = []
        self.searched = [p for p in data.searched]
        self.search = self.runs[self.runs["kind"] == "search"]
        self.configs = tables.per_config(self.runs, self.searched, data.objective, data.mode)
        self.chosen = tables.chosen_configs(self.configs)
        self.tables = tables.build_tables(self.runs, self.searched, data.objective, data.mode)
        self.tables.append(self._search_table())

    # ---- helpers

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def figure(self, fig: Any, name: str, caption: str) -> None:
        path = self.figdir / f"{name}.png"
        fig.savefig(path, dpi=100)
        self.figures.append(path)
        self.add(Img(str(path.relative_to(self.out)), caption))

    def missing(self, what: str, why: str) -> None:
        self.notes.append(f"{what}: {why}")
        self.add(Para(f"No {what}: {why}.", "note"))

    # ---- sections

    def build(self) -> None:
        d = self.data
        self.add(Heading(f"Study report: {d.ref.name}", 1))
        info = [
            f"MLflow experiment: {d.ref.experiment} (tracking URI {d.ref.tracking_uri})",
            f"Parent run: {d.parent_run_id or 'none found'}",
            f"Search objective: {d.objective} ({d.mode})",
            f"Searched parameters: {', '.join(self.searched) or 'none'}",
            f"Generated: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by zskt report",
        ]
        if d.ref.source:
            info.insert(0, f"Study file: {d.ref.source}")
        if d.spec.get("description"):
            info.insert(0, f"Description: {d.spec['description']}")
        self.add(Bullets(info))
        self._runs_section()
        self._tables_section()
        self._effects_section()
        self._optuna_section()
        self._curves_section()
        self._transition_section()
        self._images_section()
        self._config_section()

    def _runs_section(self) -> None:
        runs = self.runs
        self.add(Heading("Runs and exclusions"))
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
            "tables, the final statistics and the parameter importances"
            + (f" ({', '.join(parts)})." if parts else ".")
        )
        if by_status.get("pruned", 0):
            text += (
                " Pruned trials were stopped early by the scheduler: the search plots draw them as "
                "hollow markers at the value they had when stopped."
            )
        if by_status.get("failed", 0):
            text += " Failed trials are not drawn."
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

    def _tables_section(self) -> None:
        self.add(Heading("Tables"))
        for t in self.tables:
            if t.name == "search_trials":
                continue
            self.add(Heading(_TABLE_TITLES.get(t.name, t.name), 3))
            if t.display.empty:
                self.add(Para(_EMPTY_TABLE.get(t.name, "No rows."), "note"))
            else:
                self.add(TableBlock(t.display, t.caption))
        st = self.tables[-1]
        self.add(Heading("Search trials", 3))
        if st.display.empty:
            self.add(Para("No search trials.", "note"))
        else:
            self.add(TableBlock(st.display, st.caption))

    def _search_table(self) -> tables.Table:
        s = self.search.copy()
        asc = self.data.mode == "min"
        s = s.sort_values("objective", ascending=asc, na_position="last")
        cols = [
            "trial_id",
            "optuna_number",
            "status",
            *self.searched,
            "objective",
            "iterations_reached",
            "wall_time_s",
            "status_reason",
        ]
        numeric = s[[c for c in cols if c in s.columns] + ["run_id", "config_id"]].reset_index(
            drop=True
        )
        disp = pd.DataFrame(
            {
                "trial": s["trial_id"],
                "optuna #": s["optuna_number"],
                "status": s["status"],
                **{p: s[p] if p in s else None for p in self.searched},
                f"{self.data.objective} (last)": [
                    tables.fmt_pm(v, None, digits=4)
                    if self.data.objective != "val_acc"
                    else tables.fmt_pm(v, None)
                    for v in s["objective"]
                ],
                "iterations": s["iterations_reached"],
                "reason": s["status_reason"],
            }
        ).reset_index(drop=True)
        caption = (
            f"Every search trial, best {self.data.objective} first; values of pruned trials are "
            "partial (at the iteration they were stopped). Search trials never give test accuracy."
        )
        return tables.Table("search_trials", caption, numeric, disp)

    def _effects_section(self) -> None:
        d = self.data
        self.add(Heading("Effect of each searched parameter"))
        if not self.searched:
            self.missing("parameter plots", "the study searched no parameters")
            return
        if self.search.empty:
            self.missing("parameter plots", "no search trials were recorded")
            return
        self.add(
            Para(
                f"One plot per searched parameter: every search trial's {d.objective}, completed (filled), "
                "pruned (hollow, value when stopped) and the final re-runs' mean ± population std over "
                "seeds where configurations were re-run."
            )
        )
        for p in self.searched:
            fig = plots.param_effect(
                self.search, self.configs, p, d.objective, d.mode, d.log_scale.get(p, False)
            )
            if fig is None:
                self.missing(f"plot for {p}", "no run logged this parameter")
                continue
            self.figure(fig, f"effect_{p}", f"{d.objective} against {p}.")

    def _optuna_section(self) -> None:
        d = self.data
        self.add(Heading("Optimisation history and parameter importances"))
        study = d.optuna_study
        if study is not None:
            trials = pd.DataFrame(
                [
                    {"number": t.number, "state": t.state.name, "value": _trial_value(t)}
                    for t in study.trials
                ],
                columns=["number", "state", "value"],
            )
            source = f"Optuna study {study.study_name}"
        else:
            self.add(
                Para(
                    f"Optuna study not available ({d.optuna_note}); history from the MLflow search runs.",
                    "note",
                )
            )
            s = self.search.sort_values("start_time")
            state = {"completed": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}
            trials = pd.DataFrame(
                {
                    "number": np.arange(len(s)),
                    "state": [state.get(x, "RUNNING") for x in s["status"]],
                    "value": s["objective"].to_numpy(dtype=float, na_value=np.nan),
                }
            )
            source = "MLflow search runs, by start time"
        fig = plots.optimisation_history(trials, d.objective, d.mode, source)
        if fig is None:
            self.missing("optimisation history", "no search trials")
        else:
            self.figure(fig, "optuna_history", f"Optimisation history of {d.objective} ({source}).")
        if study is None:
            self.missing(
                "parameter importances",
                f"they are computed from the Optuna study ({d.optuna_note})",
            )
            return
        n_complete = sum(1 for t in study.trials if t.state.name == "COMPLETE")
        if n_complete < 2:
            self.missing(
                "parameter importances",
                f"they need at least 2 completed trials and this study has {n_complete}",
            )
            return
        try:
            import optuna

            imp = optuna.importance.get_param_importances(study)
        except Exception as e:  # noqa: BLE001 - e.g. a single distinct value per parameter
            self.missing(
                "parameter importances", f"Optuna could not compute them: {str(e).splitlines()[0]}"
            )
            return
        fig = plots.importances(imp, d.objective)
        if fig is None:
            self.missing("parameter importances", "Optuna returned none (no parameter varies)")
            return
        self.figure(
            fig,
            "optuna_importances",
            f"Parameter importances for {d.objective} over {n_complete} completed trials "
            "(fANOVA; pruned and failed trials excluded"
            + ("; with so few trials they are a rough guide only)." if n_complete < 10 else ")."),
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
        self.add(Heading("Learning curves of the best trials"))
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
        self.add(Heading("Average transition curves"))
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
        self.add(Heading("Pseudo images from the generator"))
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
                dst = self.figdir / f"pseudo_{run_id[:8]}_iter{it:06d}.png"
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
        self.add(Heading("Run configuration and hardware"))
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
                Heading("Fixed settings", 3),
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
                Heading("Hardware", 3),
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
            self.add(Heading("Resolved study (study.yaml of the parent run)", 3))
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


def _trial_value(t: Any) -> float:
    if t.values is not None and len(t.values) == 1:
        return float(t.values[0])
    if t.intermediate_values:
        return float(t.intermediate_values[max(t.intermediate_values)])
    return float("nan")


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
