"""``zskt``: the command line. It parses, calls the library, and prints; nothing more.

Options of ``distill``, ``teacher train`` and ``kdat`` are generated from the config dataclasses,
so every config field is a flag with the field's documentation as help (``n_s`` -> ``--n-s``).
Precedence: flags > ``--config FILE.yaml`` > the dataclass defaults (the paper's).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import names
from .analysis.cli import add_report_command
from .config import (
    DistillConfig,
    KDATConfig,
    TeacherConfig,
    from_dict,
    load_yaml,
    save_yaml,
    to_dict,
)
from .names import CHECKPOINT_FILE
from .study.cli import add_study_commands

ROOT_HELP = "Zero-shot Knowledge Transfer (Micaelli & Storkey, 2019): teachers, distillation, baselines, MTE, studies."


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line naming the argument."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


# ---------------------------------------------------------------- dataclass -> flags


def _add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One flag per dataclass field, default None (= not given), typed from the annotation."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} fields (defaults in brackets)")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        ann = hints[f.name]
        args = typing.get_args(ann)
        base = (
            next((a for a in args if a is not type(None)), ann)
            if args and typing.get_origin(ann) is not tuple
            else ann
        )
        doc = f"{f.metadata.get('doc', '')} [{f.default}]"
        if base is bool:
            group.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=doc
            )
        elif typing.get_origin(ann) is tuple:
            group.add_argument(
                flag, dest=f.name, type=int, nargs="+", default=None, metavar="N", help=doc
            )
        else:
            group.add_argument(
                flag, dest=f.name, type=base, default=None, metavar=f.name.upper(), help=doc
            )


def _build_config(cls: type, ns: argparse.Namespace, base: dict[str, Any] | None = None) -> Any:
    """Defaults < base < --config file < flags; a config error becomes a one-line CLIError."""
    values: dict[str, Any] = dict(base or {})
    if getattr(ns, "config", None):
        values.update(to_dict(load_yaml(cls, ns.config)))
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(ns).items() if k in names and v is not None})
    try:
        return from_dict(cls, values)
    except (KeyError, TypeError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) else str(e)
        raise CLIError(f"invalid configuration: {msg}") from None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _default_out(kind: str) -> Path:
    return Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


# ---------------------------------------------------------------- commands


def cmd_teacher_train(ns: argparse.Namespace) -> int:
    from .teacher import default_teacher_path, ensure_teacher, read_teacher_meta, train_teacher

    # The recipe of the chosen data set is the base; a config file and flags override it.
    chosen = load_yaml(TeacherConfig, ns.config) if ns.config else TeacherConfig()
    try:
        base = to_dict(TeacherConfig.recipe(ns.dataset or chosen.dataset, ns.arch or chosen.arch))
    except ValueError as e:
        raise CLIError(f"argument --dataset: {e}") from None
    cfg = _build_config(TeacherConfig, ns, base)
    path = Path(ns.out) if ns.out else default_teacher_path(cfg.dataset, cfg.arch, cfg.seed)
    if ns.address:
        path = _train_teacher_on_cluster(cfg, path, ns)
    else:
        path = train_teacher(cfg, path) if ns.force else ensure_teacher(cfg, path)
    meta = read_teacher_meta(path)
    out = {"path": str(path), "test_acc": meta["test_acc"], "val_acc": meta["val_acc"]}
    if names.TEACHER_TRAINED_ON in meta:
        out[names.TEACHER_TRAINED_ON] = meta[names.TEACHER_TRAINED_ON]
    print(json.dumps(out))
    return 0


def _train_teacher_on_cluster(cfg: TeacherConfig, path: Path, ns: argparse.Namespace) -> Path:
    """``zskt teacher train --address``: a Ray task on the cluster trains it (as a study does for
    a missing teacher); this process writes it into the store, under the store's lock."""
    import functools

    import ray

    from .study.nodes import teacher_resources, train_teacher_remotely
    from .teacher import ensure_teacher, teacher_lock

    cfg = dataclasses.replace(cfg, data_root=str(Path(cfg.data_root).expanduser().resolve()))
    ray.init(address=ns.address, log_to_driver=False)
    try:
        resources = teacher_resources(ns.cpus, ns.gpus, 1.0, 0.0)
        train = functools.partial(train_teacher_remotely, resources=resources)
        if not ns.force:
            return ensure_teacher(cfg, path, log=print, train=train)
        with teacher_lock(path, print):
            return train(cfg, path, print)
    finally:
        ray.shutdown()


