"""Run health, audits and cost: the trajectory is untouched, each failure is provoked for real.

Failures are provoked on toy2d with a trained teacher (about a second) and, for images, on digits
with a tiny WRN: a generator that does not train (n_g 0) or barely moves (a tiny learning rate) is
flagged stalled, a generator forced to a constant output collapsed, a healthy run nothing; the
teacher passed as the student, a live teacher and a generator without gradient are refused before
the run trains; a guarded test loader refuses to be read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from zskt_ray import names
from zskt_ray.audit import (
    AuditError,
    GuardedLoader,
    NetworkAuditError,
    SplitReadError,
    ZeroGradientError,
    check_networks,
)
from zskt_ray.cli import main
from zskt_ray.config import DistillConfig, TeacherConfig
from zskt_ray.cost import device_kind, device_seconds, peak_memory_mib, reset_peak_memory
from zskt_ray.data import dataset_info, load_dataset, make_loader
from zskt_ray.health import HealthMonitor, HealthRule, class_coverage, diversity
from zskt_ray.loop import ZeroShotDistiller
from zskt_ray.models import build_model

# n_g 0: the generator's optimiser never steps, so torch warns that its scheduler stepped first.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")

TOY = dataset_info("toy2d")
DIGITS = dataset_info("digits")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Bit-for-bit comparisons need a fixed thread count; one also keeps the tests light."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy_splits():
    return load_dataset("toy2d")


@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory, toy_splits):
    """A toy2d teacher trained with a short version of the recipe (about a second)."""
    from zskt_ray.teacher import train_teacher

    path = tmp_path_factory.mktemp("teacher") / "toy2d_mlp-3x64.pt"
    cfg = TeacherConfig.recipe("toy2d", "mlp-3x64", epochs=8, milestones=(6,), device="cpu")
    train_teacher(cfg, path, splits=toy_splits, log=None)
    return path


def toy_cfg(**over) -> DistillConfig:
    """The toy study's loop settings, shortened: 30 iterations, a report every 5."""
    values = dict(
        dataset="toy2d",
        teacher_arch="mlp-3x64",
        student_arch="mlp-2x16",
        beta=0.0,
        iterations=30,
        batch_size=64,
        z_dim=8,
        n_s=3,
        eval_every=5,
        eval_batch_size=1000,
        device="cpu",
    )
    values.update(over)
    return DistillConfig(**values)


def digits_cfg(**over) -> DistillConfig:
    values = dict(
        dataset="digits",
        teacher_arch="wrn-10-1",
        student_arch="wrn-10-1",
        iterations=6,
        n_g=1,
        n_s=2,
        batch_size=16,
        z_dim=8,
        eval_every=2,
        device="cpu",
    )
    values.update(over)
    return DistillConfig(**values)


def toy_distiller(path, cfg: DistillConfig, splits=None, **kw) -> ZeroShotDistiller:
    from zskt_ray.teacher import load_teacher

    teacher, _ = load_teacher(path, expect_dataset="toy2d", expect_arch="mlp-3x64")
    val = make_loader(splits.val, 1000, shuffle=False) if splits is not None else None
    return ZeroShotDistiller(cfg, teacher, TOY, val, **kw)


def digits_teacher() -> nn.Module:
    torch.manual_seed(123)
    return build_model("wrn-10-1", DIGITS.num_classes, DIGITS.in_channels)


def _state(d: ZeroShotDistiller) -> dict[str, torch.Tensor]:
    """Every tensor of the run's trained state: weights, BN buffers, optimiser moments, RNG."""
    out = {f"s.{k}": v for k, v in d.student.state_dict().items()}
    out.update({f"g.{k}": v for k, v in d.generator.state_dict().items()})
    for name, opt in (("opt_s", d.opt_s), ("opt_g", d.opt_g)):
        for i, st in opt.state_dict()["state"].items():
            out.update({f"{name}.{i}.{k}": v for k, v in st.items()})
    out["noise"] = d.noise.get_state()
    out["torch_rng"] = torch.get_rng_state()
    return out


def _plain_run(d: ZeroShotDistiller) -> None:
    """The loop's iterations alone: no run(), no evaluation, no health, no hooks."""
    d.cost.close()
    for _ in range(d.cfg.iterations):
        d.train_iteration()


def _assert_same_state(a: ZeroShotDistiller, b: ZeroShotDistiller) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, differ[:5]


def _flags(reports) -> list[float]:
    return [r.metrics[names.HEALTH_FLAG] for r in reports]


# ---------------------------------------------------------------- the trajectory is untouched


