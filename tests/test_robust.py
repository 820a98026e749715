"""Bad input refused before anything starts, one study run at a time, resume that resumes.

Fast tests: the study lock, the `--inject-nan` and `zskt distill --resume` refusals, one-line
file errors, a start-up failure that leaves no MLflow run RUNNING, metric steps never logged twice,
checkpoint scratch folders removed. No Ray cluster is started here (see test_study_resume.py).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from zskt_ray.checkpoint import save_model
from zskt_ray.cli import main
from zskt_ray.models import build_model


def _teacher(path: Path) -> Path:
    torch.manual_seed(0)
    meta = {
        "arch": "wrn-10-1",
        "dataset": "digits",
        "num_classes": 10,
        "in_channels": 1,
        "test_acc": 10.0,
        "val_acc": 10.0,
    }
    return save_model(build_model("wrn-10-1", 10, 1), meta, path)


def study_dict(home: Path, name: str) -> dict:
    return {
        "name": name,
        "dataset": "digits",
        "teacher": {"arch": "wrn-10-1", "path": str(_teacher(home / "teacher.pt"))},
        "student": {"arch": "wrn-10-1"},
        "loop": {"iterations": 4, "batch_size": 16, "eval_every": 2, "eval_batch_size": 400},
        "search": {
            "space": {
                "n_s": {"type": "int", "low": 1, "high": 3},
                "lr_s": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "beta": [0.0, 250.0],
            },
            "num_trials": 2,
            "scheduler": {"type": "none"},
        },
        "resources": {"cpus_per_trial": 1, "max_concurrent": 1},
        "final": {"top_k": 0},
    }


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "\x1b[" not in err and "weights_only" not in err, err
    return err


# ------------------------------------------------------------------ one run of a study at a time


def test_second_run_of_a_locked_study_exits_2_naming_the_holder(tmp_path, capsys):
    """A process holding the study's lock (as a running `zskt study run` does): a second run is
    refused at once, before anything is created; another study's lock is free."""
    from zskt_ray.study.lock import study_lock

    home = Path(os.environ["ZSKT_HOME"])
    study_file = _write(tmp_path, study_dict(tmp_path, "locked"))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys, time
                from zskt_ray.study.lock import study_lock
                with study_lock("locked"):
                    print("held", flush=True)
                    time.sleep(120)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        assert main(["study", "run", str(study_file)]) == 2
        assert time.perf_counter() - t0 < 30
        err = _one_error_line(capsys)
        assert "already running" in err and f"process {holder.pid} " in err, err
        assert "locked.lock" in err
        assert main(["study", "resume", str(study_file)]) == 2  # nothing to resume: refused too
        capsys.readouterr()
        # nothing was created by the refused runs
        assert not (home / "mlflow.db").exists() and not (home / "studies").exists()
        with study_lock("another-study"):  # other studies are not blocked
            pass
    finally:
        holder.kill()
        holder.wait()
    with study_lock("locked"):  # the lock died with its process
        pass


# ------------------------------------------------------------------ start-up failures


def test_startup_failure_ends_the_study_run_failed(tmp_path, monkeypatch):
    """An error after the stores exist (here: Ray does not start) leaves no MLflow run RUNNING."""
    from mlflow.tracking import MlflowClient

    from zskt_ray.study import runner
    from zskt_ray.study.spec import parse_spec

    spec = parse_spec(study_dict(tmp_path, "startfail"))

    def no_ray(*args, **kwargs):
        raise ConnectionError("could not reach the Ray cluster at 10.0.0.1:6379")

    monkeypatch.setattr(runner, "_ensure_ray", no_ray)
    with pytest.raises(ConnectionError):
        runner.run_study(spec, log=lambda s: None)
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    assert "could not reach the Ray cluster" in run.data.tags["zskt.status_reason"]
    from zskt_ray.study.lock import study_lock

    with study_lock("startfail"):  # released on the error path
        pass


def test_changed_study_is_refused_before_mlflow_is_touched(tmp_path):
    from zskt_ray.study import space
    from zskt_ray.study.runner import run_study
    from zskt_ray.study.spec import StudyError, parse_spec

    data = study_dict(tmp_path, "changed")
    space.open_study(parse_spec(data))  # the study as first run
    data["search"]["space"]["beta"] = [0.0, 100.0]
    with pytest.raises(StudyError, match="different study file"):
        run_study(parse_spec(data), log=lambda s: None)
    assert not (Path(os.environ["ZSKT_HOME"]) / "mlflow.db").exists()