def _teacher_for(dataset: str, arch: str, path: str | None, train_missing: bool) -> Path:
    from .teacher import default_teacher_path, ensure_teacher

    resolved = Path(path) if path else default_teacher_path(dataset, arch)
    if resolved.is_file():
        return resolved
    if train_missing:
        return ensure_teacher(TeacherConfig.recipe(dataset, arch), resolved)
    raise CLIError(
        f"teacher file not found: {resolved} (pass --train-teacher, or run `zskt teacher train "
        f"--dataset {dataset} --arch {arch}`)"
    )


def cmd_distill(ns: argparse.Namespace) -> int:
    from .utils import small_net_threads

    cfg: DistillConfig = _build_config(DistillConfig, ns)
    with small_net_threads(cfg.teacher_arch, cfg.student_arch):
        return _run_distill(ns, cfg)


def _run_distill(ns: argparse.Namespace, cfg: DistillConfig) -> int:
    import torch
    from tqdm import tqdm

    from .checkpoint import save_model, student_meta
    from .data import load_dataset, make_loader
    from .loop import DivergenceError, ZeroShotDistiller, read_checkpoint, resume_conflicts
    from .teacher import load_teacher

    out = Path(ns.out) if ns.out else _default_out("distill")
    ckpt = out / CHECKPOINT_FILE
    if ckpt.exists() and not ns.resume:
        raise CLIError(
            f"{ckpt} exists: pass --resume to continue that run, or choose another --out"
        )
    saved = None
    if ns.resume:
        if not ckpt.is_file():
            raise CLIError(
                f"--resume: no checkpoint at {ckpt}, nothing to resume "
                "(check --out, or drop --resume to start a new run)"
            )
        saved = read_checkpoint(ckpt)
    # A resumed run starts from its own config; flags and --config may change only what does not
    # alter the run (device, evaluation batch size, data location).
    cfg: DistillConfig = _build_config(DistillConfig, ns, saved["config"] if saved else None)
    if saved is not None:
        changed = resume_conflicts(saved, cfg)
        if changed:
            raise CLIError(
                f"--resume: {ckpt} was written with other settings: {'; '.join(changed)} "
                "(resume with the same settings, or start a new run in another --out)"
            )
    teacher_path = _teacher_for(cfg.dataset, cfg.teacher_arch, cfg.teacher_path, ns.train_teacher)
    splits = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download)
    teacher, teacher_meta = load_teacher(teacher_path, "cpu", cfg.dataset, cfg.teacher_arch)
    val_loader = make_loader(splits.val, cfg.eval_batch_size, shuffle=False)
    # On 2-D data the run records frames of its decision-region picture (saved with checkpoints).
    frames = _picture_frames(cfg.iterations, ns.frames) if not splits.info.is_image else ()
    distiller = ZeroShotDistiller(cfg, teacher, splits.info, val_loader, snapshot_at=frames)
    if saved is not None:
        distiller.load_state_dict(saved)
        print(f"resumed from {ckpt} at iteration {distiller.iteration}", file=sys.stderr)
    save_yaml(cfg, out / "config.yaml")

    history: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(total=cfg.iterations, initial=distiller.iteration, disable=ns.no_progress, unit="it")
    flag = distiller.health.flag if distiller.health is not None else None
    try:
        for report in distiller.run(on_iteration=lambda _: bar.update(1)):
            history.append({"iteration": report.iteration, **report.metrics})
            if report.health is not None and flag is None:
                flag = report.health
                bar.write(
                    f"health: {flag.reason}, flagged at iteration {flag.iteration}",
                    file=sys.stderr,
                )
            bar.set_postfix(
                val_acc=f"{report.metrics.get('val_acc', float('nan')):.2f}",
                kl=f"{report.metrics['kl']:.4f}",
            )
            distiller.save_checkpoint(ckpt)
    except DivergenceError as e:
        bar.close()
        _write_json(out / "history.json", {"history": history})
        raise CLIError(f"training diverged: {e}; last good checkpoint: {ckpt}") from None
    bar.close()
    test_loader = make_loader(splits.test, cfg.eval_batch_size, shuffle=False)
    final = {
        "iterations": distiller.iteration,  # metrics.json's name for iterations_done
        **distiller.final_metrics(test_loader),
        "teacher_test_acc": teacher_meta["test_acc"],
        "wall_time_s": time.perf_counter() - start,
        "device": str(distiller.device),
        "torch_threads": torch.get_num_threads(),
        **_health_fields(flag),
    }
    meta = student_meta(cfg, splits.info, final, teacher_path=str(teacher_path))
    save_model(distiller.student, meta, out / "student.pt")
    _write_json(out / "history.json", {"history": history})
    _write_json(out / "metrics.json", final)
    if frames:
        from .toy import draw_regions

        picture = draw_regions(
            teacher,
            cfg.student_arch,
            splits.info,
            distiller.snapshots,
            out / names.REGIONS_PNG,
            out / names.REGIONS_GIF,
        )
        final["picture"] = str(picture["png"])
    print(json.dumps({"out": str(out), **final}))
    return 0