@pytest.mark.parametrize("dataset", ["digits", "toy2d"])
def test_health_and_cost_leave_the_run_bit_for_bit_unchanged(dataset, toy_teacher):
    """A run with health metrics, audits and cost counters ends in exactly the state of the bare
    iterations: weights, BN buffers (the generator's included), Adam moments, noise and global RNG.

    No validation loader: iterating a DataLoader draws a seed from torch's global RNG, which the
    loop's evaluation did before health metrics existed (the training never reads that RNG).
    """
    if dataset == "digits":
        cfg = digits_cfg()
        plain = ZeroShotDistiller(cfg, digits_teacher(), DIGITS, health=None)
        watched = ZeroShotDistiller(cfg, digits_teacher(), DIGITS)
    else:
        cfg = toy_cfg(iterations=12, eval_every=3)
        plain = toy_distiller(toy_teacher, cfg, health=None)
        watched = toy_distiller(toy_teacher, cfg)
    torch.manual_seed(7)
    _plain_run(plain)
    plain_state = _state(plain)
    torch.manual_seed(7)
    reports = list(watched.run())
    assert set(names.HEALTH_METRICS) <= set(reports[-1].metrics)
    assert set(names.COST_METRICS) <= set(reports[-1].metrics)
    watched_state = _state(watched)
    differ = [k for k in plain_state if not torch.equal(plain_state[k], watched_state[k])]
    assert not differ, differ[:5]


def test_health_batch_leaves_the_generator_buffers_and_rngs_alone():
    d = ZeroShotDistiller(digits_cfg(), digits_teacher(), DIGITS)
    before = {k: v.clone() for k, v in _state(d).items()}  # state_dict() holds live buffers
    d.health.start()
    d.health.measure(0, {"loss_g": -0.1})
    after = _state(d)
    assert all(torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------- measurements


def test_diversity_and_class_coverage_definitions():
    torch.manual_seed(0)
    same = torch.randn(1, 64).repeat(32, 1)
    assert diversity(same) == 0.0
    spread = torch.randn(4096, 64)
    assert diversity(spread) == pytest.approx(1.0, abs=0.02)  # E||a-b|| ~ sqrt(2 E||a||^2)
    assert diversity(spread * 1000) == pytest.approx(diversity(spread), rel=1e-9)  # scale-free
    assert diversity(spread + 50.0) < 0.05  # a common offset dwarfs the differences
    logits = torch.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3]]
    assert class_coverage(logits, 4) == (4, pytest.approx(1.0))
    assert class_coverage(logits[[0, 4]], 4) == (1, pytest.approx(0.0))
    assert class_coverage(logits[[0, 1]], 4)[1] == pytest.approx(math.log(2) / math.log(4))


def test_rule_is_validated():
    with pytest.raises(ValueError, match="patience"):
        HealthRule(patience=0)
    with pytest.raises(ValueError, match="min_input_diversity"):
        HealthRule(min_input_diversity=-1.0)
    from zskt_ray.config import field_docs

    assert all(field_docs(HealthRule).values())  # a doc string per field


# ---------------------------------------------------------------- provoked failures


def test_a_healthy_toy_run_flags_nothing(toy_teacher, toy_splits):
    d = toy_distiller(toy_teacher, toy_cfg(), toy_splits)
    reports = list(d.run())
    assert _flags(reports) == [0.0] * 6 and all(r.health is None for r in reports)
    last = reports[-1].metrics
    assert last[names.HEALTH_CLASSES] == 3 and last[names.HEALTH_DIV_INPUT] > 0.2
    assert last[names.HEALTH_ADV_KL] == pytest.approx(-last["loss_g"])


def test_a_generator_that_does_not_learn_by_design_is_not_flagged_stalled(toy_teacher):
    """n_g 0, or no generator loss (adversarial_discrepancy none without a prior): the generator
    takes no step by the run's setting, so its stall conditions are off; the collapse ones stay."""
    for cfg in (toy_cfg(n_g=0), toy_cfg(adversarial_discrepancy="none")):
        d = toy_distiller(toy_teacher, cfg)
        reports = list(d.run())
        assert _flags(reports) == [0.0] * 6 and reports[-1].health is None
        assert reports[-1].metrics[names.HEALTH_GEN_MOVE] == 0.0  # it really did not move
        assert reports[-1].metrics[names.HEALTH_ADV_KL] == 0.0
        assert d.health.rule.min_generator_move == 0 and d.health.rule.min_adv_kl == 0
        assert d.health.rule.min_input_diversity == HealthRule().min_input_diversity
    # the rule a learning generator gets is the one given
    assert toy_distiller(toy_teacher, toy_cfg()).health.rule == HealthRule()


