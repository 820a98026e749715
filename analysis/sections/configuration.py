"""How the runs were set up: the fixed settings, the hardware, the resolved study file."""

from __future__ import annotations

from typing import Any

import pandas as pd
import yaml

from .. import schema, tables
from ..blocks import Para, Pre, TableBlock
from .page import Page
from .view import StudyView

HARDWARE_TAGS = ["hw_device", "hw_gpu_name", "hw_hostname", "hw_torch_version"]


def run_configuration(study: StudyView, page: Page) -> None:
    """Fixed settings, hardware and the study file the parent run logged."""
    page.section("Run configuration and hardware")
    settings = fixed_settings(study)
    if settings:
        df = pd.DataFrame(
            {"setting": list(settings), "value": [tables.fmt_value(v) for v in settings.values()]}
        )
        page.subsection("Fixed settings")
        page.add(
            TableBlock(
                df, "Settings shared by every zero-shot trial (searched parameters left out)."
            )
        )
    if not study.runs.empty:
        _hardware(study, page)
    spec = study.data.spec
    if spec:
        page.subsection("Resolved study (study.yaml of the parent run)")
        page.add(Pre(yaml.safe_dump(spec, sort_keys=False), "study.yaml"))
    else:
        page.missing("study.yaml", "the parent run has no study.yaml artifact")


def fixed_settings(study: StudyView) -> dict[str, Any]:
    """Data set, networks and the loop settings no trial searched (from study.yaml, else the
    parameters every search trial shares)."""
    spec = study.data.spec
    loop = spec.get("loop") if isinstance(spec.get("loop"), dict) else None
    if not loop and len(study.search):
        loop = {}
        for c in schema.PARAM_NAMES:
            vals = study.search[c].dropna().unique() if c in study.search else []
            if len(vals) == 1 and c not in study.searched:
                loop[c] = vals[0]
    if not loop:
        return {}
    settings: dict[str, Any] = {}
    if spec.get("dataset"):
        settings["data set"] = spec["dataset"]
    if isinstance(spec.get("teacher"), dict):
        t = spec["teacher"]
        settings["teacher"] = f"{t.get('arch')} ({t['path']})" if t.get("path") else t.get("arch")
    if isinstance(spec.get("student"), dict):
        settings["student"] = spec["student"].get("arch")
    settings.update({k: v for k, v in loop.items() if k not in study.searched})
    return settings


def _hardware(study: StudyView, page: Page) -> None:
    runs = study.runs
    g = runs.assign(**{c: runs[c].fillna("?") for c in HARDWARE_TAGS})
    hw = (
        g.groupby(["kind", *HARDWARE_TAGS], sort=True)
        .agg(
            runs=("run_id", "size"),
            wall_h=("wall_time_s", lambda s: s.sum() / 3600),
            iters_per_s=("iters_per_s", "mean"),
        )
        .reset_index()
        .rename(columns={c: c.removeprefix("hw_") for c in HARDWARE_TAGS})
    )
    hw["wall_h"] = hw["wall_h"].map(lambda v: f"{v:.3g}")
    hw["iters_per_s"] = hw["iters_per_s"].map(lambda v: tables.DASH if pd.isna(v) else f"{v:.3g}")
    page.subsection("Hardware")
    page.add(TableBlock(hw, "Where the runs ran; wall_h: total wall time in hours."))
    start, end = runs["start_time"].min(), runs["end_time"].max()
    if not pd.isna(start):
        page.add(
            Para(f"Runs started {start:%Y-%m-%d %H:%M} UTC, last ended {end:%Y-%m-%d %H:%M} UTC.")
        )