def _health_fields(flag: Any) -> dict[str, Any]:
    """metrics.json's health verdict: ``healthy``, or the rule's status, reason and iteration."""
    if flag is None:
        return {"health": names.HEALTHY}
    return {"health": flag.status, "health_reason": flag.reason, "health_iteration": flag.iteration}


def _picture_frames(iterations: int, n: int) -> list[int]:
    from .toy import frame_iterations

    try:
        return frame_iterations(iterations, n)
    except ValueError as e:
        raise CLIError(f"argument --frames: {e}") from None


def cmd_toy_picture(ns: argparse.Namespace) -> int:
    from .checkpoint import read_model_file
    from .data import dataset_info
    from .paths import default_teacher_path
    from .teacher import load_teacher
    from .toy import draw_regions, run_snapshots

    if ns.run:
        run = Path(ns.run)
        cfg = load_yaml(DistillConfig, run / names.CONFIG_FILE)
        snapshots = sorted(run_snapshots(run / names.CHECKPOINT_FILE), key=lambda s: s["iteration"])
        if ns.frames is not None:  # a subset: the start, the end and ones spread between
            snapshots = [
                snapshots[i] for i in sorted({round(x) for x in _spread(len(snapshots), ns.frames)})
            ]
        arch, dataset, teacher_path = cfg.student_arch, cfg.dataset, cfg.teacher_path
        teacher_arch = cfg.teacher_arch
        png = Path(ns.out) if ns.out else run / names.REGIONS_PNG
        title = f"{run.name}: {cfg.teacher_arch} -> {cfg.student_arch} on {cfg.dataset}"
    else:
        blob = read_model_file(ns.student)
        meta = blob["meta"]
        config = meta.get("config") or {}
        arch, dataset = meta["arch"], meta["dataset"]
        teacher_path = meta.get("teacher_path") or config.get("teacher_path")
        teacher_arch = config.get("teacher_arch")
        done = config.get("iterations")  # zero-shot students; KD+AT ones count epochs
        label = f"t = {done}" if done is not None else f"{meta['arch']} ({Path(ns.student).name})"
        snapshots = [
            {"iteration": done or 0, "label": label, "student": blob["state_dict"], "points": None}
        ]
        student = Path(ns.student)
        png = Path(ns.out) if ns.out else student.with_name(f"{student.stem}_{names.REGIONS_PNG}")
        title = f"{Path(ns.student).name}: teacher and student regions"
    info = dataset_info(dataset)
    if ns.teacher:
        teacher_path = ns.teacher
    elif not teacher_path:
        if not teacher_arch:
            raise CLIError("the student file names no teacher: pass --teacher FILE")
        teacher_path = str(default_teacher_path(dataset, teacher_arch))
    teacher, _ = load_teacher(teacher_path, "cpu", expect_dataset=dataset)
    gif = None if ns.no_gif else png.with_suffix(".gif")
    result = draw_regions(teacher, arch, info, snapshots, png, gif, title=title)
    print(
        json.dumps(
            {
                "png": str(result["png"]),
                "gif": str(result["gif"]) if "gif" in result else None,
                "iterations": result["iterations"],
                "agreement": [round(a, 4) for a in result["agreement"]],
            }
        )
    )
    return 0


def _spread(n: int, k: int) -> list[float]:
    """``k`` positions from 0 to ``n - 1`` (all of them when ``k >= n``)."""
    if k < 2:
        raise CLIError(f"argument --frames: a picture needs at least 2 frames, got {k}")
    if k >= n:
        return list(range(n))
    return [i * (n - 1) / (k - 1) for i in range(k)]


