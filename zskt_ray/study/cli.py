"""``zskt study``: run, resume and validate hyperparameter studies.

Wired into the main CLI with ``add_study_commands(subparsers)``; each subcommand sets
``func(args) -> int``. Errors in the study file print ``error: <one line>`` and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import sys
from typing import Any

from ..paths import sqlite_path
from .cluster import check_cluster_safe
from .errors import StudyError
from .preflight import preflight
from .spec import load_spec

EXIT_BAD_STUDY = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM: `kill PID`, `timeout`, Slurm, Kubernetes


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


def check_fault(spec: Any, fault: dict[str, Any] | None) -> None:
    """Refuse a fault whose value no trial of ``spec`` can have (the hook would never fire)."""
    if fault is None:
        return
    name, value = fault["param"], fault["value"]
    design = spec.design
    if design is not None:  # an ablation: the value of some cell
        values = list(dict.fromkeys(getattr(design.config(r), name) for r in design.runs))
        if value not in values:
            raise StudyError(
                f"--inject-nan: no cell of the ablation has {name}={value!r} "
                f"(its cells have {', '.join(map(repr, values))})"
            )
        return
    param = next((p for p in spec.space if p.name == name), None)
    if param is None:
        fixed = getattr(spec.base, name)
        if value != fixed:
            raise StudyError(
                f"--inject-nan: {name} is not searched and every trial has {name}={fixed!r}, "
                f"so {name}={value!r} never occurs"
            )
        return
    if param.type == "categorical":
        if value not in param.choices:
            raise StudyError(
                f"--inject-nan: {name}={value!r} is not in the search space "
                f"(choices: {', '.join(repr(c) for c in param.choices)})"
            )
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    inside = number and float(param.low) <= value <= float(param.high)
    on_grid = number and (param.type != "int" or float(value).is_integer())
    if inside and on_grid and param.step:
        ratio = (value - param.low) / param.step
        on_grid = abs(ratio - round(ratio)) < 1e-9
    if not (inside and on_grid):
        step = f" step {param.step:g}" if param.step else ""
        raise StudyError(
            f"--inject-nan: {name}={value!r} is not in the search space "
            f"({param.type} from {param.low:g} to {param.high:g}{step})"
        )


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


def _error(error: StudyError | str) -> int:
    """One ``error:`` line per problem (a study file with three mistakes prints three lines)."""
    problems = error.problems if isinstance(error, StudyError) else [error]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return EXIT_BAD_STUDY


def check(args: argparse.Namespace) -> tuple[Any, dict[str, Any] | None, list[str]]:
    """What ``validate`` and the first step of ``run`` / ``resume`` do: the whole study file, then
    the study against what exists (teacher file, data, and this machine's resources unless the
    study joins a cluster, whose resources are checked once it is joined), and the fault
    injection against the search space. Creates nothing."""
    spec = _load(args)
    joins_cluster = bool(args.address or os.environ.get("RAY_ADDRESS"))
    cluster = {"CPU": math.inf, "GPU": math.inf} if joins_cluster else None
    warnings = preflight(spec, cluster=cluster)
    fault = parse_fault(args.inject_nan)
    check_fault(spec, fault)
    return spec, fault, warnings


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        spec, _, warnings = check(args)
    except StudyError as e:
        return _error(e)
    for w in warnings:
        print(f"warning: {w}")
    design = spec.design
    if design is not None:
        controls = [c.control for c in design.cells if c.control is not None]
        print(
            f"ok: ablation {spec.name!r}: {len(design.cells)} cells ({design.kind}"
            f"{'; controls: ' + ', '.join(controls) if controls else ''}) x seeds "
            f"{list(design.seeds)} = {len(design.runs)} runs of {spec.base.iterations} iterations"
        )
        return 0
    print(
        f"ok: study {spec.name!r}: {spec.num_trials} trials over {', '.join(p.name for p in spec.space) or 'nothing'} "
        f"({'; '.join(f'{m}, {mode}' for m, mode in spec.objectives)}); "
        f"{spec.base.iterations} iterations each, "
        f"scheduler {spec.scheduler.type}; final: top {spec.final.top_k} x seeds {spec.final.seeds}"
    )
    return 0


_TERMINATED: list[int] = []  # SIGTERMs this process received during a run


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM ends a run as Ctrl-C does: while a Tune experiment runs, Tune's own SIGINT handler
    stops it and saves its state (the runner then closes the runs in flight); elsewhere a
    KeyboardInterrupt. The exit status says which signal it was (:data:`EXIT_TERMINATED`)."""
    _TERMINATED.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored or left to the system: still stop
        raise KeyboardInterrupt


def _interrupted_status() -> int:
    return EXIT_TERMINATED if _TERMINATED else EXIT_INTERRUPTED


def cmd_run(args: argparse.Namespace) -> int:
    from .lock import study_lock

    previous = signal.signal(signal.SIGTERM, _terminated)
    _TERMINATED.clear()
    try:
        spec, fault, warnings = check(args)
        for w in warnings:
            print(f"warning: {w}")
        with study_lock(spec.name, spec.source):  # at once: before Ray's slow imports
            from .runner import StudyInterrupted, run_study

            try:
                run_study(spec, address=args.address, fault=fault)
            except StudyInterrupted as e:
                print(f"interrupted: {e}", file=sys.stderr)
                return _interrupted_status()
    except StudyError as e:
        return _error(e)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return _interrupted_status()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from ray import tune

    try:
        spec, _, _ = check(args)
    except StudyError as e:
        return _error(e)
    if not tune.Tuner.can_restore(spec.experiment_dir):
        from . import space

        db = sqlite_path(spec.optuna_storage)
        missing = db is not None and not db.is_file()
        if missing or not space.finished_counts(spec):  # (reading must not create the database)
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