def test_a_static_generator_is_still_flagged_collapsed(toy_teacher):
    d = toy_distiller(toy_teacher, toy_cfg(n_g=0))
    _constant_output(d.generator)
    flag = list(d.run())[-1].health
    assert flag is not None and flag.status == names.COLLAPSED


def test_a_frozen_generator_is_flagged_stalled(toy_teacher):
    """A learning rate of 1e-9 (0 is refused by the config): the generator is frozen in effect."""
    reports = list(toy_distiller(toy_teacher, toy_cfg(lr_g=1e-9)).run())
    # patience 3: flagged at the third report (iteration 15), and it stays flagged
    assert _flags(reports) == [0.0, 0.0, 2.0, 2.0, 2.0, 2.0]
    flag = reports[2].health
    assert flag is not None and flag.status == names.STALLED and flag.iteration == 15
    assert "the generator moved" in flag.reason and "since iteration 5" in flag.reason
    assert "adversarial KL" not in flag.reason and "\n" not in flag.reason
    assert reports[0].metrics[names.HEALTH_ADV_KL] > 1e-3  # the signal is there; G ignores it
    assert reports[-1].health == flag  # the first verdict is kept


def _constant_output(generator: nn.Module) -> None:
    """Zero and freeze the last BN's scale: every pseudo input becomes that BN's bias (0.5, not
    0, so that ReLUs of the teacher pass a gradient to it)."""
    last = [m for m in generator.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.5)
    last.weight.requires_grad_(False)


def test_a_generator_forced_to_a_constant_output_is_flagged_collapsed(toy_teacher):
    d = toy_distiller(toy_teacher, toy_cfg())
    _constant_output(d.generator)
    reports = list(d.run())
    flag = reports[-1].health
    assert flag is not None and flag.status == names.COLLAPSED and flag.iteration == 15
    assert "predicts 1 of 3 classes" in flag.reason and "input diversity 0" in flag.reason
    assert reports[-1].metrics[names.HEALTH_DIV_FEATURE] == 0.0


def test_a_constant_image_generator_is_flagged_collapsed_on_digits():
    d = ZeroShotDistiller(digits_cfg(iterations=6), digits_teacher(), DIGITS)
    _constant_output(d.generator)
    reports = list(d.run())
    assert reports[-1].health is not None and reports[-1].health.status == names.COLLAPSED
    assert reports[-1].metrics[names.HEALTH_CLASSES] == 1


def test_the_rule_continues_exactly_after_a_resume(toy_teacher, tmp_path):
    """Streaks, the previous outputs and the KL window are in the checkpoint: a run interrupted
    after two bad reports is flagged at the same iteration, with the same metrics, as a straight
    one; cost counters continue too."""
    cfg = toy_cfg(lr_g=1e-9)
    straight = list(toy_distiller(toy_teacher, cfg).run())
    first = toy_distiller(toy_teacher, cfg)
    head = list(first.run(until=10))
    first.save_checkpoint(tmp_path / "c.pt")
    assert head[-1].health is None
    resumed = toy_distiller(toy_teacher, cfg)
    resumed.load_checkpoint(tmp_path / "c.pt")
    tail = list(resumed.run())
    assert [r.health for r in head + tail] == [r.health for r in straight]
    volatile = (names.COST_WALL_S, names.COST_PEAK_MEM_MIB, names.SPEED_METRIC)
    for a, b in zip(straight, head + tail, strict=True):
        assert {k: v for k, v in a.metrics.items() if k not in volatile} == {
            k: v for k, v in b.metrics.items() if k not in volatile
        }


def test_healthy_metrics_continue_exactly_after_a_resume(toy_teacher, toy_splits, tmp_path):
    cfg = toy_cfg()
    straight = list(toy_distiller(toy_teacher, cfg, toy_splits).run())
    first = toy_distiller(toy_teacher, cfg, toy_splits)
    list(first.run(until=15))
    first.save_checkpoint(tmp_path / "c.pt")
    resumed = toy_distiller(toy_teacher, cfg, toy_splits)
    resumed.load_checkpoint(tmp_path / "c.pt")
    tail = list(resumed.run())
    for a, b in zip(straight[3:], tail, strict=True):
        for name in names.HEALTH_METRICS:
            assert a.metrics[name] == b.metrics[name], name


