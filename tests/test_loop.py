"""The zero-shot loop: structure of an iteration, reports, divergence, exact resume."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from zskt_ray.config import DistillConfig
from zskt_ray.data import dataset_info, load_dataset, make_loader
from zskt_ray.loop import DivergenceError, ZeroShotDistiller
from zskt_ray.models import build_model

INFO = dataset_info("digits")


def tiny_cfg(**kw) -> DistillConfig:
    base = dict(
        dataset="digits",
        teacher_arch="wrn-10-1",
        student_arch="wrn-10-1",
        iterations=4,
        n_g=1,
        n_s=3,
        batch_size=8,
        z_dim=8,
        eval_every=2,
        device="cpu",
        seed=0,
    )
    base.update(kw)
    return DistillConfig(**base)


def tiny_teacher() -> torch.nn.Module:
    torch.manual_seed(123)
    return build_model("wrn-10-1", INFO.num_classes, INFO.in_channels)


def _count_calls(module: torch.nn.Module, record: list) -> None:
    module.register_forward_hook(lambda m, i, o: record.append(m.training))


def test_iteration_structure_matches_the_method():
    cfg = tiny_cfg(n_g=2, n_s=5)
    d = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    gen_calls, teacher_calls, student_modes = [], [], []
    _count_calls(d.generator, gen_calls)
    _count_calls(d.teacher, teacher_calls)
    _count_calls(d.student, student_modes)
    bn = d.student.block1[0].bn1
    before = bn.running_mean.clone()
    terms = d.train_iteration()
    # n_g generator forwards with grad + ONE forward for the student phase (not n_s)
    assert len(gen_calls) == cfg.n_g + 1
    # teacher: once per generator step, once for the student phase targets
    assert len(teacher_calls) == cfg.n_g + 1
    assert all(mode is False for mode in teacher_calls)
    # student: n_g generator-step forwards plus n_s student steps, all in train mode
    assert len(student_modes) == cfg.n_g + cfg.n_s and all(student_modes)
    assert not torch.equal(before, bn.running_mean)  # BN statistics come from pseudo data
    assert set(terms) >= {
        "loss_g",
        "loss_s",
        "kl",
        "at",
        "teacher_conf",
        "student_conf",
        "pseudo_agreement",
    }
    assert terms["loss_g"] <= 0.0  # -KL
    assert terms["loss_s"] == pytest.approx(terms["kl"] + cfg.beta * terms["at"], rel=1e-4)
    # no wasted gradients: the student phase leaves no generator gradient, the teacher never has one
    assert all(p.grad is None for p in d.teacher.parameters())
    assert all(p.requires_grad for p in d.student.parameters())


def test_generator_step_moves_only_the_generator():
    d = ZeroShotDistiller(tiny_cfg(), tiny_teacher(), INFO)
    s_before = {
        k: v.clone()
        for k, v in d.student.state_dict().items()
        if "running" not in k and "num_batches" not in k
    }
    g_before = [p.clone() for p in d.generator.parameters()]
    d.generator_step(d.sample_z())
    s_after = d.student.state_dict()
    assert all(torch.equal(v, s_after[k]) for k, v in s_before.items())
    assert any(not torch.equal(a, b) for a, b in zip(g_before, d.generator.parameters()))
    assert all(p.grad is None for p in d.student.parameters())


def test_student_phase_leaves_generator_untouched():
    d = ZeroShotDistiller(tiny_cfg(), tiny_teacher(), INFO)
    g_before = [p.clone() for p in d.generator.parameters()]
    d.student_phase(d.sample_z())
    assert all(torch.equal(a, b) for a, b in zip(g_before, d.generator.parameters()))
    assert all(p.grad is None for p in d.generator.parameters())


def test_run_reports_at_eval_interval_and_end():
    splits = load_dataset("digits")
    val = make_loader(splits.val, 200, shuffle=False)
    d = ZeroShotDistiller(tiny_cfg(iterations=5, eval_every=2), tiny_teacher(), INFO, val)
    reports = list(d.run())
    assert [r.iteration for r in reports] == [2, 4, 5]
    assert [r.done for r in reports] == [False, False, True]
    assert 0.0 <= reports[-1].metrics["val_acc"] <= 100.0
    assert reports[-1].metrics["lr_s"] == pytest.approx(0.0, abs=1e-12)  # cosine to 0 at N
    assert reports[0].metrics["lr_s"] > 0


def test_divergence_names_the_term_and_iteration(monkeypatch):
    d = ZeroShotDistiller(tiny_cfg(), tiny_teacher(), INFO)
    d.train_iteration()
    monkeypatch.setattr(d, "_kl", lambda s, t: s.sum() * float("nan"))
    with pytest.raises(DivergenceError, match=r"(loss_g|loss_s|kl) became nan at iteration 2"):
        d.train_iteration()


def _weights(d: ZeroShotDistiller) -> dict[str, torch.Tensor]:
    out = {f"s.{k}": v for k, v in d.student.state_dict().items()}
    out.update({f"g.{k}": v for k, v in d.generator.state_dict().items()})
    return out


def test_interrupted_and_resumed_run_ends_with_identical_weights(tmp_path):
    cfg = tiny_cfg(iterations=6, eval_every=3)
    straight = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    list(straight.run())

    first = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    list(first.run(until=3))
    first.save_checkpoint(tmp_path / "ckpt.pt")
    first.train_iteration()  # the interrupted process goes on a bit; its work is lost
    del first

    torch.manual_seed(999)  # a different process state; the checkpoint must restore it
    resumed = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    assert resumed.iteration == 3
    list(resumed.run())
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][
        :3
    ]
    assert (
        resumed.opt_s.state_dict()["state"][0]["step"]
        == straight.opt_s.state_dict()["state"][0]["step"]
    )


def test_checkpoint_refuses_a_different_run_shape(tmp_path):
    d = ZeroShotDistiller(tiny_cfg(), tiny_teacher(), INFO)
    d.save_checkpoint(tmp_path / "c.pt")
    other = ZeroShotDistiller(dataclasses.replace(tiny_cfg(), z_dim=9), tiny_teacher(), INFO)
    with pytest.raises(ValueError, match="z_dim"):
        other.load_checkpoint(tmp_path / "c.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        other.load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_loads_with_weights_only(tmp_path):
    d = ZeroShotDistiller(tiny_cfg(), tiny_teacher(), INFO)
    d.train_iteration()
    path = d.save_checkpoint(tmp_path / "c.pt")
    state = torch.load(path, weights_only=True)
    assert state["iteration"] == 1 and state["config"]["z_dim"] == 8


def test_cpu_layout_is_channels_last_and_changes_only_rounding():
    """NHWC is a speed choice: an NCHW copy computes the same iteration up to float rounding.

    Only the first iteration is compared tightly: as with a change of thread count, rounding
    differences then grow through Adam's normalised steps (the run is chaotic, not biased).
    """
    cfg = tiny_cfg(iterations=3)
    fast = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    for net in (fast.teacher, fast.student, fast.generator):
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    for net in (plain.teacher, plain.student, plain.generator):
        net.to(memory_format=torch.contiguous_format)
    a, b = fast.train_iteration(), plain.train_iteration()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == pytest.approx(b[name], rel=1e-4, abs=1e-7), name
