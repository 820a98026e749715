"""Tables of a study: accuracy per configuration, the paper's Table 1 and Table 2 layouts.

Rules (docs/method.md, "Published values" and "Tuning honestly"):

* Test accuracy comes only from the **final** seeded re-runs (``kind == "final"``), never from the
  search trials; only completed runs count.
* Spread over seeds is mean +- **population** standard deviation (``ddof=0``), as the paper reports.
* Which configuration stands for a teacher -> student pair in Tables 1 and 2 is decided on the
  search objective (validation), averaged over its final seeds, never on test accuracy; ties go to
  the better search rank.
* The paper's value is put beside ours only where data set and pair match (:mod:`analysis.paper`).

Every table exists twice: numeric (``*_numeric``: one column per number, for CSV) and for display
(strings such as ``82.44 ± 0.21 (n=3)``, for Markdown, LaTeX and HTML).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..names import COMPLETED, KIND_FINAL, KIND_KDAT, KIND_SEARCH
from . import paper

PAIR = ["dataset", "teacher_arch", "student_arch"]
DASH = "—"


# ------------------------------------------------------------------ aggregation


def completed(runs: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Completed runs of one kind (``search``, ``final`` or ``kdat``)."""
    return runs[(runs["kind"] == kind) & (runs["status"] == COMPLETED)]


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """``(mean, population std, n)`` of the finite values (NaN, NaN, 0 when there are none)."""
    arr = np.asarray([v for v in values if v is not None and not pd.isna(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std(ddof=0)), int(arr.size)


def _unique(values: pd.Series) -> Any:
    vals = values.dropna().unique()
    return vals[0] if len(vals) == 1 else None


def _stats(group: pd.DataFrame, prefix: str, col: str) -> dict[str, Any]:
    m, s, n = mean_std(group[col]) if col in group else (math.nan, math.nan, 0)
    return {f"{prefix}_mean": m, f"{prefix}_std": s, f"{prefix}_n": n}


def per_config(
    runs: pd.DataFrame, searched: Sequence[str] = (), objective: str = "val_acc", mode: str = "max"
) -> pd.DataFrame:
    """Accuracy per configuration over its final seeded re-runs (one row per ``config_id``).

    Columns: pair, ``config_id``, ``rank`` (search rank of the configuration), the searched
    parameters, ``seeds``, ``test_acc_*``, ``val_acc_*``, ``mte_*`` (``_mean``, ``_std`` with
    ddof=0, ``_n``), ``mte_k``, ``mte_xi``, ``objective_*``. Sorted best objective first.
    """
    final = completed(runs, KIND_FINAL)
    rows = []
    for cid, g in final.groupby("config_id", sort=False, dropna=False):
        first = g.iloc[0]
        row: dict[str, Any] = {k: first[k] for k in PAIR}
        row["config_id"] = cid
        row["rank"] = g["final_rank"].min() if g["final_rank"].notna().any() else pd.NA
        for p in searched:
            row[p] = first[p] if p in g else None
        row["seeds"] = ",".join(str(int(s)) for s in sorted(g["seed"].dropna()))
        row.update(_stats(g, "test_acc", "test_acc"))
        row.update(_stats(g, "val_acc", "val_acc"))
        row.update(_stats(g, "mte", "mte"))
        row["mte_k"] = _unique(g["mte_k"])
        row["mte_xi"] = _unique(g["mte_xi"])
        row.update(_stats(g, "objective", "objective"))
        rows.append(row)
    cols = [*PAIR, "config_id", "rank", *searched, "seeds"]
    for p in ("test_acc", "val_acc", "mte"):
        cols += [f"{p}_mean", f"{p}_std", f"{p}_n"]
    cols += ["mte_k", "mte_xi", "objective_mean", "objective_std", "objective_n"]
    df = pd.DataFrame(rows, columns=cols)
    if df.empty:
        return df
    df["_rank"] = pd.to_numeric(df["rank"], errors="coerce").fillna(np.inf)
    df = df.sort_values(
        ["objective_mean", "_rank"], ascending=[mode == "min", True], na_position="last"
    )
    return df.drop(columns="_rank").reset_index(drop=True)


def chosen_configs(configs: pd.DataFrame, prefer: Collection[str] = ()) -> pd.DataFrame:
    """The configuration standing for each pair: the first (best objective) row of each pair, or
    the pair's configuration in ``prefer`` (the ids a multi-objective study's declared rule
    chose, ``final.table_objective``)."""
    if configs.empty:
        return configs
    if prefer:
        first = configs["config_id"].isin(list(prefer)).to_numpy()
        order = np.concatenate([np.flatnonzero(first), np.flatnonzero(~first)])
        configs = configs.iloc[order]
    return configs.groupby(PAIR, sort=False, dropna=False).head(1).reset_index(drop=True)


def kdat_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """KD+AT baselines: one row per pair and M (images per class), mean +- population std."""
    kd = completed(runs, KIND_KDAT)
    rows = []
    for (ds, t, s, m), g in kd.groupby([*PAIR, "m_per_class"], sort=True, dropna=False):
        row = {"dataset": ds, "teacher_arch": t, "student_arch": s, "m_per_class": m}
        row["seeds"] = ",".join(str(int(x)) for x in sorted(g["seed"].dropna()))
        row.update(_stats(g, "test_acc", "test_acc"))
        row.update(_stats(g, "mte", "mte"))
        row["mte_k"] = _unique(g["mte_k"])
        row["mte_xi"] = _unique(g["mte_xi"])
        rows.append(row)
    cols = [*PAIR, "m_per_class", "seeds", "test_acc_mean", "test_acc_std", "test_acc_n"]
    cols += ["mte_mean", "mte_std", "mte_n", "mte_k", "mte_xi"]
    return pd.DataFrame(rows, columns=cols)


def teacher_accuracy(runs: pd.DataFrame) -> dict[tuple, float]:
    """Teacher test accuracy per pair (from final runs, else KD+AT, else search runs)."""
    out: dict[tuple, float] = {}
    for kind in (KIND_SEARCH, KIND_KDAT, KIND_FINAL):  # later kinds win
        g = completed(runs, kind).dropna(subset=["teacher_test_acc"])
        for key, grp in g.groupby(PAIR, sort=False):
            out[tuple(key)] = float(grp["teacher_test_acc"].mean())
    return out


def _pairs(configs: pd.DataFrame, kdat: pd.DataFrame) -> list[tuple]:
    """Teacher -> student pairs on their data sets, in the paper's order (others after)."""
    keys: dict[tuple, None] = {}
    for df in (configs, kdat):
        for _, r in df.iterrows():
            keys[tuple(r[k] for k in PAIR)] = None
    return sorted(keys, key=lambda k: paper.paper_order(*(str(x) for x in k)))


# ------------------------------------------------------------------ Table 1 and Table 2


def _pair_rows(
    chosen: pd.DataFrame, kd: pd.DataFrame, key: tuple
) -> tuple[pd.Series | None, list[pd.Series | None]]:
    """The chosen zero-shot configuration of a pair and its KD+AT rows ([None] when none ran)."""
    zs = chosen[(chosen[PAIR] == pd.Series(key, index=PAIR)).all(axis=1)]
    kds = kd[(kd[PAIR] == pd.Series(key, index=PAIR)).all(axis=1)]
    z = zs.iloc[0] if len(zs) else None
    return z, [k for _, k in kds.iterrows()] or [None]


def _table_rows(
    runs: pd.DataFrame, configs: pd.DataFrame, prefer: Collection[str] = ()
) -> Iterator[tuple[tuple, pd.Series | None, pd.Series | None, int | None]]:
    """The rows of Table 1 and Table 2: ``(pair, zero-shot configuration, KD+AT row, M)``, one
    per pair and KD+AT M (one with ``None`` when no KD+AT ran), pairs in the paper's order."""
    chosen = chosen_configs(configs, prefer)
    kd = kdat_summary(runs)
    for key in _pairs(chosen, kd):
        z, kd_rows = _pair_rows(chosen, kd, key)
        for k in kd_rows:
            yield key, z, k, None if k is None else int(k["m_per_class"])


def table1(runs: pd.DataFrame, configs: pd.DataFrame, prefer: Collection[str] = ()) -> pd.DataFrame:
    """Table-1 layout, numeric: one row per pair (and per KD+AT M when several were run)."""
    teach = teacher_accuracy(runs)
    rows = []
    for key, z, k, m in _table_rows(runs, configs, prefer):
        ds, t, s = key
        pub = paper.table1(ds, t, s)
        pub_kd = pub.kdat.get(m) if (pub and m is not None) else None
        rows.append(
            {
                "dataset": ds,
                "teacher_arch": t,
                "student_arch": s,
                "teacher_acc": teach.get(key, math.nan),
                "paper_teacher_acc": pub.teacher_acc if pub else math.nan,
                "zero_shot_config_id": None if z is None else z["config_id"],
                "zero_shot_acc_mean": math.nan if z is None else z["test_acc_mean"],
                "zero_shot_acc_std": math.nan if z is None else z["test_acc_std"],
                "zero_shot_n": 0 if z is None else z["test_acc_n"],
                "paper_zero_shot_mean": pub.zero_shot[0] if pub and pub.zero_shot else math.nan,
                "paper_zero_shot_std": (pub.zero_shot[1] if pub and pub.zero_shot else None)
                or math.nan,
                "kdat_m": m,
                "kdat_acc_mean": math.nan if k is None else k["test_acc_mean"],
                "kdat_acc_std": math.nan if k is None else k["test_acc_std"],
                "kdat_n": 0 if k is None else k["test_acc_n"],
                "paper_kdat_mean": pub_kd[0] if pub_kd else math.nan,
                "paper_kdat_std": (pub_kd[1] if pub_kd else None) or math.nan,
            }
        )
    df = pd.DataFrame(rows, columns=_T1_COLS)
    df["kdat_m"] = df["kdat_m"].astype("Int64")
    return df


_T1_COLS = [
    "dataset", "teacher_arch", "student_arch", "teacher_acc", "paper_teacher_acc",
    "zero_shot_config_id", "zero_shot_acc_mean", "zero_shot_acc_std", "zero_shot_n",
    "paper_zero_shot_mean", "paper_zero_shot_std", "kdat_m", "kdat_acc_mean", "kdat_acc_std",
    "kdat_n", "paper_kdat_mean", "paper_kdat_std",
]  # fmt: skip


def table2(runs: pd.DataFrame, configs: pd.DataFrame, prefer: Collection[str] = ()) -> pd.DataFrame:
    """Table-2 layout, numeric: MTE of the zero-shot and KD+AT students against the teacher."""
    rows = []
    for key, z, k, m in _table_rows(runs, configs, prefer):
        ds, t, s = key
        pub = paper.table2(ds, t, s)
        rows.append(
            {
                "dataset": ds,
                "teacher_arch": t,
                "student_arch": s,
                "zero_shot_config_id": None if z is None else z["config_id"],
                "zero_shot_mte_mean": math.nan if z is None else z["mte_mean"],
                "zero_shot_mte_std": math.nan if z is None else z["mte_std"],
                "zero_shot_n": 0 if z is None else z["mte_n"],
                "zero_shot_k": None if z is None else z["mte_k"],
                "zero_shot_xi": None if z is None else z["mte_xi"],
                "paper_zero_shot_mte": pub["zero_shot"] if pub else math.nan,
                "kdat_m": m,
                "kdat_mte_mean": math.nan if k is None else k["mte_mean"],
                "kdat_mte_std": math.nan if k is None else k["mte_std"],
                "kdat_n": 0 if k is None else k["mte_n"],
                "kdat_k": None if k is None else k["mte_k"],
                "kdat_xi": None if k is None else k["mte_xi"],
                "paper_kdat_mte": pub["kdat"] if pub and m == pub["kdat_m"] else math.nan,
                "paper_k": paper.MTE_K if pub else None,
                "paper_xi": paper.MTE_XI if pub else None,
            }
        )
    df = pd.DataFrame(rows, columns=_T2_COLS)
    for c in ("kdat_m", "zero_shot_k", "kdat_k", "paper_k"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    for c in ("zero_shot_xi", "kdat_xi", "paper_xi"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    return df


_T2_COLS = [
    "dataset", "teacher_arch", "student_arch", "zero_shot_config_id", "zero_shot_mte_mean",
    "zero_shot_mte_std", "zero_shot_n", "zero_shot_k", "zero_shot_xi", "paper_zero_shot_mte",
    "kdat_m", "kdat_mte_mean", "kdat_mte_std", "kdat_n", "kdat_k", "kdat_xi", "paper_kdat_mte",
    "paper_k", "paper_xi",
]  # fmt: skip


# ------------------------------------------------------------------ display formatting


def fmt_pm(mean: float, std: float, n: int | None = None, digits: int = 2) -> str:
    """``82.44 ± 0.21 (n=3)``; ``—`` when there is no value."""
    if mean is None or pd.isna(mean):
        return DASH
    out = f"{mean:.{digits}f}"
    if std is not None and not pd.isna(std):
        out += f" ± {std:.{digits}f}"
    if n is not None and not pd.isna(n):
        out += f" (n={int(n)})"
    return out


def fmt_value(v: Any) -> str:
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return DASH
    if isinstance(v, float | np.floating):
        return f"{float(v):g}"
    return str(v)


def _pair_label(r: pd.Series) -> str:
    return f"{str(r['teacher_arch']).upper()} → {str(r['student_arch']).upper()}"


def _m_label(m: Any) -> str:
    if m is None or pd.isna(m):
        return DASH
    return "full" if int(m) == -1 else str(int(m))


def _mte_cell(mean: float, std: float, n: int, k: Any, xi: Any) -> str:
    if mean is None or pd.isna(mean):
        return DASH
    out = f"{mean:.3f}" + ("" if std is None or pd.isna(std) else f" ± {std:.3f}")
    inner = ([f"n={int(n)}"] if n is not None and not pd.isna(n) else []) + [
        f"K={fmt_value(k)}",
        f"ξ={fmt_value(xi)}",
    ]
    return f"{out} ({', '.join(inner)})"


def display_table1(t1: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in t1.iterrows():
        rows.append(
            {
                "teacher → student": _pair_label(r),
                "data set": r["dataset"],
                "teacher": fmt_pm(r["teacher_acc"], None),
                "teacher (paper)": fmt_pm(r["paper_teacher_acc"], None),
                "zero-shot": fmt_pm(
                    r["zero_shot_acc_mean"], r["zero_shot_acc_std"], r["zero_shot_n"] or None
                ),
                "zero-shot (paper)": fmt_pm(r["paper_zero_shot_mean"], r["paper_zero_shot_std"]),
                "KD+AT M": _m_label(r["kdat_m"]),
                "KD+AT": fmt_pm(r["kdat_acc_mean"], r["kdat_acc_std"], r["kdat_n"] or None),
                "KD+AT (paper, same M)": fmt_pm(r["paper_kdat_mean"], r["paper_kdat_std"]),
            }
        )
    return pd.DataFrame(rows, columns=_D1_COLS)


_D1_COLS = [
    "teacher → student", "data set", "teacher", "teacher (paper)", "zero-shot",
    "zero-shot (paper)", "KD+AT M", "KD+AT", "KD+AT (paper, same M)",
]  # fmt: skip


def display_table2(t2: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in t2.iterrows():
        pk, px = r["paper_k"], r["paper_xi"]
        rows.append(
            {
                "teacher → student": _pair_label(r),
                "data set": r["dataset"],
                "zero-shot MTE": _mte_cell(
                    r["zero_shot_mte_mean"],
                    r["zero_shot_mte_std"],
                    r["zero_shot_n"] or None,
                    r["zero_shot_k"],
                    r["zero_shot_xi"],
                ),
                "zero-shot MTE (paper)": _mte_cell(r["paper_zero_shot_mte"], None, None, pk, px),
                "KD+AT M": _m_label(r["kdat_m"]),
                "KD+AT MTE": _mte_cell(
                    r["kdat_mte_mean"],
                    r["kdat_mte_std"],
                    r["kdat_n"] or None,
                    r["kdat_k"],
                    r["kdat_xi"],
                ),
                "KD+AT MTE (paper)": _mte_cell(r["paper_kdat_mte"], None, None, pk, px),
            }
        )
    return pd.DataFrame(rows, columns=_D2_COLS)


_D2_COLS = [
    "teacher → student", "data set", "zero-shot MTE", "zero-shot MTE (paper)", "KD+AT M",
    "KD+AT MTE", "KD+AT MTE (paper)",
]  # fmt: skip


def display_per_config(
    configs: pd.DataFrame, searched: Sequence[str], objective: str
) -> pd.DataFrame:
    rows = []
    for _, r in configs.iterrows():
        row = {
            "rank": fmt_value(r["rank"]),
            "config": r["config_id"],
            "teacher → student": _pair_label(r),
        }
        for p in searched:
            row[p] = fmt_value(r.get(p))
        row["seeds"] = r["seeds"]
        if objective != "val_acc":
            row[f"{objective} (final)"] = fmt_pm(r["objective_mean"], r["objective_std"], digits=4)
        row["val acc"] = fmt_pm(r["val_acc_mean"], r["val_acc_std"])
        row["test acc"] = fmt_pm(r["test_acc_mean"], r["test_acc_std"], r["test_acc_n"])
        row["MTE"] = _mte_cell(r["mte_mean"], r["mte_std"], None, r["mte_k"], r["mte_xi"])
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ writers


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub pipe table (no dependency on ``tabulate``)."""

    def cell(v: Any) -> str:
        return fmt_value(v).replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in df.columns]
    lines = [
        "| " + " | ".join(cell(c) for c in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}  # fmt: skip
_LATEX_SYMBOLS = {"±": r"$\pm$", "→": r"$\to$", "ξ": r"$\xi$", DASH: "--"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)
    for sym, tex in _LATEX_SYMBOLS.items():
        out = out.replace(sym, tex)
    return out


def to_latex(df: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs ``table`` (needs ``\\usepackage{booktabs}``)."""
    cols = [latex_escape(str(c)) for c in df.columns]
    lines = [r"\begin{table}[ht]", r"\centering", r"\small"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [
        rf"\begin{{tabular}}{{{'l' * len(cols)}}}",
        r"\toprule",
        " & ".join(cols) + r" \\",
        r"\midrule",
    ]
    for row in df.itertuples(index=False):
        lines.append(" & ".join(latex_escape(fmt_value(v)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


@dataclass
class Table:
    """One table in both forms, with its caption."""

    name: str
    caption: str
    numeric: pd.DataFrame
    display: pd.DataFrame

    def write(self, out_dir: Path) -> list[Path]:
        """``<name>.csv`` (numeric), ``<name>.md`` and ``<name>.tex`` (display) in ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        csv = out_dir / f"{self.name}.csv"
        self.numeric.to_csv(csv, index=False)
        md = out_dir / f"{self.name}.md"
        md.write_text(f"{self.caption}\n\n{to_markdown(self.display)}")
        tex = out_dir / f"{self.name}.tex"
        tex.write_text(to_latex(self.display, self.caption, f"tab:{self.name}"))
        return [csv, md, tex]


def build_tables(
    runs: pd.DataFrame,
    searched: Sequence[str] = (),
    objective: str = "val_acc",
    mode: str = "max",
    prefer: Collection[str] = (),
    rule: str = "",
) -> list[Table]:
    """Per-configuration accuracy, Table 1 and Table 2 of a study's runs. ``prefer`` and ``rule``:
    the configurations a declared rule chose to stand for their pairs (multi-objective studies:
    ``analysis.fronts.table_choice``) and the rule in words."""
    configs = per_config(runs, searched, objective, mode)
    t1 = table1(runs, configs, prefer)
    t2 = table2(runs, configs, prefer)
    sel = rule or f"the configuration with the best mean {objective} ({mode}) over the final seeds"
    return [
        Table(
            "accuracy_per_config",
            "Accuracy per configuration: final seeded re-runs only (never search trials); "
            "mean ± population std (ddof=0) over seeds; accuracies in %.",
            configs,
            display_per_config(configs, searched, objective),
        ),
        Table(
            "table1",
            f"Table 1 layout: test accuracy (%) of the teacher, the zero-shot student (final re-runs of "
            f"{sel}) and the KD+AT student with M images per class; "
            f"mean ± population std over seeds; paper values: {paper.SOURCE}.",
            t1,
            display_table1(t1),
        ),
        Table(
            "table2",
            f"Table 2 layout: Mean Transition Error against the teacher (lower = closer belief match), "
            f"with its K and ξ; paper values (K={paper.MTE_K}, ξ={paper.MTE_XI:g}): {paper.SOURCE}.",
            t2,
            display_table2(t2),
        ),
    ]
