"""``zskt report``: the command-line entry of the analysis package.

``zskt_ray/cli.py`` adds it to the ``zskt`` command with one line in ``build_parser``::

    from zskt_ray.analysis.cli import add_report_command; add_report_command(sub)

It also runs on its own: ``python -m zskt_ray.analysis report STUDY``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPORT_HELP = "tables and an ablation report (HTML + Markdown) from stored studies"
REPORT_DESCRIPTION = (
    "Read studies' runs from MLflow (and their Optuna studies) and write into --out: runs.parquet, "
    "tables/ (Markdown, CSV, LaTeX), report.html (self-contained, opens offline) and report.md "
    "(figures beside it). STUDY is a study file (studies/NAME.yaml) or an MLflow experiment name; "
    "several STUDY (or --experiment given several times) give one Table 1 and one Table 2 over "
    "all their pairs and data sets and one combined report. Search trials are compared at equal "
    "budgets (ASHA rungs). Nothing is trained."
)


def add_report_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``report`` to an argparse subparsers object; the handler is ``ns.func``."""
    from .rungs import DEFAULT_MIN_TRIALS

    p = subparsers.add_parser("report", help=REPORT_HELP, description=REPORT_DESCRIPTION)
    p.add_argument(
        "study", nargs="*", metavar="STUDY", help="study files (YAML) or MLflow experiment names"
    )
    p.add_argument(
        "--experiment",
        action="append",
        default=[],
        help="MLflow experiment (repeatable; with one study file: that file's experiment instead)",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: the study file's, else sqlite:///$ZSKT_HOME/mlflow.db)",
    )
    p.add_argument("--study-name", help="study name inside the experiment (when it holds several)")
    p.add_argument(
        "--optuna-storage", help="Optuna storage URL (default: the study file's / study.yaml's)"
    )
    p.add_argument("--no-optuna", action="store_true", help="do not read the Optuna study")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="report the study file's quick version (zskt study run --smoke; named <name>-smoke)",
    )
    p.add_argument("--out", help="output directory (default: reports/<study>)")
    p.add_argument(
        "--top", type=int, default=3, help="best search trials in the learning curves [3]"
    )
    p.add_argument(
        "--min-trials",
        type=int,
        default=DEFAULT_MIN_TRIALS,
        help=f"compare search trials at the deepest ASHA rung this many trials reached [{DEFAULT_MIN_TRIALS}]",
    )
    p.add_argument(
        "--rung", type=int, help="compare search trials at this rung (iteration) instead"
    )
    p.add_argument(
        "--importance",
        choices=("fanova", "ped-anova"),
        default="fanova",
        help="Optuna importance evaluator [fanova]",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar while loading (default: on a terminal)",
    )
    p.set_defaults(func=cmd_report)
    return p


def _refs(ns: argparse.Namespace) -> list[Any]:
    """One StudyRef per study file, experiment name or --experiment."""
    from .load import AnalysisError, resolve_study

    files: list[Path] = []
    experiments: list[str] = []
    for item in ns.study:
        path = Path(item)
        if path.is_file():
            files.append(path)
        elif path.suffix in (".yaml", ".yml") or "/" in item:
            raise AnalysisError(f"study file not found: {item}")
        else:
            experiments.append(item)
    extra = list(ns.experiment)
    if len(files) == 1 and not experiments and len(extra) == 1:
        override, extra = extra[0], []  # `zskt report FILE --experiment NAME`: that file's runs
    else:
        override = None
    experiments += extra
    if not files and not experiments:
        raise AnalysisError("give a study file or an MLflow experiment name")
    if (len(files) + len(experiments)) > 1 and ns.study_name:
        raise AnalysisError("--study-name names one study; give it with one STUDY only")
    refs = [
        resolve_study(f, override, ns.tracking_uri, ns.study_name, ns.optuna_storage, ns.smoke)
        for f in files
    ]
    refs += [
        resolve_study(None, e, ns.tracking_uri, ns.study_name, ns.optuna_storage)
        for e in experiments
    ]
    return refs


def cmd_report(ns: argparse.Namespace) -> int:
    """Handler of ``zskt report``; prints what it wrote. Errors are one line, exit status 2."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from .load import AnalysisError
    from .report import make_report

    try:
        refs = _refs(ns)
        names = [r.name or r.experiment for r in refs]
        default = names[0] if len(names) == 1 else "+".join(names)
        out = Path(ns.out) if ns.out else Path("reports") / default
        res = make_report(
            refs,
            out,
            top_n=ns.top,
            with_optuna=not ns.no_optuna,
            min_trials=ns.min_trials,
            rung=ns.rung,
            importance=ns.importance,
            progress=ns.progress,
        )
    except AnalysisError as e:
        print(f"zskt report: error: {e}", file=sys.stderr)
        return 2
    excl = ", ".join(f"{n} {s}" for s, n in sorted(res.excluded.items())) or "none"
    print(f"study {res.study}: {res.n_runs} runs, {res.n_excluded} excluded ({excl})")
    print(f"runs table  {res.parquet}")
    for t in res.tables:
        print(f"table       {t}")
    print(f"report      {res.html} ({len(res.figures)} images embedded)")
    print(f"markdown    {res.markdown}")
    for note in res.notes:
        print(f"note        {note}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zskt_ray.analysis")
    sub = parser.add_subparsers(dest="command", required=True)
    add_report_command(sub)
    ns = parser.parse_args(argv)
    return ns.func(ns)


if __name__ == "__main__":
    sys.exit(main())
