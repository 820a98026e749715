"""Teachers (train, store, reuse, safe loading) and the few-shot KD+AT baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zskt_ray.checkpoint import load_model, save_model
from zskt_ray.config import KDATConfig, TeacherConfig
from zskt_ray.data import load_dataset
from zskt_ray.kdat import few_shot_indices, scaled_schedule, train_kdat
from zskt_ray.models import build_model
from zskt_ray.teacher import default_teacher_path, ensure_teacher, load_teacher, read_teacher_meta


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_teacher_is_trained_recorded_and_reused(tmp_path, digits):
    cfg = TeacherConfig.recipe("digits", "wrn-10-1", epochs=1, milestones=(1,), device="cpu")
    path = ensure_teacher(cfg, tmp_path / "t.pt", log=None)
    meta = read_teacher_meta(path)
    assert meta["arch"] == "wrn-10-1" and meta["dataset"] == "digits"
    assert meta["mean"] == pytest.approx(list(digits.info.mean)) and meta["in_channels"] == 1
    assert 0 <= meta["test_acc"] <= 100 and 0 <= meta["val_acc"] <= 100
    assert meta["config"]["epochs"] == 1
    mtime = path.stat().st_mtime_ns
    assert ensure_teacher(cfg, path, log=None) == path
    assert path.stat().st_mtime_ns == mtime  # reused, not retrained
    model, _ = load_teacher(path, expect_dataset="digits", expect_arch="wrn-10-1")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="dataset"):
        load_teacher(path, expect_dataset="cifar10")
    with pytest.raises(ValueError, match="holds wrn-10-1"):
        ensure_teacher(TeacherConfig.recipe("digits", "wrn-16-1"), path, log=None)


def test_default_store_is_under_zskt_home(monkeypatch, tmp_path):
    monkeypatch.setenv("ZSKT_HOME", str(tmp_path))
    assert (
        default_teacher_path("svhn", "wrn-40-2") == tmp_path / "teachers" / "svhn_wrn-40-2_seed0.pt"
    )


def test_teacher_of_another_input_size_is_refused(tmp_path):
    """Fully convolutional nets would load a 16x16 digits teacher and silently score badly."""
    path = save_model(
        build_model("wrn-10-1", 10, 1),
        {
            "arch": "wrn-10-1",
            "dataset": "digits",
            "num_classes": 10,
            "in_channels": 1,
            "image_size": 16,
        },
        tmp_path / "old.pt",
    )
    for call in (lambda: load_teacher(path), lambda: read_teacher_meta(path)):
        with pytest.raises(ValueError, match="16x16 digits images, but this version feeds 8x8"):
            call()
    cfg = TeacherConfig.recipe("digits", "wrn-10-1")
    with pytest.raises(ValueError, match="old.pt"):
        ensure_teacher(cfg, path, log=None)


def test_missing_teacher_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_teacher(tmp_path / "nope.pt")


def test_model_file_round_trip_and_refuses_pickled_code(tmp_path):
    torch.manual_seed(0)
    net = build_model("wrn-10-1", 10, 1)
    path = save_model(
        net,
        {"arch": "wrn-10-1", "dataset": "digits", "num_classes": 10, "in_channels": 1},
        tmp_path / "m.pt",
    )
    again, meta = load_model(path)
    assert all(
        torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values())
    )
    # a file holding an arbitrary object (code on load) is refused by weights_only loading
    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "meta": {}, "state_dict": {}, "x": _Evil()}, evil)
    with pytest.raises(ValueError, match="not a zskt-ray model file") as e:
        load_model(evil)
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_few_shot_indices_pick_m_per_class_by_seed():
    labels = np.repeat(np.arange(10), 20)
    a = few_shot_indices(labels, 5, 10, seed=0)
    b = few_shot_indices(labels, 5, 10, seed=1)
    assert len(a) == 50 and np.all(np.bincount(labels[a], minlength=10) == 5)
    assert not np.array_equal(a, b)
    assert np.array_equal(a, few_shot_indices(labels, 5, 10, seed=0))
    assert len(few_shot_indices(labels, -1, 10, seed=0)) == 200
    with pytest.raises(ValueError, match="fewer than M=25"):
        few_shot_indices(labels, 25, 10, seed=0)


def test_schedule_is_scaled_by_n_over_cm():
    cfg = KDATConfig(m_per_class=200, base_epochs=200, base_milestones=(60, 120, 160))
    epochs, milestones = scaled_schedule(cfg, n_train=50_000, num_classes=10)
    assert epochs == 5000 and milestones == (1500, 3000, 4000)  # scale 25
    full = KDATConfig(m_per_class=-1)
    assert scaled_schedule(full, 50_000, 10) == (200, (60, 120, 160))


def test_kdat_trains_a_student_on_m_images(digits):
    torch.manual_seed(0)
    teacher = build_model("wrn-10-1", 10, 1).eval()
    cfg = KDATConfig(
        dataset="digits",
        teacher_arch="wrn-10-1",
        student_arch="wrn-10-1",
        m_per_class=2,
        base_epochs=1,
        base_milestones=(1,),
        max_epochs=3,
        device="cpu",
        batch_size=32,
    )
    student, metrics = train_kdat(cfg, teacher, digits, log=None)
    assert metrics["n_images"] == 20 and metrics["epochs"] == 3
    assert 0 <= metrics["test_acc"] <= 100