# ------------------------------------------------------------------ --inject-nan


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("beta=100@2", "beta=100 is not in the search space (choices: 0.0, 250.0)"),
        ("n_s=7@2", "n_s=7 is not in the search space (int from 1 to 3)"),
        ("n_s=1.5@2", "n_s=1.5 is not in the search space"),
        ("lr_s=0.5@2", "lr_s=0.5 is not in the search space (float from 0.0001 to 0.01)"),
        ("lr_s=abc@2", "lr_s='abc' is not in the search space"),
        ("n_g=3@2", "n_g is not searched and every trial has n_g=1, so n_g=3 never occurs"),
    ],
)
def test_inject_nan_outside_the_search_space_is_refused(tmp_path, capsys, text, message):
    study_file = _write(tmp_path, study_dict(tmp_path, "nanspace"))
    for command in ("validate", "run"):
        assert main(["study", command, str(study_file), "--inject-nan", text]) == 2
        err = _one_error_line(capsys)
        assert message in err, err
    assert not (Path(os.environ["ZSKT_HOME"]) / "mlflow.db").exists()


def test_inject_nan_inside_the_search_space_is_accepted(tmp_path):
    from zskt_ray.study.cli import check_fault, parse_fault
    from zskt_ray.study.spec import parse_spec

    spec = parse_spec(study_dict(tmp_path, "nanok"))
    for text in ("beta=0@2", "beta=250@1", "n_s=3@2", "lr_s=1e-3@2", "n_g=1@2"):
        check_fault(spec, parse_fault(text))


# ------------------------------------------------------------------ zskt distill --resume


