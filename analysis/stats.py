"""Seed statistics of designed ablations and of a search study's final re-runs.

Pure functions on a *tidy* frame with one row per run: ``cell`` (the configuration), ``seed``,
``value`` (the metric), ``status`` (and ``status_reason``; factor columns for factorial
analyses). :func:`tidy` builds one from the runs table (:mod:`analysis.schema`). The tests,
interval, correction and detectable difference used here, and why, are section 8 of the method
doc (docs/method.md); the arithmetic is scipy's and statsmodels'.

Degenerate inputs give a row with an explanatory ``note`` rather than an exception: one seed
(no interval), differences without spread, seeds that failed in one cell only (the pair is
dropped and counted), every seed failed.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from ..names import COMPLETED, FAILED, KIND_FINAL

ALPHA = 0.05  # test level, before the Holm correction
CONFIDENCE = 0.95  # of every interval
POWER = 0.8  # of the minimum detectable effect
# Below this many paired seeds the interval shown is the t-interval: a bootstrap over so few
# values has few distinct resamples and covers less than its nominal 95 %.
BOOTSTRAP_MIN_N = 10
BOOTSTRAP_RESAMPLES = 9999
BETTER, WORSE = "better", "worse"
# What a run contributes: a value (ok), a failure, a divergence, a completed run that did not
# log the metric, or nothing yet.
OK, DIVERGED, MISSING, UNFINISHED = "ok", "diverged", "no value", "unfinished"


class ContrastLike(Protocol):
    """What :func:`compare` reads of a contrast (``zskt_ray.study.design.Contrast`` is one)."""

    label: str
    treatment: Sequence[str]
    reference: Sequence[str]


def not_distinguishable(n: int) -> str:
    return f"not distinguishable with {n} seed{'' if n == 1 else 's'}"


# ------------------------------------------------------------------ from the runs table


def tidy(
    runs: pd.DataFrame,
    metric: str,
    kinds: Sequence[str] | None = None,
    factors: Sequence[str] = (),
    cell: str = "cell",
) -> pd.DataFrame:
    """One row per run: ``cell``, ``seed``, ``value`` (= ``metric``), ``status``,
    ``status_reason``, ``outcome`` and the ``factors`` columns.

    ``cell`` names the column that identifies a configuration; where it is null, ``config_id``
    stands in (a search study's final re-runs of one configuration share it). ``kinds``: keep
    only runs of these kinds.
    """
    rows = runs if kinds is None else runs[runs["kind"].isin(list(kinds))]
    missing = [c for c in (metric, "seed", *factors) if c not in rows.columns]
    if missing:
        raise ValueError(f"runs table has no column {missing[0]!r}")
    ids = rows[cell] if cell in rows.columns else pd.Series(pd.NA, index=rows.index)
    if "config_id" in rows.columns:
        ids = ids.astype(object).where(ids.notna(), rows["config_id"].astype(object))
    out = pd.DataFrame(
        {
            "cell": ids.astype("string"),
            "seed": pd.to_numeric(rows["seed"]).astype("Int64"),
            "value": pd.to_numeric(rows[metric], errors="coerce").astype("float64"),
            "status": rows["status"].astype("string"),
            "status_reason": rows.get("status_reason", pd.Series(pd.NA, index=rows.index)),
        }
    )
    for f in factors:
        out[f] = rows[f]
    if out["cell"].isna().any() or out["seed"].isna().any():
        raise ValueError("runs table: a run has no cell (or config_id) or no seed")
    return with_outcome(out.reset_index(drop=True))


def with_outcome(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with an ``outcome`` column: ``ok`` (completed with a finite value), ``failed``,
    ``diverged`` (failed with a non-finite loss, or completed with an infinite value), ``no
    value`` (completed without logging the metric) or ``unfinished`` (running, interrupted,
    stopped early). Only failed and diverged runs count as failures."""
    frame = frame.copy()
    status = frame["status"].astype(object).fillna("").to_numpy()
    reason = (
        frame["status_reason"].astype(object).fillna("").astype(str).to_numpy()
        if "status_reason" in frame
        else np.full(len(frame), "")
    )
    finite = np.isfinite(frame["value"].to_numpy(dtype=float, na_value=np.nan))
    nan_value = pd.isna(frame["value"]).to_numpy()
    outcome = np.full(len(frame), UNFINISHED, dtype=object)
    outcome[(status == COMPLETED) & finite] = OK
    outcome[(status == COMPLETED) & nan_value] = MISSING
    outcome[(status == COMPLETED) & ~finite & ~nan_value] = DIVERGED  # inf
    outcome[status == FAILED] = FAILED
    outcome[(status == FAILED) & np.char.startswith(reason.astype(str), "diverged")] = DIVERGED
    frame["outcome"] = outcome
    duplicated = frame.duplicated(["cell", "seed"], keep=False)
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        raise ValueError(f"cell {first['cell']} has seed {first['seed']} more than once")
    return frame


# ------------------------------------------------------------------ per cell


def t_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, str]:
    """``(low, high, note)`` of the mean's t-interval; NaN with a note where there is none."""
    n = len(values)
    if n == 0:
        return np.nan, np.nan, "no value"
    if n == 1:
        return np.nan, np.nan, "1 seed: no interval"
    mean = float(np.mean(values))
    if _no_spread(values):
        return mean, mean, f"all {n} seeds gave the same value"
    low, high = sps.t.interval(confidence, n - 1, loc=mean, scale=sps.sem(values))
    return float(low), float(high), ""


