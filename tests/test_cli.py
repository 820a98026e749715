"""Every entry point: --help, one-line errors naming the argument, a short distill smoke run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from zskt_ray.checkpoint import save_model
from zskt_ray.cli import main
from zskt_ray.models import build_model


@pytest.mark.parametrize("argv", [[], ["teacher", "train"], ["distill"], ["kdat"], ["mte"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: zskt" in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "zskt_ray.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "distill" in out.stdout


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["distill", "--n-s", "ten"], "--n-s"),
        (["distill", "--n-s", "0"], "n_s must be > 0"),
        (["distill", "--kl-reduction", "avg"], "kl_reduction"),
        (["mte", "--student", "a.pt", "--teacher", "b.pt", "--k", "0"], "--k"),
        (["teacher", "train", "--dataset", "mnist"], "--dataset"),
    ],
)
def test_bad_arguments_give_one_line_naming_them(argv, needle, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert needle in err and err.startswith("zskt")


def test_missing_teacher_is_named(tmp_path, capsys):
    code = main(
        [
            "distill",
            "--dataset",
            "digits",
            "--teacher-arch",
            "wrn-10-1",
            "--teacher-path",
            str(tmp_path / "none.pt"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "none.pt" in err and "--train-teacher" in err


def _teacher(tmp_path):
    torch.manual_seed(0)
    net = build_model("wrn-10-1", 10, 1)
    meta = {
        "arch": "wrn-10-1",
        "dataset": "digits",
        "num_classes": 10,
        "in_channels": 1,
        "test_acc": 10.0,
        "val_acc": 10.0,
    }
    return save_model(net, meta, tmp_path / "teacher.pt")


def test_distill_smoke_then_resume_then_mte(tmp_path, capsys):
    teacher = _teacher(tmp_path)
    out = tmp_path / "run"
    args = [
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
        "3",
        "--eval-every",
        "2",
        "--batch-size",
        "8",
        "--n-s",
        "2",
        "--z-dim",
        "8",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 3 and 0 <= metrics["test_acc"] <= 100
    history = json.loads((out / "history.json").read_text())["history"]
    assert [h["iteration"] for h in history] == [2, 3]
    assert {"loss_g", "loss_s", "kl", "at", "val_acc", "teacher_conf"} <= set(history[0])
    assert (out / "config.yaml").exists() and (out / "student.pt").exists()
    capsys.readouterr()

    # re-running into the same directory without --resume refuses (nothing is overwritten)
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    # with --resume a finished run has nothing left to do and reports the same iteration count
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 3
    capsys.readouterr()

    assert (
        main(
            [
                "mte",
                "--student",
                str(out / "student.pt"),
                "--teacher",
                str(teacher),
                "--k",
                "3",
                "--n-test",
                "4",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "mte.json"),
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["k"] == 3 and printed["xi"] == 1.0 and 0 <= printed["mte"] <= 1
    assert len(json.loads((tmp_path / "mte.json").read_text())["mean_curve_a"]) == 3
