"""Run health: which trials collapsed or stalled and when, what their generator made at that
point, which failed a wiring audit, and how often each configuration and each searched level
collapsed or stalled.

It reads the runs table's ``health``, ``health_reason``, ``health_iteration`` and ``audit``
columns (the trial runs' tags ``zskt.health*`` and ``zskt.audit``), the pseudo-image grid each
flagged run logged at its flag's iteration (``images/pseudo_iter<it>.png``; for 2-D data a
picture of the pseudo points), and the rule in the study's ``study.yaml`` (``health:``).
"""

from __future__ import annotations

from collections.abc import Collection

import pandas as pd

from ...names import COLLAPSED, IMAGES_ARTIFACT_DIR, KIND_SEARCH, STALLED
from .. import rungs, tables
from ..blocks import Bullets, ImgRow, Para, TableBlock
from .page import Page
from .view import StudyView

FLAGS = (COLLAPSED, STALLED)
PICTURES_SHOWN = 12  # flagged runs whose pseudo images are shown (the first, by iteration)
CONFIGS_SHOWN = 20  # configurations in the rate table (most flagged first)


def _label(r: pd.Series) -> str:
    return f"{r['kind']} {r['trial_id']}"


def flagged_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs the health rule flagged, and runs that failed an audit, earliest flag first."""
    bad = runs[runs["health"].isin(FLAGS).fillna(False) | runs["audit"].notna()]
    return bad.sort_values(["health_iteration", "kind", "trial_id"], na_position="last")


def verdict_table(bad: pd.DataFrame) -> pd.DataFrame:
    """One row per flagged or refused run: what, when, why, and what became of the trial."""
    verdict = bad["health"].where(bad["health"].isin(FLAGS), "audit failed")
    return pd.DataFrame(
        {
            "run": [_label(r) for _, r in bad.iterrows()],
            "verdict": verdict.astype(object).fillna("audit failed"),
            "iteration": bad["health_iteration"],
            "trial status": bad["status"],
            "reason": bad["health_reason"].where(bad["health"].isin(FLAGS), bad["audit"]),
        }
    ).reset_index(drop=True)


def _flags(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with a verdict, with 0/1 columns ``collapsed`` and ``stalled``."""
    judged = runs[runs["health"].notna()]
    return judged.assign(
        **{f: (judged["health"] == f).astype(float).to_numpy() for f in FLAGS},
    )


def rate_per_config(runs: pd.DataFrame, searched: list[str]) -> pd.DataFrame:
    """Per configuration (``config_id``: a search trial's, and its final re-runs'; an ablation
    cell's seeds, with the cell's label): runs with a verdict, how many collapsed and stalled, and
    the rates; most flagged first."""
    judged = _flags(runs)
    cells = ["cell_label"] if "cell_label" in judged and judged["cell_label"].notna().any() else []
    shown = [*cells, *[p for p in searched if p in judged]]
    cols = ["config_id", *shown, "runs", *FLAGS, "rate"]
    if judged.empty:
        return pd.DataFrame(columns=cols)
    g = judged.groupby("config_id", sort=False)
    out = g[shown].first() if shown else pd.DataFrame(index=[])
    out = out.reindex(g.size().index)
    out["runs"] = g.size()
    for f in FLAGS:
        out[f] = g[f].sum().astype(int)
    out["rate"] = (out[COLLAPSED] + out[STALLED]) / out["runs"]
    out = out.reset_index().sort_values(["rate", "runs"], ascending=False, kind="stable")
    return out[cols].reset_index(drop=True)


def rate_per_level(
    runs: pd.DataFrame,
    searched: list[str],
    log: dict[str, bool],
    categorical: Collection[str] = (),
) -> pd.DataFrame:
    """Per searched parameter and level (a value of a categorical or few-valued parameter, else
    bins, as in the effects plots): search trials with a verdict, and the share that collapsed
    and that stalled."""
    judged = _flags(runs[runs["kind"] == KIND_SEARCH])
    rows = []
    for p in searched:
        if p not in judged:
            continue
        values = judged[p].map(tables.fmt_value) if p in categorical else judged[p]
        parts = [
            rungs.marginal_effects(
                judged.assign(value=judged[f], **{p: values}), p, bool(log.get(p))
            )
            .set_index("level")[["n", "mean"]]
            .rename(columns={"mean": f})
            for f in FLAGS
        ]
        if parts[0].empty:
            continue
        both = parts[0].join(parts[1][[STALLED]])
        for level, r in both.iterrows():
            rows.append(
                {
                    "parameter": p,
                    "level": level,
                    "trials": int(r["n"]),
                    f"{COLLAPSED} %": 100 * r[COLLAPSED],
                    f"{STALLED} %": 100 * r[STALLED],
                }
            )
    cols = ["parameter", "level", "trials", f"{COLLAPSED} %", f"{STALLED} %"]
    return pd.DataFrame(rows, columns=cols)