def _distill_args(teacher: Path, out: Path, *extra: str) -> list[str]:
    return [
        "distill",
        "--dataset",
        "digits",
        "--teacher-arch",
        "wrn-10-1",
        "--teacher-path",
        str(teacher),
        "--student-arch",
        "wrn-10-1",
        "--iterations",
        "4",
        "--eval-every",
        "2",
        "--batch-size",
        "8",
        "--z-dim",
        "8",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_distill_resume_refuses_changed_settings_and_a_missing_checkpoint(tmp_path, capsys):
    teacher = _teacher(tmp_path / "teacher.pt")
    out = tmp_path / "run"
    assert main([*_distill_args(teacher, out), "--resume"]) == 2
    err = _one_error_line(capsys)
    assert "--resume: no checkpoint at" in err and "checkpoint.pt" in err
    assert not out.exists()

    assert main(_distill_args(teacher, out, "--iterations", "2")) == 0
    capsys.readouterr()
    # the same command with changed loop settings: every changed field in one line
    args = _distill_args(teacher, out, "--resume", "--lr-s", "0.01", "--n-s", "3")
    assert main(args) == 2
    err = _one_error_line(capsys)
    assert "iterations: 2 -> 4" in err and "lr_s: 0.002 -> 0.01" in err and "n_s: 10 -> 3" in err
    # settings that do not alter the run may change; omitted ones come from the checkpoint
    args = ["distill", "--out", str(out), "--resume", "--eval-batch-size", "64", "--no-progress"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["iterations"] == 2


@pytest.mark.parametrize("kind", ["truncated", "text", "pickle", "model"])
def test_unreadable_checkpoint_is_one_line(tmp_path, capsys, kind):
    teacher = _teacher(tmp_path / "teacher.pt")
    out = tmp_path / "run"
    out.mkdir()
    ckpt = out / "checkpoint.pt"
    if kind == "truncated":
        torch.save({"format": 1, "config": {}, "student": {"w": torch.zeros(5000)}}, ckpt)
        blob = ckpt.read_bytes()
        ckpt.write_bytes(blob[: len(blob) // 2])
        reason = "(the file is truncated or corrupt)"
    elif kind == "text":
        ckpt.write_text("iteration: 3\n")
        reason = "(not a PyTorch file)"
    elif kind == "pickle":
        torch.save({"format": 1, "x": argparse_namespace()}, ckpt)
        reason = "(it holds Python objects besides weights"
    else:
        ckpt.write_bytes(teacher.read_bytes())
        reason = "(it is a model file)"
    capsys.readouterr()
    assert main([*_distill_args(teacher, out), "--resume"]) == 2
    err = _one_error_line(capsys)
    assert f"{ckpt}: not a zskt-ray checkpoint file {reason}" in err, err


def argparse_namespace():
    import argparse

    return argparse.Namespace(a=1)


@pytest.mark.parametrize("kind", ["text", "pickle", "torch-object", "truncated", "folder"])
def test_unreadable_model_file_is_one_line(tmp_path, capsys, kind):
    teacher = _teacher(tmp_path / "teacher.pt")
    bad = tmp_path / "student.pt"
    if kind == "text":
        bad.write_text("not a model\n")
    elif kind == "pickle":
        bad.write_bytes(pickle.dumps(argparse_namespace()))
    elif kind == "torch-object":
        torch.save({"format": 1, "x": argparse_namespace()}, bad)
    elif kind == "truncated":
        bad.write_bytes(teacher.read_bytes()[:2000])
    else:
        bad.mkdir()
    assert main(["mte", "--student", str(bad), "--teacher", str(teacher), "--device", "cpu"]) == 2
    err = _one_error_line(capsys)
    assert f"{bad}: not a zskt-ray model file (" in err, err


def test_model_whose_weights_do_not_match_its_metadata(tmp_path, capsys):
    net = build_model("wrn-10-1", 10, 1)
    meta = {"arch": "wrn-16-1", "dataset": "digits", "num_classes": 10, "in_channels": 1}
    bad = save_model(net, meta, tmp_path / "bad.pt")
    teacher = _teacher(tmp_path / "teacher.pt")
    assert main(["mte", "--student", str(bad), "--teacher", str(teacher), "--device", "cpu"]) == 2
    err = _one_error_line(capsys)
    assert "weights do not match its metadata (wrn-16-1" in err


# ------------------------------------------------------------------ MLflow steps, scratch folders


def test_metric_steps_are_never_logged_twice_and_ended_runs_are_read_back(tmp_path):
    from mlflow.tracking import MlflowClient

    from zskt_ray import names
    from zskt_ray.study import tracking

    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    info = tracking.setup_study(uri, "steps", "steps", {"name": "steps"})
    run = tracking.TrialRun.open(info, "search", "t1", {"iterations": 8}, "c1", "cpu")
    run.log_metrics({"loss_s": 1.0, "val_acc": 20.0}, step=2)
    run.log_metrics({"loss_s": 0.9, "val_acc": 30.0}, step=4)
    # the trial resumes from its step-2 checkpoint and computes step 4 again
    again = tracking.TrialRun.open(info, "search", "t1", {"iterations": 8}, "c1", "cpu")
    assert again.run_id == run.run_id
    again.log_metrics({"loss_s": 0.95, "val_acc": 31.0}, step=4)
    again.log_metrics({"loss_s": 0.8, "val_acc": 40.0}, step=6)
    client = MlflowClient(uri)
    for key, values in (("loss_s", [1.0, 0.9, 0.8]), ("val_acc", [20.0, 30.0, 40.0])):
        hist = sorted(client.get_metric_history(run.run_id, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in hist] == list(zip([2, 4, 6], values))
    assert tracking.ended_results(info, "search") == {}  # still running: not ended
    tracking.finish_run(uri, run.run_id, names.PRUNED, "stopped by the scheduler at iteration 6")
    (ended,) = tracking.ended_results(info, "search").values()
    assert ended[names.ITERATION] == 6 and ended[names.BUDGET] == 8
    assert ended[names.STATUS] == names.PRUNED and ended["val_acc"] == 40.0


def test_checkpoint_scratch_folder_is_removed_when_the_report_raises(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from zskt_ray.study import trainable

    ctx = SimpleNamespace(scratch=lambda: str(tmp_path))  # the study's scratch folder
    ckpt = trainable._checkpoint(ctx, None, "run-id", final={"val_acc": 1.0})
    assert Path(ckpt.path).parent == tmp_path
    assert Path(ckpt.path, trainable.RUN_ID_FILE).is_file()

    def stopped(*args, **kwargs):
        raise SystemExit("trial stopped by the scheduler")

    monkeypatch.setattr(trainable.tune, "report", stopped)
    with pytest.raises(SystemExit):
        trainable._report({"val_acc": 1.0}, ckpt)
    assert not Path(ckpt.path).exists()
