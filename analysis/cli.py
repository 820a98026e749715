"""``zskt report``: the command-line entry of the analysis package.

The lead wires it into ``zskt_ray/cli.py`` with one line in ``build_parser``::

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

REPORT_HELP = "tables and an ablation report (HTML + Markdown) from a study's stored runs"
REPORT_DESCRIPTION = (
    "Read a study's runs from MLflow (and its Optuna study) and write into --out: runs.parquet, "
    "tables/ (Markdown, CSV, LaTeX), report.html (self-contained, opens offline) and report.md "
    "(figures beside it). STUDY is a study file (studies/NAME.yaml) or an MLflow experiment name. "
    "Nothing is trained."
)


def add_report_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``report`` to an argparse subparsers object; the handler is ``ns.func``."""
    p = subparsers.add_parser("report", help=REPORT_HELP, description=REPORT_DESCRIPTION)
    p.add_argument(
        "study", nargs="?", metavar="STUDY", help="study file (YAML) or MLflow experiment name"
    )
    p.add_argument("--experiment", help="MLflow experiment (default: the study file's, or STUDY)")
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
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(ns: argparse.Namespace) -> int:
    """Handler of ``zskt report``; prints what it wrote. Errors are one line, exit status 2."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from .load import AnalysisError, resolve_study
    from .report import make_report

    try:
        study_file = None
        experiment = ns.experiment
        if ns.study:
            path = Path(ns.study)
            if path.is_file():
                study_file = path
            elif path.suffix in (".yaml", ".yml") or "/" in ns.study:
                raise AnalysisError(f"study file not found: {ns.study}")
            elif experiment is None:
                experiment = ns.study
        ref = resolve_study(
            study_file, experiment, ns.tracking_uri, ns.study_name, ns.optuna_storage, ns.smoke
        )
        out = Path(ns.out) if ns.out else Path("reports") / (ref.name or ref.experiment)
        res = make_report(ref, out, top_n=ns.top, with_optuna=not ns.no_optuna)
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