def _rule_text(spec: dict) -> str:
    rule = spec.get("health") if isinstance(spec.get("health"), dict) else None
    if not rule:
        return "the health rule's defaults (study.yaml has no health section)"
    stop = rule.get("stop")
    settings = ", ".join(f"{k} {v}" for k, v in rule.items() if k != "stop")
    then = "flagged trials were stopped as failed" if stop else "flagged trials trained on"
    return f"{settings}; {then} (stop: {str(bool(stop)).lower()})"


def health(study: StudyView, page: Page) -> None:
    """Flagged runs with their reasons and pseudo images, failed audits, flag rates."""
    runs = study.runs
    page.section("Run health")
    judged = runs["health"].notna()
    if not (judged.any() or runs["audit"].notna().any()):
        page.missing(
            "health verdicts",
            "no run has a zskt.health or zskt.audit tag (runs logged before health metrics)",
        )
        return
    bad = flagged_runs(runs)
    counts = {f: int((runs["health"] == f).sum()) for f in FLAGS}
    audits = int(runs["audit"].notna().sum())
    page.add(
        Para(
            f"The health rule watched {int(judged.sum())} runs ({_rule_text(study.data.spec)}): "
            f"{counts[COLLAPSED]} collapsed (too few classes, or too little diversity, in the "
            f"generator's pseudo batch), {counts[STALLED]} stalled (the generator stopped moving, "
            f"or its adversarial KL stayed about 0); {audits} run(s) failed a wiring audit or the "
            "test-split guard before or while training. A flag needs its condition at several "
            "consecutive evaluations (patience).",
            "note" if len(bad) else "",
        )
    )
    if bad.empty:
        return
    table = verdict_table(bad)
    page.add(TableBlock(table, "Flagged runs, earliest flag first, and failed audits."))
    page.table_file("health_flags", "Flagged runs and failed audits.", bad, table)
    _pictures(study, page, bad[bad["health"].isin(FLAGS)])
    _rates(study, page)
    audited = bad[bad["audit"].notna()]
    if len(audited):
        page.add(
            Para("Failed audits (the trial ended at once, before or instead of training):"),
            Bullets([f"{_label(r)}: {r['audit']}" for _, r in audited.iterrows()]),
        )


def _pictures(study: StudyView, page: Page, flagged: pd.DataFrame) -> None:
    """The pseudo images each flagged run logged at its flag's iteration."""
    pictures = []
    for _, r in flagged.head(PICTURES_SHOWN).iterrows():
        it = int(r["health_iteration"])
        artifact = f"{IMAGES_ARTIFACT_DIR}/pseudo_iter{it:06d}.png"
        local = study.data.download(r["run_id"], artifact)
        if local is not None and local.is_file():
            name = f"health_{str(r['run_id'])[:8]}_iter{it:06d}"
            pictures.append(page.image(local, name, f"{_label(r)}: {r['health']}, iteration {it}"))
    if pictures:
        page.add(
            ImgRow(
                pictures,
                "What the generator made when each run was flagged (fixed noise; for 2-D data, "
                "its points over the teacher's decision regions).",
            )
        )
    elif len(flagged):
        page.add(Para("No flagged run logged its pseudo images at the flag.", "note"))


def _rates(study: StudyView, page: Page) -> None:
    """Flag rates per configuration and per level of each searched parameter."""
    runs = study.runs
    per_config = rate_per_config(runs, study.searched)
    flagged_configs = per_config[per_config["rate"] > 0].head(CONFIGS_SHOWN)
    if len(flagged_configs):
        shown = flagged_configs.assign(rate=[f"{100 * v:.0f} %" for v in flagged_configs["rate"]])
        page.add(
            TableBlock(
                shown,
                "Flag rate per configuration (runs with a verdict: search trials and final "
                "re-runs, or an ablation cell's seeds; configurations never flagged are left "
                "out).",
            )
        )
    categorical = {p for p, v in study.space.items() if (v or {}).get("type") == "categorical"}
    per_level = rate_per_level(runs, study.searched, study.data.log_scale, categorical)
    if len(per_level):
        rates = per_level.columns[3:]
        display = per_level.assign(
            **{c: [tables.fmt_value(round(v, 1)) for v in per_level[c]] for c in rates}
        )
        page.add(
            TableBlock(
                display,
                "Share of search trials that collapsed or stalled, per level of each searched "
                "parameter.",
            )
        )