def cell_summary(frame: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per cell: ``n_runs``, ``n`` (seeds with a value), ``n_failed`` (failed or diverged; of
    which ``n_diverged``), ``n_missing`` (completed without the metric), ``n_unfinished``,
    ``failure_rate`` (failed / (failed + with a value)),
    ``mean``, ``std`` (sample std, ddof 1, the one the interval uses), ``ci_low``, ``ci_high``
    and a ``note``. Cells keep their order of first appearance."""
    frame = frame if "outcome" in frame else with_outcome(frame)
    rows = []
    for cell, g in frame.groupby("cell", sort=False):
        values = g.loc[g["outcome"] == OK, "value"].to_numpy(dtype=float)
        counts = g["outcome"].value_counts()
        n_diverged = int(counts.get(DIVERGED, 0))
        n_failed = int(counts.get(FAILED, 0)) + n_diverged
        finished = len(values) + n_failed
        low, high, note = t_interval(values, confidence)
        if len(values) == 0 and n_failed:
            note = f"every finished seed failed ({n_failed})"
        rows.append(
            {
                "cell": cell,
                "n_runs": len(g),
                "n": len(values),
                "n_failed": n_failed,
                "n_diverged": n_diverged,
                "n_missing": int(counts.get(MISSING, 0)),
                "n_unfinished": int(counts.get(UNFINISHED, 0)),
                "failure_rate": n_failed / finished if finished else np.nan,
                "mean": float(np.mean(values)) if len(values) else np.nan,
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else np.nan,
                "ci_low": low,
                "ci_high": high,
                "note": note,
            }
        )
    return pd.DataFrame(rows, columns=_SUMMARY_COLUMNS)


_SUMMARY_COLUMNS = (
    "cell",
    "n_runs",
    "n",
    "n_failed",
    "n_diverged",
    "n_missing",
    "n_unfinished",
    "failure_rate",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "note",
)


# ------------------------------------------------------------------ paired comparisons


@dataclasses.dataclass(frozen=True)
class _BySeed:
    """A tidy frame by seed: ``values[i, j]`` is seed ``seeds[i]`` of cell ``cells[j]`` (NaN
    where that run has no usable value); ``ran`` holds the seeds each cell ran, whatever their
    outcome."""

    seeds: np.ndarray
    cells: Mapping[str, int]
    values: np.ndarray
    ran: Mapping[str, frozenset[int]]


def _by_seed(frame: pd.DataFrame) -> _BySeed:
    frame = frame if "outcome" in frame else with_outcome(frame)
    ok = frame[frame["outcome"] == OK]
    wide = ok.pivot(index="seed", columns="cell", values="value").sort_index()
    ran = {str(c): frozenset(int(s) for s in g) for c, g in frame.groupby("cell")["seed"]}
    return _BySeed(
        wide.index.to_numpy(dtype="int64"),
        {str(c): j for j, c in enumerate(wide.columns)},
        wide.to_numpy(dtype=float),
        ran,
    )


def paired_values(
    frame: pd.DataFrame, treatment: Sequence[str], reference: Sequence[str]
) -> tuple[pd.DataFrame, list[int]]:
    """Per seed, the mean value over the ``treatment`` cells and over the ``reference`` cells.

    A seed counts only where every cell of both sides has a value for it (seed s pairs with
    seed s); the seeds run in any of these cells but dropped for a missing or failed value are
    returned as the second item. Columns: ``seed``, ``treatment``, ``reference``, ``diff``.
    """
    return _pairs(_by_seed(frame), treatment, reference)


def _pairs(
    by_seed: _BySeed, treatment: Sequence[str], reference: Sequence[str]
) -> tuple[pd.DataFrame, list[int]]:
    def side(cells: Sequence[str]) -> np.ndarray:
        cols = [
            by_seed.values[:, by_seed.cells[c]] if c in by_seed.cells else missing for c in cells
        ]
        return np.mean(cols, axis=0)  # NaN where any cell has no value for the seed

    missing = np.full(len(by_seed.seeds), np.nan)
    t, r = side(treatment), side(reference)
    keep = np.isfinite(t) & np.isfinite(r)
    pairs = pd.DataFrame({"seed": by_seed.seeds[keep], "treatment": t[keep], "reference": r[keep]})
    pairs["diff"] = pairs["treatment"] - pairs["reference"]
    cells = dict.fromkeys([*treatment, *reference])
    ran = frozenset().union(*(by_seed.ran.get(c, frozenset()) for c in cells))
    dropped = sorted(ran - set(pairs["seed"].tolist()))
    return pairs, dropped


@functools.lru_cache(maxsize=256)
def _detectable_effect_size(n: int, alpha: float, power: float) -> float:
    """The standardised effect (mean / sd of the differences) of :func:`minimum_detectable_effect`."""
    d = TTestPower().solve_power(
        effect_size=None, nobs=n, alpha=alpha, power=power, alternative="two-sided"
    )
    return float(np.asarray(d).item())


def minimum_detectable_effect(
    sd_diff: float, n: int, alpha: float = ALPHA, power: float = POWER
) -> float:
    """The smallest true mean difference a two-sided paired t-test at ``alpha`` detects with
    probability ``power`` from ``n`` seeds whose differences spread by ``sd_diff``; NaN for
    fewer than 2 seeds or no spread."""
    if n < 2 or not np.isfinite(sd_diff) or sd_diff <= 0:
        return np.nan
    return _detectable_effect_size(int(n), float(alpha), float(power)) * sd_diff


def compare_pair(
    frame: pd.DataFrame | _BySeed,
    treatment: Sequence[str],
    reference: Sequence[str],
    confidence: float = CONFIDENCE,
    alpha: float = ALPHA,
    power: float = POWER,
    bootstrap_seed: int = 0,
) -> dict[str, Any]:
    """One paired comparison, uncorrected: the fields of a :func:`compare` row except the
    contrast's names, ``p_holm`` and ``verdict``."""
    if not len(treatment) or not len(reference):
        raise ValueError("a comparison needs at least one cell on each side")
    by_seed = frame if isinstance(frame, _BySeed) else _by_seed(frame)
    pairs, dropped = _pairs(by_seed, treatment, reference)
    d = pairs["diff"].to_numpy(dtype=float)
    n = len(d)
    row: dict[str, Any] = {
        "n": n,
        "n_dropped": len(dropped),
        "dropped_seeds": ",".join(map(str, dropped)),
        "mean_treatment": float(pairs["treatment"].mean()) if n else np.nan,
        "mean_reference": float(pairs["reference"].mean()) if n else np.nan,
        "diff": float(d.mean()) if n else np.nan,
        "sd_diff": float(np.std(d, ddof=1)) if n > 1 else np.nan,
    }
    row.update(
        _tests(pairs["treatment"].to_numpy(float), pairs["reference"].to_numpy(float), confidence)
    )
    row.update(_bootstrap(d, confidence, bootstrap_seed))
    shown = "bootstrap" if np.isfinite(row["boot_low"]) else "t"
    row["ci_low"] = row["boot_low"] if shown == "bootstrap" else row["t_low"]
    row["ci_high"] = row["boot_high"] if shown == "bootstrap" else row["t_high"]
    row["ci_method"] = ("no spread" if _no_spread(d) else shown) if n > 1 else ""
    row["mde"] = minimum_detectable_effect(row["sd_diff"], n, alpha, power)
    absent = [c for c in dict.fromkeys([*treatment, *reference]) if c not in by_seed.ran]
    row["note"] = "; ".join(
        filter(None, [_pair_note(n, dropped, d, row), *(f"no runs of cell {c}" for c in absent)])
    )
    return row


def _tests(t: np.ndarray, r: np.ndarray, confidence: float) -> dict[str, Any]:
    """t-interval and p-values of treatment ``t`` against reference ``r`` (paired by
    position); ``p`` is the one the verdict uses."""
    d = t - r
    n, nonzero = len(d), int(np.count_nonzero(d))
    out = dict(t_low=np.nan, t_high=np.nan, p_t=np.nan, p_wilcoxon=np.nan, p=np.nan, p_source="")
    out["wilcoxon_min_p"] = min(1.0, 2.0 ** (1 - nonzero)) if nonzero else 1.0
    if n < 2:
        return out
    if nonzero == 0:
        out["p_wilcoxon"] = 1.0
    else:
        with warnings.catch_warnings():  # scipy's normal approximation note on ties
            warnings.simplefilter("ignore", RuntimeWarning)
            out["p_wilcoxon"] = float(sps.wilcoxon(t, r).pvalue)
    if _no_spread(d):  # the t statistic is undefined; the signed-rank test is not
        out["t_low"] = out["t_high"] = float(d.mean())
        out["p"], out["p_source"] = out["p_wilcoxon"], "wilcoxon"
        return out
    res = sps.ttest_rel(t, r)
    ci = res.confidence_interval(confidence)
    out.update(t_low=float(ci.low), t_high=float(ci.high), p_t=float(res.pvalue))
    out["p"], out["p_source"] = out["p_t"], "t"
    return out


def _bootstrap(d: np.ndarray, confidence: float, seed: int) -> dict[str, float]:
    """BCa bootstrap interval of the mean difference, from :data:`BOOTSTRAP_MIN_N` seeds."""
    if len(d) < BOOTSTRAP_MIN_N or _no_spread(d):
        return {"boot_low": np.nan, "boot_high": np.nan}
    res = sps.bootstrap(
        (d,),
        np.mean,
        confidence_level=confidence,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="BCa",
        rng=np.random.default_rng(seed),
    )
    return {
        "boot_low": float(res.confidence_interval.low),
        "boot_high": float(res.confidence_interval.high),
    }


def _pair_note(n: int, dropped: list[int], d: np.ndarray, row: Mapping[str, Any]) -> str:
    notes = []
    if n == 0:
        notes.append("no seed has a value on both sides")
    elif n == 1:
        notes.append("1 paired seed: no interval, no test")
    elif _no_spread(d):
        notes.append(
            f"the {n} differences are equal: no t-test; the Wilcoxon test cannot go below "
            f"p = {row['wilcoxon_min_p']:.3g} with {n} seeds"
        )
    if dropped:
        notes.append(
            f"seed{'s' if len(dropped) > 1 else ''} {', '.join(map(str, dropped))} dropped "
            "(no value on one side)"
        )
    return "; ".join(notes)


def _no_spread(values: np.ndarray) -> bool:
    """Equal up to floating-point rounding (differences of percentages are not exact)."""
    return len(values) > 0 and float(np.ptp(values)) <= 1e-9 * max(1.0, float(np.abs(values).max()))


def compare(
    frame: pd.DataFrame,
    contrasts: Iterable[ContrastLike],
    better: str = "max",
    metric: str = "",
    confidence: float = CONFIDENCE,
    alpha: float = ALPHA,
    power: float = POWER,
    holm: bool = True,
) -> pd.DataFrame:
    """One row per contrast: the paired difference treatment - reference over shared seeds.

    Columns: ``contrast``, ``factor``, ``level``, ``reference_level``, ``metric``, ``better``,
    the fields of :func:`compare_pair`, and (``holm``: corrected across these rows)
    ``p_holm`` and ``verdict``. To correct across several metrics of one report, concatenate
    the tables and call :func:`correct` on the whole.
    """
    if better not in ("max", "min"):
        raise ValueError(f"better must be 'max' or 'min', got {better!r}")
    by_seed = _by_seed(frame)
    rows = []
    for c in contrasts:
        head = {
            "contrast": c.label,
            "factor": getattr(c, "factor", ""),
            "level": getattr(c, "level", None),
            "reference_level": getattr(c, "reference_level", None),
            "metric": metric,
            "better": better,
        }
        rows.append(
            {**head, **compare_pair(by_seed, c.treatment, c.reference, confidence, alpha, power)}
        )
    table = pd.DataFrame(rows)
    for col in ("level", "reference_level"):  # levels keep their type (5 stays 5, not 5.0)
        if col in table:
            table[col] = pd.Series([r[col] for r in rows], dtype=object)
    return correct(table, alpha) if holm and len(table) else table


def correct(table: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Holm's correction across every row of ``table`` with a p-value (rows without one, as
    with fewer than 2 paired seeds, are not tested and not counted), then the verdict:
    ``better`` / ``worse`` (treatment against reference, in the direction of ``better``) where
    the corrected p is below ``alpha``, else "not distinguishable with n seeds"."""
    table = table.copy()
    p = table["p"].to_numpy(dtype=float)
    tested = np.isfinite(p)
    p_holm = np.full(len(table), np.nan)
    if tested.any():
        p_holm[tested] = multipletests(p[tested], alpha=alpha, method="holm")[1]
    table["p_holm"] = p_holm
    verdicts = []
    for ph, diff, better, n in zip(p_holm, table["diff"], table["better"], table["n"]):
        if np.isfinite(ph) and ph < alpha and diff != 0:
            up = diff > 0
            verdicts.append(BETTER if up == (better == "max") else WORSE)
        else:
            verdicts.append(not_distinguishable(int(n)))
    table["verdict"] = verdicts
    return table


def summary_line(row: Mapping[str, Any], digits: int = 2) -> str:
    """A corrected comparison row in words: the verdict, the difference and its interval, and
    for "not distinguishable" the smallest difference the design could have detected."""
    f = f"{{:+.{digits}f}}".format
    if row["n"] == 0:
        return f"{row['verdict']}: {row['note']}"
    text = f"{row['verdict']}: {f(row['diff'])}"
    if np.isfinite(row["ci_low"]):
        text += f" [{f(row['ci_low'])}, {f(row['ci_high'])}] ({row['ci_method']})"
    if np.isfinite(row["p_holm"]):
        text += f", Holm p = {row['p_holm']:.2g}"
    if row["verdict"] not in (BETTER, WORSE) and np.isfinite(row["mde"]):
        text += f"; smallest detectable difference {row['mde']:.{digits}f}"
    return text


# ------------------------------------------------------------------ full factorials


@dataclasses.dataclass(frozen=True)
class Anova:
    """An ANOVA table (``term``, ``df``, ``sum_sq``, ``mean_sq``, ``F``, ``p``,
    ``partial_eta_sq``), the runs it used and why some were left out or a test is missing."""

    table: pd.DataFrame
    n: int
    n_left_out: int
    note: str


def anova(frame: pd.DataFrame, factors: Sequence[str], cells: Sequence[str] | None = None) -> Anova:
    """Main effects and two-factor interactions of ``factors``, seeds as blocks.

    Model ``value ~ seed + factors + every pair of factors`` (ordinary least squares, type II
    sums of squares, statsmodels); higher interactions stay in the residual. Runs without a
    value are left out and counted. ``cells``: the cells of the factorial (leave out controls).
    """
    from statsmodels.formula.api import ols
    from statsmodels.stats.anova import anova_lm

    frame = frame if "outcome" in frame else with_outcome(frame)
    if cells is not None:
        frame = frame[frame["cell"].isin(list(cells))]
    _check_crossed(frame, factors)
    ok = frame[frame["outcome"] == OK]
    data = pd.DataFrame({"value": ok["value"].astype(float), "seed": ok["seed"].astype(str)})
    for i, f in enumerate(factors):
        data[f"f{i}"] = ok[f].astype(str).to_numpy()
    terms = [f"C(f{i})" for i in range(len(factors))]
    terms += [f"{a}:{b}" for a, b in itertools.combinations(terms, 2)]
    blocks = data["seed"].nunique() > 1
    formula = "value ~ " + " + ".join((["C(seed)"] if blocks else []) + terms)
    notes = []
    left_out = len(frame) - len(data)
    why = _not_crossed(data, factors)
    if why:
        return Anova(_empty_anova(), len(data), left_out, why)
    fit = ols(formula, data=data).fit()
    saturated = fit.df_resid < 1  # one run per cell and no seeds to block: nothing left to test
    with warnings.catch_warnings():  # a saturated model divides by zero residual df
        warnings.simplefilter("ignore", RuntimeWarning)
        table = _tidy_anova(anova_lm(fit, typ=1 if saturated else 2), factors)
    if saturated:
        table[["F", "p", "partial_eta_sq"]] = np.nan
        table.loc[table["term"] == "residual", ["sum_sq", "mean_sq"]] = (0.0, np.nan)
        notes.append("no residual degrees of freedom: no F test (add seeds)")
    if left_out:
        notes.append(f"{left_out} run(s) without a value left out")
    return Anova(table, len(data), left_out, "; ".join(notes))


def _check_crossed(frame: pd.DataFrame, factors: Sequence[str]) -> None:
    missing = [f for f in factors if f not in frame.columns]
    if missing:
        raise ValueError(f"no factor column {missing[0]!r} in the runs")
    per_cell = frame.groupby("cell", sort=False)[list(factors)].first()
    twins = per_cell[per_cell.duplicated(keep=False)]
    if len(twins):
        raise ValueError(
            f"cells {', '.join(map(str, twins.index[:2]))} have the same levels of "
            f"{', '.join(factors)}: leave out control cells (cells=)"
        )


def _tidy_anova(table: pd.DataFrame, factors: Sequence[str]) -> pd.DataFrame:
    names = {f"C(f{i})": f for i, f in enumerate(factors)}

    def term(t: str) -> str:
        if t == "Residual":
            return "residual"
        if t == "C(seed)":
            return "seed (block)"
        return " × ".join(names[p] for p in t.split(":"))

    out = pd.DataFrame(
        {
            "term": [term(t) for t in table.index],
            "df": table["df"].to_numpy(dtype=float),
            "sum_sq": table["sum_sq"].to_numpy(dtype=float),
            "F": table["F"].to_numpy(dtype=float),
            "p": table["PR(>F)"].to_numpy(dtype=float),
        }
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        out.insert(3, "mean_sq", out["sum_sq"] / out["df"])
        resid = out.loc[out["term"] == "residual", "sum_sq"].sum()
        out["partial_eta_sq"] = np.where(
            out["term"] == "residual", np.nan, out["sum_sq"] / (out["sum_sq"] + resid)
        )
    return out


def _empty_anova() -> pd.DataFrame:
    return pd.DataFrame(columns=["term", "df", "sum_sq", "mean_sq", "F", "p", "partial_eta_sq"])


def _not_crossed(data: pd.DataFrame, factors: Sequence[str]) -> str:
    """Why the runs with a value do not cross the factors ("" when they do): every level pair
    of every two factors must hold a value, or the model cannot be estimated."""
    if len(data) == 0:
        return "no run has a value: no ANOVA"
    for i, f in enumerate(factors):
        if data[f"f{i}"].nunique() < 2:
            return f"{f} has a single level with values: no ANOVA"
    for (i, a), (j, b) in itertools.combinations(enumerate(factors), 2):
        seen = set(zip(data[f"f{i}"], data[f"f{j}"]))
        for pair in itertools.product(data[f"f{i}"].unique(), data[f"f{j}"].unique()):
            if pair not in seen:
                return f"no value at {a}={pair[0]}, {b}={pair[1]}: the factors are not crossed, no ANOVA"
    return ""


def interaction_means(
    frame: pd.DataFrame,
    x: str,
    trace: str,
    cells: Sequence[str] | None = None,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Mean and interval over seeds per (``x``, ``trace``) level pair, each seed's value
    averaged over the other factors' cells (a seed counts where all of them have a value).
    Columns ``x``, ``trace``, ``n``, ``n_dropped``, ``mean``, ``ci_low``, ``ci_high``."""
    frame = frame if "outcome" in frame else with_outcome(frame)
    if cells is not None:
        frame = frame[frame["cell"].isin(list(cells))]
    missing = [f for f in (x, trace) if f not in frame.columns]
    if missing:
        raise ValueError(f"no factor column {missing[0]!r} in the runs")
    per_cell = frame.groupby("cell", sort=False)[[x, trace]].first().reset_index()
    rows = []
    for (xv, tv), g in per_cell.groupby([x, trace], sort=True):
        pairs, dropped = paired_values(frame, list(g["cell"]), list(g["cell"]))
        values = pairs["treatment"].to_numpy(dtype=float)
        low, high, _ = t_interval(values, confidence)
        mean = float(values.mean()) if len(values) else np.nan
        rows.append(
            dict(
                x=xv,
                trace=tv,
                n=len(values),
                n_dropped=len(dropped),
                mean=mean,
                ci_low=low,
                ci_high=high,
            )
        )
    return pd.DataFrame(rows, columns=["x", "trace", "n", "n_dropped", "mean", "ci_low", "ci_high"])


# ------------------------------------------------------------------ search studies


@dataclasses.dataclass(frozen=True)
class _Pair:
    label: str
    treatment: tuple[str, ...]
    reference: tuple[str, ...]
    factor: str = "rank"
    level: Any = None
    reference_level: Any = None


def final_seed_statistics(
    runs: pd.DataFrame,
    metric: str,
    better: str = "max",
    confidence: float = CONFIDENCE,
    alpha: float = ALPHA,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seed statistics of a search study's final re-runs of ``metric``.

    Returns the :func:`cell_summary` of each re-run configuration (``cell`` = config_id, with
    its search ``final_rank``, best first) and the paired comparison of the best-ranked
    configuration against each other one (Holm across them; the first row is the runner-up),
    with ``distinguishable`` (the corrected p below ``alpha``).
    """
    final = runs[runs["kind"] == KIND_FINAL]
    frame = tidy(final, metric, cell="config_id")
    ranks = (
        final.assign(cell=frame["cell"].to_numpy())
        .groupby("cell", sort=False)["final_rank"]
        .min()
        .sort_values(kind="stable")
    )
    summary = cell_summary(frame, confidence)
    summary.insert(1, "final_rank", summary["cell"].map(ranks).astype("Int64"))
    summary = summary.sort_values("final_rank", kind="stable").reset_index(drop=True)
    order = list(ranks.index)
    pairs = [
        _Pair(
            f"rank {ranks[best]} vs rank {ranks[other]}",
            (best,),
            (other,),
            level=int(ranks[best]),
            reference_level=int(ranks[other]),
        )
        for best, other in zip(itertools.repeat(order[0]) if order else (), order[1:])
    ]
    table = compare(frame, pairs, better, metric, confidence, alpha)
    if len(table):
        table["distinguishable"] = table["p_holm"] < alpha
    return summary, table
