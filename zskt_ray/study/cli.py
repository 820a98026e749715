"""``zskt study``: run, resume and validate hyperparameter studies.

Wired into the main CLI with ``add_study_commands(subparsers)``; each subcommand sets
``func(args) -> int``. Errors in the study file print ``error: <one line>`` and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from .cluster import check_cluster_safe
from .spec import StudyError, load_spec, preflight

EXIT_BAD_STUDY = 2
EXIT_INTERRUPTED = 130


def add_study_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``study`` command group to an ``argparse`` subparsers object."""
    study = subparsers.add_parser(
        "study",
        help="run, resume or validate a hyperparameter study (Ray Tune + Optuna + MLflow)",
        description="Hyperparameter studies of ZSKT: a study file in, a searched, tracked, resumable study out.",
    )
    sub = study.add_subparsers(dest="study_command", metavar="{run,resume,validate}")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("study_file", metavar="STUDY.yaml", help="study file (see studies/)")
        p.add_argument(
            "--address",
            default=None,
            help="join a running Ray cluster ('auto' or host:port; default: $RAY_ADDRESS or a new local Ray)",
        )
        p.add_argument("--num-trials", type=int, default=None, help="override search.num_trials")
        p.add_argument(
            "--smoke",
            action="store_true",
            help="a quick version of the study (2 short trials, 1 seed, tiny MTE; named <name>-smoke)",
        )
        p.add_argument(
            "--inject-nan",
            metavar="PARAM=VALUE@ITERATION",
            default=None,
            help="fault injection, to check divergence handling: search trials whose PARAM equals "
            "VALUE get NaN student weights at ITERATION (e.g. beta=0@10); they end failed, the study goes on",
        )

    run = sub.add_parser("run", help="run a study (running it again resumes it)")
    common(run)
    run.set_defaults(func=cmd_run)
    resume = sub.add_parser("resume", help="continue an interrupted study from its stored state")
    common(resume)
    resume.set_defaults(func=cmd_resume)
    validate = sub.add_parser(
        "validate", help="check a study file (and teacher, data, resources) without running it"
    )
    common(validate)
    validate.set_defaults(func=cmd_validate)
    return study


def parse_fault(text: str | None) -> dict[str, Any] | None:
    """``PARAM=VALUE@ITERATION`` -> the trainable's fault hook; a StudyError naming what is wrong."""
    if text is None:
        return None
    from ..config import DistillConfig

    head, sep, it = text.rpartition("@")
    param, eq, value = head.partition("=")
    if not sep or not eq or not param or not value:
        raise StudyError(
            f"--inject-nan: expected PARAM=VALUE@ITERATION (e.g. beta=0@10), got {text!r}"
        )
    if param not in {f.name for f in dataclasses.fields(DistillConfig)}:
        raise StudyError(f"--inject-nan: {param!r} is not a loop setting (a DistillConfig field)")
    try:
        iteration = int(it)
    except ValueError:
        raise StudyError(f"--inject-nan: iteration must be an integer, got {it!r}") from None
    if iteration < 1:
        raise StudyError(f"--inject-nan: iteration must be >= 1, got {iteration}")
    return {"param": param, "value": _scalar(value), "iteration": iteration}


def _scalar(text: str) -> Any:
    """``3`` -> 3, ``1e-3`` -> 0.001 (YAML alone reads that as a string), else YAML's reading."""
    import yaml

    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def _load(args: argparse.Namespace):
    """The study file, validated; on a cluster also checked for stores only one node can see."""
    if args.num_trials is not None and args.num_trials < 1:
        raise StudyError(f"--num-trials: must be >= 1, got {args.num_trials}")
    spec = load_spec(args.study_file, smoke=args.smoke, num_trials=args.num_trials)
    check_cluster_safe(spec, args.address)  # before Ray starts and before any trial
    return spec


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return EXIT_BAD_STUDY


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        spec = _load(args)
        warnings = preflight(spec, strict=args.address is None) if args.address is None else []
    except StudyError as e:
        return _error(str(e))
    for w in warnings:
        print(f"warning: {w}")
    print(
        f"ok: study {spec.name!r}: {spec.num_trials} trials over {', '.join(p.name for p in spec.space) or 'nothing'} "
        f"({spec.metric}, {spec.mode}); {spec.base.iterations} iterations each, "
        f"scheduler {spec.scheduler.type}; final: top {spec.final_top_k} x seeds {list(spec.final_seeds)}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import StudyInterrupted, run_study

    try:
        spec = _load(args)
        fault = parse_fault(args.inject_nan)
        run_study(spec, address=args.address, fault=fault)
    except StudyError as e:
        return _error(str(e))
    except StudyInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from ray import tune

    try:
        spec = _load(args)
    except StudyError as e:
        return _error(str(e))
    if not tune.Tuner.can_restore(spec.experiment_dir):
        from . import space

        if not space.finished_counts(spec):
            return _error(
                f"{spec.source}: nothing to resume: study {spec.name!r} has no stored state under {spec.storage_path}"
            )
    return cmd_run(args)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m zskt_ray.study.cli study run ...``)."""
    parser = argparse.ArgumentParser(prog="zskt")
    add_study_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
