"""How the best configurations trained: learning curves, transition curves, pseudo images."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from ...names import (
    COMPLETED,
    IMAGES_ARTIFACT_DIR,
    KIND_KDAT,
    REGIONS_GIF,
    REGIONS_PNG,
    VAL_ACC,
)
from .. import plots, tables
from ..blocks import ImgRow, Para
from .page import Page
from .view import StudyView

PSEUDO_ITER = re.compile(r"pseudo_iter(\d+)\.png$")
GRIDS_SHOWN = 4  # pseudo-image grids per run, evenly spread over training


def learning_curves(study: StudyView, page: Page) -> None:
    """Validation accuracy over iterations of the best search trials and the final re-runs."""
    d = study.data
    page.section("Learning curves of the best trials")
    curves = [
        (
            f"search {r['trial_id']} ({d.objective} {r['objective']:.4g})",
            d.metric_history(r["run_id"], VAL_ACC),
            "-",
        )
        for _, r in study.best_search(study.options.top_n).iterrows()
    ]
    n_search = sum(1 for c in curves if len(c[1]))
    curves += [
        (f"final {r['config_id']} seed {r['seed']}", d.metric_history(r["run_id"], VAL_ACC), "--")
        for _, r in study.chosen_final_runs().iterrows()
    ]
    fig = plots.learning_curves(curves)
    if fig is None:
        page.missing("learning curves", "no completed trial logged val_acc over iterations")
        return
    page.figure(
        fig,
        "learning_curves",
        f"Validation accuracy against iteration: the {n_search} best completed search trial(s) "
        "(solid) and the final re-runs of the chosen configuration (dashed).",
    )


def _pairs_of(runs: pd.DataFrame) -> list[tuple]:
    """The (data set, teacher, student) pairs of the completed runs, in order of appearance."""
    ok = runs[runs["status"] == COMPLETED].dropna(subset=tables.PAIR)
    return list(dict.fromkeys(tuple(r) for r in ok[tables.PAIR].itertuples(index=False)))


def _match(df: pd.DataFrame, key: tuple) -> pd.Series:
    m = pd.Series(True, index=df.index)
    for col, v in zip(tables.PAIR, key, strict=True):
        m &= (df[col] == v).fillna(False).astype(bool)
    return m


def _curve_groups(study: StudyView, key: tuple) -> list[tuple[str, list[Any]]]:
    """The transition curves of one pair: zero-shot (final re-runs, else the best search trial)
    and KD+AT per M."""
    d = study.data
    groups: list[tuple[str, list[Any]]] = []
    finals = study.chosen_final_runs()
    finals = finals[_match(finals, key)]
    if len(finals):
        title = f"zero-shot (final re-runs, config {finals['config_id'].iloc[0]})"
        groups.append((title, [d.transition_curves(r) for r in finals["run_id"]]))
    best = study.best_search(1)
    best = best[_match(best, key)]
    if not any(c for _, cs in groups for c in cs) and len(best):
        curves = [d.transition_curves(best["run_id"].iloc[0])]
        groups = [("zero-shot (best search trial, validation images; no final curves)", curves)]
    kd = tables.completed(study.runs, KIND_KDAT)
    kd = kd[_match(kd, key)]
    for m, g in kd.groupby("m_per_class", sort=True):
        label = "full data" if int(m) == -1 else f"M={int(m)}"
        groups.append((f"KD+AT ({label})", [d.transition_curves(r) for r in g["run_id"]]))
    return groups


def transition_curves(study: StudyView, page: Page) -> None:
    """The paper's Figure 4 per pair: the target class's probability along adversarial steps."""
    page.section("Average transition curves")
    page.add(
        Para(
            "Mean probability of the target class while stepping the student's input towards it "
            "(network A, the student, is stepped on; B is the teacher), averaged over images, "
            "targets and runs, as in the paper's Figure 4. The closer the curves, the lower the MTE."
        )
    )
    any_fig = False
    for i, key in enumerate(_pairs_of(study.runs)):
        fig = plots.transition_curves(_curve_groups(study, key))
        if fig is None:
            continue
        any_fig = True
        pair = f"{key[1]} → {key[2]} on {key[0]}"
        page.figure(fig, f"transition_curves_{i}", f"Average transition curves, {pair}.")
    if not any_fig:
        page.missing("transition curves", "no run has the artifact mte/transition_curves.json")


def pseudo_images(study: StudyView, page: Page) -> None:
    """What the generator made during training: the toy problem's decision regions, else
    pseudo-image grids of the chosen configuration's (else the best trial's) run."""
    page.section("Pseudo images from the generator")
    cands = [
        (r["run_id"], f"final re-run {r['trial_id']}")
        for _, r in study.chosen_final_runs().iterrows()
    ]
    cands += [
        (r["run_id"], f"search trial {r['trial_id']}") for _, r in study.best_search(1).iterrows()
    ]
    if _regions_picture(study, page, cands):
        return
    for run_id, label in cands:
        row = _grid_row(study, page, run_id)
        if row:
            page.add(ImgRow(row, f"Generator samples during training, {label} (run {run_id})."))
            return
    page.missing("pseudo-image grids", "no run has images/pseudo_iter*.png artifacts")


def _grid_row(study: StudyView, page: Page, run_id: str) -> list:
    """Up to GRIDS_SHOWN grids of one run, from the first iteration to the last."""
    d = study.data
    files = [f for f in d.list_artifacts(run_id, IMAGES_ARTIFACT_DIR) if PSEUDO_ITER.search(f)]
    files.sort(key=lambda f: int(PSEUDO_ITER.search(f).group(1)))
    picks = sorted({round(x) for x in np.linspace(0, len(files) - 1, min(GRIDS_SHOWN, len(files)))})
    row = []
    for f in (files[i] for i in picks):
        local = d.download(run_id, f)
        if local is None:
            continue
        it = int(PSEUDO_ITER.search(f).group(1))
        row.append(page.image(local, f"pseudo_{run_id[:8]}_iter{it:06d}", f"iteration {it}"))
    return row


def _regions_picture(study: StudyView, page: Page, cands: list[tuple[str, str]]) -> bool:
    """The toy problem's decision-region strip of the best configuration, if a run has one."""
    artifact = f"{IMAGES_ARTIFACT_DIR}/{REGIONS_PNG}"
    for run_id, label in cands:
        if artifact not in study.data.list_artifacts(run_id, IMAGES_ARTIFACT_DIR):
            continue
        local = study.data.download(run_id, artifact)
        if local is None:
            continue
        img = page.image(
            local, f"regions_{run_id[:8]}", f"Decision regions, {label} (run {run_id})."
        )
        page.add(
            Para(
                "2-D data: the generator's pseudo points (black) over the teacher's decision "
                "regions (top) and the student's (bottom), from the start of training to the "
                "end; the student never sees a real point (faint). An animated version is the "
                f"run's artifact {IMAGES_ARTIFACT_DIR}/{REGIONS_GIF}."
            ),
            img,
        )
        return True
    return False