def cmd_kdat(ns: argparse.Namespace) -> int:
    from .checkpoint import save_model, student_meta
    from .data import load_dataset
    from .kdat import train_kdat
    from .teacher import load_teacher

    chosen = load_yaml(KDATConfig, ns.config) if ns.config else KDATConfig()
    try:
        base = to_dict(KDATConfig.recipe(ns.dataset or chosen.dataset))
    except ValueError as e:
        raise CLIError(f"argument --dataset: {e}") from None
    cfg: KDATConfig = _build_config(KDATConfig, ns, base)
    out = Path(ns.out) if ns.out else _default_out("kdat")
    teacher_path = _teacher_for(cfg.dataset, cfg.teacher_arch, cfg.teacher_path, ns.train_teacher)
    augment = cfg.augment and cfg.dataset == "cifar10"
    splits = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download, augment=augment)
    teacher, _ = load_teacher(teacher_path, "cpu", cfg.dataset, cfg.teacher_arch)
    student, metrics = train_kdat(cfg, teacher, splits)
    save_yaml(cfg, out / "config.yaml")
    meta = {**student_meta(cfg, splits.info, metrics), **metrics}
    save_model(student, meta, out / "student.pt")
    _write_json(out / "metrics.json", metrics)
    print(json.dumps({"out": str(out), **metrics}))
    return 0


