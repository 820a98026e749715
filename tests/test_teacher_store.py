"""The teacher store trains a missing teacher once, however many processes ask for it at once.

Two processes (two studies, or a study and ``zskt teacher train``) ask ``ensure_teacher`` for the
same missing file; the training is a real 1-epoch digits teacher, made slow by a pause that lasts
until both processes have started, so that the second one meets the first one's lock.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zskt_ray.config import TeacherConfig
from zskt_ray.teacher import ensure_teacher, read_teacher_meta

CHILD = """
import json, sys, time
from pathlib import Path
from zskt_ray.config import TeacherConfig
from zskt_ray.teacher import ensure_teacher, train_teacher

path, work, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def slow_train(cfg, out, log):
    with open(work / "trainings", "a") as f:
        f.write(me + "\\n")
    deadline = time.time() + 120
    while len(list(work.glob("started-*"))) < 2 and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)  # the other process is now inside ensure_teacher, waiting on the lock
    return train_teacher(cfg, out, log=log, trained_on={"by": me})

cfg = TeacherConfig.recipe("digits", "wrn-10-1", epochs=1, milestones=(1,), batch_size=128,
                           device="cpu")
lines = []
(work / f"started-{me}").touch()
ensure_teacher(cfg, path, log=lines.append, train=slow_train)
print(json.dumps(lines))
"""


@pytest.mark.timeout(300)
def test_two_processes_train_one_missing_teacher_once(tmp_path):
    path, work = tmp_path / "teachers" / "digits_wrn-10-1_seed0.pt", tmp_path / "work"
    work.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(work), me],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in ("a", "b")
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err[-3000:]
    trainer = (work / "trainings").read_text().split()
    assert trainer in (["a"], ["b"])  # exactly one training
    logs = dict(zip(("a", "b"), (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)))
    waiter = logs["b" if trainer == ["a"] else "a"]
    assert any("another process is training it; waiting" in line for line in waiter), waiter
    assert any(line.startswith("reusing teacher") for line in waiter), waiter
    assert read_teacher_meta(path)["trained_on"] == {"by": trainer[0]}
    assert not list(path.parent.glob("*.tmp*"))


def test_an_existing_teacher_is_reused_without_training(tmp_path):
    cfg = TeacherConfig.recipe(
        "digits", "wrn-10-1", epochs=1, milestones=(1,), batch_size=128, device="cpu"
    )
    path = ensure_teacher(cfg, tmp_path / "t.pt", log=None)
    assert "trained_on" not in read_teacher_meta(path)  # trained here, nothing to say

    def refuse(*args):
        raise AssertionError("trained again")

    assert ensure_teacher(cfg, path, log=None, train=refuse) == path