def test_cli_writes_the_verdict_into_metrics_json(toy_teacher, tmp_path, capsys):
    argv = ["distill", "--dataset", "toy2d", "--teacher-arch", "mlp-3x64", "--student-arch"]
    argv += ["mlp-2x16", "--beta", "0", "--iterations", "15", "--eval-every", "5", "--z-dim", "4"]
    argv += ["--teacher-path", str(toy_teacher), "--no-progress", "--device", "cpu"]
    assert main([*argv, "--lr-g", "1e-9", "--out", str(tmp_path / "stalled")]) == 0
    metrics = json.loads((tmp_path / "stalled" / names.METRICS_FILE).read_text())
    assert metrics["health"] == names.STALLED and metrics["health_iteration"] == 15
    assert "health: stalled: " in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "ok")]) == 0
    assert json.loads((tmp_path / "ok" / names.METRICS_FILE).read_text())["health"] == "healthy"


# ---------------------------------------------------------------- audits


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and isinstance(e.value, ValueError)
    return text


def test_teacher_passed_as_the_student_is_refused_before_training(toy_teacher):
    d = toy_distiller(toy_teacher, toy_cfg())
    d.student = d.teacher  # the public bug: KL(T || T) = 0
    before = {k: v.clone() for k, v in d.generator.state_dict().items()}
    with pytest.raises(NetworkAuditError) as e:
        next(d.run())
    assert "teacher was passed as the student" in _one_line(e)
    assert d.iteration == 0
    assert all(torch.equal(v, d.generator.state_dict()[k]) for k, v in before.items())


def test_shared_parameters_and_a_live_teacher_are_refused():
    teacher, student = digits_teacher(), digits_teacher()
    teacher.eval().requires_grad_(False)
    check_networks(teacher, student)  # distinct networks: fine
    student.fc = teacher.fc
    with pytest.raises(NetworkAuditError) as e:
        check_networks(teacher, student)
    assert "share 2 parameter tensor(s) (student's fc.bias, fc.weight)" in _one_line(e)
    student = digits_teacher()
    teacher.block1.train()
    with pytest.raises(NetworkAuditError) as e:
        check_networks(teacher, student)
    assert "the teacher is in train mode (block1)" in _one_line(e)
    teacher.eval()
    teacher.fc.weight.requires_grad_(True)
    with pytest.raises(NetworkAuditError) as e:
        check_networks(teacher, student)
    assert "not frozen: 1 parameter(s) require gradients (e.g. fc.weight)" in _one_line(e)


def test_a_live_teacher_in_the_loop_is_refused_before_training():
    d = ZeroShotDistiller(digits_cfg(), digits_teacher(), DIGITS)
    d.teacher.train()
    with pytest.raises(NetworkAuditError, match="train mode"):
        next(d.run())


def test_a_generator_step_without_gradient_is_refused_before_it_steps(toy_teacher):
    d = toy_distiller(toy_teacher, toy_cfg())
    # Pseudo inputs cut off from the generator's weights: G(z) * 0 + c.
    d.generator.register_forward_hook(lambda m, a, out: out * 0.0 + 1.0)
    before = {k: v.detach().clone() for k, v in d.generator.named_parameters()}
    with pytest.raises(ZeroGradientError) as e:
        next(d.run())
    assert "first generator step got a zero gradient (largest entry 0 <=" in _one_line(e)
    after = dict(d.generator.named_parameters())
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # nothing stepped
    assert d.opt_g.state_dict()["state"] == {}  # Adam never ran


def test_a_student_copying_the_teacher_is_refused_by_the_gradient_audit():
    """A deep copy passes the identity check; KL(T || copy) is 0 up to rounding, and so is the
    generator's gradient (largest entry about 1e-8)."""
    cfg = digits_cfg()
    d = ZeroShotDistiller(cfg, digits_teacher(), DIGITS)
    d.student = build_model("wrn-10-1", DIGITS.num_classes, DIGITS.in_channels)
    d.student.load_state_dict(d.teacher.state_dict())
    d.student.eval()  # the same function as the teacher (train-mode BN would differ)
    with pytest.raises(ZeroGradientError):
        next(d.run())


def test_the_gradient_audit_skips_a_generator_that_never_steps(toy_teacher):
    reports = list(toy_distiller(toy_teacher, toy_cfg(n_g=0, iterations=5)).run())
    assert reports[-1].done


def test_a_guarded_test_loader_refuses_to_be_read(toy_teacher, toy_splits):
    d = toy_distiller(toy_teacher, toy_cfg(iterations=5), toy_splits)
    list(d.run())
    test = make_loader(toy_splits.test, 1000, shuffle=False)
    guarded = GuardedLoader(test, "search trials must not read the test split")
    assert len(guarded) == len(test) and guarded.batch_size == 1000  # handing it over is fine
    with pytest.raises(SplitReadError) as e:
        d.final_metrics(guarded)
    assert _one_line(e) == ("test split read refused: search trials must not read the test split")
    assert isinstance(e.value, AuditError) and d.student.training  # mode restored
    assert d.final_metrics(test)["test_acc"] >= 0.0  # the plain loader still reads