def cmd_mte(ns: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .data import load_dataset
    from .mte import mean_transition_error
    from .utils import resolve_device

    device = resolve_device(ns.device)
    student, s_meta = load_model(ns.student, device)
    teacher, t_meta = load_model(ns.teacher, device)
    if s_meta["dataset"] != t_meta["dataset"]:
        raise CLIError(
            f"--student was trained on {s_meta['dataset']}, --teacher on {t_meta['dataset']}"
        )
    splits = load_dataset(t_meta["dataset"], ns.data_root, download=ns.download)
    data = splits.val if ns.split == "val" else splits.test
    result = mean_transition_error(
        student,
        teacher,
        data,
        n_test=ns.n_test,
        k=ns.k,
        xi=ns.xi,
        seed=ns.seed,
        batch_size=ns.batch_size,
        device=device,
    )
    summary = result.to_dict()
    if ns.out:
        _write_json(Path(ns.out), summary)
    print(
        json.dumps(
            {
                "mte": result.mte,
                "k": result.k,
                "xi": result.xi,
                "n_test": result.n_test,
                "split": ns.split,
            }
        )
    )
    return 0


def cmd_auth_init(args: argparse.Namespace) -> int:
    from .study.auth import AuthError, init_secrets

    try:
        files = init_secrets(args.dir, args.server_dir)
    except (AuthError, OSError) as e:
        raise CLIError(str(e)) from None
    for key, path in dataclasses.asdict(files).items():
        print(f"{key}: {path}")
    return 0


# ---------------------------------------------------------------- parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zskt", description=ROOT_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    teacher = sub.add_parser("teacher", help="train and manage teachers")
    tsub = teacher.add_subparsers(dest="teacher_command", required=True, parser_class=_Parser)
    train = tsub.add_parser(
        "train",
        help="train a teacher with the paper's recipe (reused when it exists)",
        description="Train a teacher; an existing file at --out is reused unless --force.",
    )
    train.add_argument("--config", help="TeacherConfig YAML file")
    train.add_argument(
        "--out", help="weights file (default: $ZSKT_HOME/teachers/<dataset>_<arch>_seed<seed>.pt)"
    )
    train.add_argument("--force", action="store_true", help="retrain even if the file exists")
    train.add_argument(
        "--address",
        help="train it as a task on this Ray cluster (host:port or 'auto'); the file is written "
        "here, into --out",
    )
    train.add_argument(
        "--cpus",
        type=_positive_float,
        default=None,
        help="with --address: CPUs the task reserves [1]",
    )
    train.add_argument(
        "--gpus",
        type=float,
        default=None,
        help="with --address: GPUs the task reserves [1 when the cluster has a GPU, else 0]",
    )
    _add_config_flags(train, TeacherConfig)
    train.set_defaults(func=cmd_teacher_train)

    distill = sub.add_parser(
        "distill",
        help="one zero-shot distillation run",
        description="Run ZSKT once; writes config.yaml, checkpoint.pt, history.json, "
        "metrics.json and student.pt into --out.",
    )
    distill.add_argument("--config", help="DistillConfig YAML file")
    distill.add_argument("--out", help="output directory (default: runs/distill-<time>)")
    distill.add_argument(
        "--resume",
        action="store_true",
        help="continue from <out>/checkpoint.pt with its own settings (changing one that alters the run is refused)",
    )
    distill.add_argument(
        "--train-teacher", action="store_true", help="train the teacher if its file is missing"
    )
    distill.add_argument("--no-progress", action="store_true", help="no progress bar")
    distill.add_argument(
        "--frames",
        type=_positive_int,
        default=6,
        help="2-D data sets (toy2d): iterations pictured in toy2d.png / toy2d.gif: the start, "
        "the end and geometric steps between [6]",
    )
    _add_config_flags(distill, DistillConfig)
    distill.set_defaults(func=cmd_distill)

    kdat = sub.add_parser(
        "kdat",
        help="few-shot KD+AT baseline with M images per class",
        description="Train a KD+AT student on M images per class (M=-1: full data).",
    )
    kdat.add_argument("--config", help="KDATConfig YAML file")
    kdat.add_argument("--out", help="output directory (default: runs/kdat-<time>)")
    kdat.add_argument(
        "--train-teacher", action="store_true", help="train the teacher if its file is missing"
    )
    _add_config_flags(kdat, KDATConfig)
    kdat.set_defaults(func=cmd_kdat)

    mte = sub.add_parser(
        "mte",
        help="Mean Transition Error of a student against a teacher",
        description="MTE (section 5 of the method doc); K and xi are printed with the value.",
    )
    mte.add_argument("--student", required=True, help="student model file (student.pt)")
    mte.add_argument("--teacher", required=True, help="teacher model file")
    mte.add_argument("--k", type=_positive_int, default=100, help="steps K [100]")
    mte.add_argument("--xi", type=_positive_float, default=1.0, help="step size xi [1.0]")
    mte.add_argument("--n-test", type=_positive_int, default=1000, help="images N_test [1000]")
    mte.add_argument(
        "--split", choices=("test", "val"), default="test", help="images from this split [test]"
    )
    mte.add_argument("--seed", type=int, default=0, help="shuffle seed of the image selection [0]")
    mte.add_argument(
        "--batch-size",
        type=_positive_int,
        default=256,
        help="(image, target) pairs per batch [256]",
    )
    mte.add_argument("--data-root", default="data", help="data directory [data]")
    mte.add_argument("--download", action="store_true", help="download the data set if missing")
    mte.add_argument("--device", default="auto", help="auto, cpu, cuda [auto]")
    mte.add_argument(
        "--out", help="write the full result (with mean transition curves) as JSON here"
    )
    mte.set_defaults(func=cmd_mte)

    toy = sub.add_parser("toy", help="the 2-D toy problem (toy2d): pictures of belief matching")
    toysub = toy.add_subparsers(dest="toy_command", required=True, parser_class=_Parser)
    picture = toysub.add_parser(
        "picture",
        help="draw the teacher's and the student's decision regions with the pseudo points",
        description="Draw a toy2d run (its recorded frames: teacher and student regions with the "
        "generator's pseudo points at each) or a student file (one frame, no points) as a PNG "
        "strip and an animated GIF.",
    )
    which = picture.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="output directory of `zskt distill --dataset toy2d`")
    which.add_argument("--student", help="a student model file (student.pt)")
    picture.add_argument(
        "--teacher", help="teacher model file (default: the one the run or student names)"
    )
    picture.add_argument(
        "--frames", type=int, help="with --run: draw this many of the recorded frames [all]"
    )
    picture.add_argument(
        "--out",
        help="PNG path; the GIF goes beside it (default: toy2d.png in the run directory, "
        "<student>_toy2d.png beside a student file)",
    )
    picture.add_argument("--no-gif", action="store_true", help="write only the PNG")
    picture.set_defaults(func=cmd_toy_picture)

    auth = sub.add_parser(
        "auth", help="secrets for a cluster that others share: Ray's token, MLflow's password"
    )
    asub = auth.add_subparsers(dest="auth_command", required=True, parser_class=_Parser)
    init = asub.add_parser(
        "init",
        help="write a new Ray token, MLflow credentials and the MLflow server's basic-auth config",
        description="Write DIR/ray-token (RAY_AUTH_TOKEN_PATH), DIR/mlflow-credentials "
        "(ZSKT_MLFLOW_CREDENTIALS, with MLFLOW_TRACKING_AUTH=zskt) and SERVER_DIR/mlflow-auth.ini "
        "(MLFLOW_AUTH_CONFIG_PATH of `mlflow server --app-name basic-auth`), each readable by "
        "the user alone. Prints the paths, never a secret; existing files are never overwritten.",
    )
    init.add_argument("dir", metavar="DIR", help="directory every node reads (shared on a cluster)")
    init.add_argument(
        "--server-dir",
        help="directory for the MLflow server's config and users database (default: DIR)",
    )
    init.set_defaults(func=cmd_auth_init)

    add_study_commands(sub)
    add_report_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = ns.func
    try:
        return func(ns)
    except CLIError as e:
        print(f"zskt: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"zskt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zskt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
