"""What a study cost: the device-seconds of its trials, added up from their MLflow runs.

Each trial run holds its last ``cost_device_s`` (:mod:`.watch`: the trial's wall seconds from the
start of training to its last report, final evaluation included, times its allocation: CPUs, or
the GPU share). The study's total is their plain sum, so the per-trial figures add up to it
exactly; it is split by kind (search, ablation, final re-runs, KD+AT) and by outcome, and the pruned
trials' share is the part ASHA spent on trials it then stopped. The teacher's training on the
driver, Ray's start-up and each trial's set-up are not trials' device time and are not in it (the
summary's ``teacher_seconds`` and ``wall_time_s`` show the driver's time).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .. import names
from . import tracking

# Keys of the study summary (printed, and logged on the study's MLflow run: numbers as metrics,
# text as zskt.summary.* tags).
DEVICE_S = "device_s"  # every trial run's cost_device_s, summed
DEVICE_HOURS = "device_hours"
DEVICE_S_PRUNED = "device_s_pruned"  # of trials the scheduler stopped
DEVICE_HOURS_PRUNED = "device_hours_pruned"
DEVICE_KIND = "device_kind"  # cpu, gpu (or "cpu+gpu" when trials counted both)
COST_LINE = "cost"  # the sentence the summary prints


def totals(info: tracking.TrackingInfo) -> dict[str, Any]:
    """The study's device-seconds from its trial runs (see the module doc)."""
    return sum_costs(tracking.study_trial_runs(info))


def sum_costs(runs: Iterable[Any]) -> dict[str, Any]:
    """Device-seconds of MLflow trial runs: in all, per kind, per status, and the pruned share."""
    out: dict[str, Any] = {DEVICE_S: 0.0, DEVICE_S_PRUNED: 0.0}
    kinds: set[str] = set()
    for run in runs:
        tags: Mapping[str, str] = run.data.tags
        seconds = float(run.data.metrics.get(names.COST_DEVICE_S, 0.0))
        out[DEVICE_S] += seconds
        kind, status = tags.get(names.TAG_KIND, "?"), tags.get(names.TAG_STATUS, "?")
        out[f"device_s_{kind}"] = out.get(f"device_s_{kind}", 0.0) + seconds
        if status == names.PRUNED:
            out[DEVICE_S_PRUNED] += seconds
        if names.TAG_COST_DEVICE in tags:
            kinds.add(tags[names.TAG_COST_DEVICE])
    out[DEVICE_HOURS] = out[DEVICE_S] / 3600
    out[DEVICE_HOURS_PRUNED] = out[DEVICE_S_PRUNED] / 3600
    out[DEVICE_KIND] = "+".join(sorted(kinds)) or "cpu"
    out[COST_LINE] = cost_line(out)
    return out


def unit(kind: str) -> str:
    """``CPU`` / ``GPU`` / ``CPU+GPU``: what a device-hour of ``kind`` is an hour of."""
    return kind.upper()


def cost_line(s: Mapping[str, Any]) -> str:
    """The summary's sentence: this study used N device-hours, M of them in pruned trials."""
    total, pruned = s[DEVICE_S], s[DEVICE_S_PRUNED]
    share = f" ({100 * pruned / total:.0f} %)" if total > 0 else ""
    kinds = ", ".join(
        f"{kind} {s[f'device_s_{kind}']:.0f} s"
        for kind in names.TRIAL_KINDS
        if s.get(f"device_s_{kind}", 0) > 0
    )
    u = unit(s[DEVICE_KIND])
    return (
        f"this study used {s[DEVICE_HOURS]:.3g} {u}-hours in its trials ({total:.0f} {u}-seconds: "
        f"allocated {u}s x wall seconds; {kinds or 'no trial'}), {s[DEVICE_HOURS_PRUNED]:.3g} of "
        f"them{share} in pruned trials"
    )