# ---------------------------------------------------------------- cost


def test_cost_counts_every_real_pass(toy_teacher, toy_splits):
    cfg = toy_cfg(iterations=12, eval_every=4, n_g=2, n_s=3)
    d = toy_distiller(toy_teacher, cfg, toy_splits)
    reports = list(d.run())
    m = reports[-1].metrics
    n, evals, b = cfg.iterations, len(reports), cfg.batch_size
    # per iteration: n_g generator steps (G, T, S forward and backward), one G and T forward for
    # the student phase, n_s student steps; per report: the health batch (G, T) and validation
    # accuracy (S, one batch); before training: the health baseline (G, T).
    assert m[names.COST_GENERATOR_FWD] == n * (cfg.n_g + 1) + evals + 1
    assert m[names.COST_GENERATOR_BWD] == n * cfg.n_g
    assert m[names.COST_TEACHER_FWD] == n * (cfg.n_g + 1) + evals + 1
    assert m[names.COST_TEACHER_BWD] == n * cfg.n_g
    assert m[names.COST_STUDENT_FWD] == n * (cfg.n_g + cfg.n_s) + evals
    assert m[names.COST_STUDENT_BWD] == n * (cfg.n_g + cfg.n_s)
    assert m[names.COST_PSEUDO_IMAGES] == b * m[names.COST_GENERATOR_FWD]
    assert m[names.COST_PEAK_MEM_MIB] > 0
    walls = [r.metrics[names.COST_WALL_S] for r in reports]
    assert walls == sorted(walls) and walls[0] > 0


def test_cost_counts_a_new_step_variant_without_change(toy_teacher):
    """A step that calls the teacher twice is counted twice: the counters count calls, not a
    formula of the loop's settings."""
    d = toy_distiller(toy_teacher, toy_cfg(iterations=2, eval_every=2, n_g=1))
    step = d.generator_step

    def twice(z: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            d.teacher(d.generator(z))
        return step(z)

    d.generator_step = twice  # type: ignore[method-assign]
    m = list(d.run())[-1].metrics
    assert m[names.COST_TEACHER_FWD] == 2 * (1 + 1 + 1) + 1 + 1
    assert m[names.COST_TEACHER_BWD] == 2


def test_cost_counters_survive_a_resume(toy_teacher, tmp_path):
    cfg = toy_cfg(iterations=10)
    straight = list(toy_distiller(toy_teacher, cfg).run())[-1].metrics
    first = toy_distiller(toy_teacher, cfg)
    list(first.run(until=5))
    first.save_checkpoint(tmp_path / "c.pt")
    wall = first.cost.wall_s()
    resumed = toy_distiller(toy_teacher, cfg)
    resumed.load_checkpoint(tmp_path / "c.pt")
    last = list(resumed.run())[-1].metrics
    for name in (names.COST_PSEUDO_IMAGES, *names.COST_PASSES):
        assert last[name] == straight[name], name
    assert last[names.COST_WALL_S] >= wall * 0.999  # continues from the saved total


def test_device_seconds_from_wall_and_allocation():
    assert device_seconds(100.0, cpus=2) == 200.0
    assert device_seconds(100.0, cpus=4, gpus=0.25) == 25.0
    assert device_kind(4, 0.25) == "gpu" and device_kind(1, 0) == "cpu"
    with pytest.raises(ValueError, match="must be >= 0"):
        device_seconds(-1.0)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="no Linux procfs")
def test_peak_memory_restarts_for_the_next_run_of_a_process():
    """A reused worker reports its current run's peak, not the largest earlier run's."""
    cpu = torch.device("cpu")
    block = torch.ones(256 * 2**20 // 4)  # 256 MiB, touched
    high = peak_memory_mib(cpu)
    del block
    assert reset_peak_memory(cpu)
    assert peak_memory_mib(cpu) < high - 200


def test_monitor_state_round_trips_through_weights_only(tmp_path):
    d = ZeroShotDistiller(digits_cfg(lr_g=1e-9), digits_teacher(), DIGITS)
    list(d.run())
    path = d.save_checkpoint(tmp_path / "c.pt")
    state = torch.load(path, weights_only=True)
    fresh = HealthMonitor(
        HealthRule(), d.generator, d.teacher, 10, d.cfg.z_dim, d.cfg.batch_size, d.device
    )
    fresh.load_state_dict(state["health"])
    assert fresh.flag == d.health.flag and fresh.streaks == d.health.streaks
    assert torch.equal(fresh.previous, d.health.previous)
