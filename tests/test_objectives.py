"""Generator and student objectives of other data-free methods (DFAD, DeepInversion, DAFL).

Golden values of each term on hand-computed tensors, their place in the loop, the refusal of
malformed settings, and the configuration ids of default runs (unchanged by the new fields).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import pytest
import torch
from torch import nn

from zskt_ray.cli import main
from zskt_ray.config import DistillConfig, from_dict, to_dict
from zskt_ray.data import dataset_info
from zskt_ray.loop import ZeroShotDistiller
from zskt_ray.losses import (
    BatchNormStatistics,
    attention_losses,
    bn_statistics_term,
    information_entropy_term,
    kl_divergence,
    l1_discrepancy,
    one_hot_term,
    sum_in_order,
)
from zskt_ray.models import build_model
from zskt_ray.names import GEN_KL
from zskt_ray.study.spec import config_id

INFO = dataset_info("digits")


@pytest.fixture(autouse=True)
def _one_thread():
    """Exact comparisons need a fixed thread count; one also keeps the tests light."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_cfg(**kw) -> DistillConfig:
    base = dict(
        dataset="digits",
        teacher_arch="wrn-10-1",
        student_arch="wrn-10-1",
        iterations=4,
        n_g=1,
        n_s=2,
        batch_size=8,
        z_dim=8,
        eval_every=2,
        device="cpu",
        seed=0,
    )
    base.update(kw)
    return DistillConfig(**base)


def tiny_teacher() -> nn.Module:
    torch.manual_seed(123)
    teacher = build_model("wrn-10-1", INFO.num_classes, INFO.in_channels)
    # Running statistics away from (0, 1), as a trained teacher's are.
    for m in teacher.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return teacher


# ---------------------------------------------------------------- golden values of the terms


def test_l1_discrepancy_is_the_mean_absolute_error_over_batch_and_classes():
    s = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # |1| + |2| + |-1| + |-2| = 6 over B*C = 4 elements; no softmax, no temperature
    assert l1_discrepancy(s, t).item() == 1.5
    assert l1_discrepancy(t, s).item() == 1.5
    assert l1_discrepancy(s, s).item() == 0.0


def _bn_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # B=2, C=2, 1x1: channel 0 holds 1, 3 (mean 2, biased variance 1), channel 1 holds 2, 6
    # (mean 4, biased variance 4)
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]]).view(2, 2, 1, 1)
    return x, torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.0])


def test_bn_statistics_term_golden_value():
    x, running_mean, running_var = _bn_example()
    # ||(2, 4) - (2, 1)||_2 + ||(1, 4) - (1, 0)||_2 = 3 + 4. The unbiased variance would give
    # 3 + sqrt(65), squared norms 9 + 16.
    assert bn_statistics_term(x, running_mean, running_var).item() == 7.0


def test_bn_statistics_term_pools_batch_and_positions():
    x = torch.tensor([[[[1.0, 3.0]]], [[[5.0, 7.0]]]])  # B=2, C=1, 1x2: mean 4, variance 5
    term = bn_statistics_term(x, torch.tensor([0.0]), torch.tensor([0.0]))
    assert term.item() == pytest.approx(4.0 + 5.0)


def test_batch_norm_statistics_hooks_every_bn_input_and_leave_no_hook():
    x, running_mean, running_var = _bn_example()
    bn = nn.BatchNorm2d(2)
    bn.running_mean.copy_(running_mean)
    bn.running_var.copy_(running_var)
    net = nn.Sequential(bn, nn.ReLU(), nn.BatchNorm2d(2)).eval()
    prior = BatchNormStatistics(net)
    assert len(prior.layers) == 2
    with prior.recording() as terms:
        out = net(x)
    assert len(terms) == 2 and terms[0].item() == 7.0
    # the second layer's term is computed on its own input, against its own (0, 1) statistics
    assert terms[1].item() == pytest.approx(
        bn_statistics_term(torch.relu(bn(x)), torch.zeros(2), torch.ones(2)).item(), abs=1e-6
    )
    assert torch.equal(out, net(x))  # the hooks change no output
    assert all(not m._forward_hooks for m in net.modules())
    with pytest.raises(ValueError, match="batch-norm"):
        BatchNormStatistics(build_model("mlp-2x16", 3, 2))


def test_batch_norm_statistics_term_has_image_gradients():
    x, running_mean, running_var = _bn_example()
    x.requires_grad_(True)
    bn = nn.BatchNorm2d(2).eval()
    bn.running_mean.copy_(running_mean)
    bn.running_var.copy_(running_var)
    with BatchNormStatistics(bn).recording() as terms:
        bn(x)
    terms[0].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert bn.running_mean.tolist() == running_mean.tolist()  # eval mode: targets stay


def test_one_hot_term_golden_value():
    # rows p = (0.75, 0.25) and (0.2, 0.8): argmax 0 and 1, cross-entropies -ln 0.75 and -ln 0.8
    t = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(4.0)]])
    expected = (-math.log(0.75) - math.log(0.8)) / 2
    assert one_hot_term(t).item() == pytest.approx(expected, abs=1e-6)


def test_information_entropy_term_golden_value():
    t = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(4.0)]])
    # batch-mean softmax (0.475, 0.525); base-10 logarithm, summed over classes, not negated
    expected = 0.475 * math.log10(0.475) + 0.525 * math.log10(0.525)
    assert information_entropy_term(t).item() == pytest.approx(expected, abs=1e-6)
    # balanced classes reach the minimum -log10(C)
    assert information_entropy_term(torch.zeros(4, 10)).item() == pytest.approx(-1.0, abs=1e-6)


def test_information_entropy_term_is_finite_for_a_class_of_probability_zero():
    t = torch.tensor([[0.0, -1e4], [0.0, -1e4]], requires_grad=True)
    value = information_entropy_term(t)
    value.backward()
    assert value.item() == 0.0  # p = (1, 0): 1 log 1 + 0 log 0 = 0
    assert torch.isfinite(t.grad).all()


def test_sum_in_order_adds_left_to_right():
    # fp32: (1e8 + 1) rounds back to 1e8, so left to right gives 0; 1 + (1e8 - 1e8) would give 1
    terms = [torch.tensor(1e8), torch.tensor(1.0), torch.tensor(-1e8)]
    assert sum_in_order(terms).item() == 0.0
    assert sum_in_order([torch.tensor(2.0)]).item() == 2.0
    with pytest.raises(ValueError):
        sum_in_order([])


# ---------------------------------------------------------------- the objectives in the loop


def _weights(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_defaults_report_no_new_terms():
    terms = ZeroShotDistiller(tiny_cfg(), tiny_teacher(), INFO).train_iteration()
    assert set(terms) == {
        "loss_g",
        "loss_s",
        "kl",
        "at",
        "teacher_conf",
        "student_conf",
        "pseudo_agreement",
    }


def test_untrained_generator_skips_its_steps_and_equals_n_g_zero(recwarn):
    d = ZeroShotDistiller(tiny_cfg(adversarial_discrepancy="none"), tiny_teacher(), INFO)
    calls: list[bool] = []
    d.generator.register_forward_hook(lambda m, i, o: calls.append(True))
    g0 = [p.clone() for p in d.generator.parameters()]
    terms = [d.train_iteration() for _ in range(2)]
    assert not [w for w in recwarn if "lr_scheduler" in str(w.message)]  # no step, no warning
    assert len(calls) == 2  # one student-phase forward per iteration, no generator step
    assert all(torch.equal(a, b) for a, b in zip(g0, d.generator.parameters(), strict=True))
    assert all("loss_g" not in t for t in terms)
    ref = ZeroShotDistiller(tiny_cfg(n_g=0), tiny_teacher(), INFO)
    assert [ref.train_iteration() for _ in range(2)] == terms
    assert _same(_weights(ref.student), _weights(d.student))


def _one_generator_step(cfg: DistillConfig):
    """A distiller after one generator step, the step's terms, and the step's images' logits."""
    d = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    z = d.sample_z()
    gen_state = _weights(d.generator)
    student_state = _weights(d.student)
    # The images and logits the step sees, from copies of the networks in the same modes.
    probe_g = build_generator_copy(d)
    probe_s = build_model(cfg.student_arch, INFO.num_classes, INFO.in_channels)
    probe_s.load_state_dict(student_state)
    probe_s.to(memory_format=torch.channels_last).train()
    with torch.no_grad():
        x = probe_g(z)
        t_logits, _ = d.teacher(x)
        s_logits, _ = probe_s(x)
    terms = d.generator_step(z)
    return d, terms, x, t_logits, s_logits, gen_state


def build_generator_copy(d: ZeroShotDistiller) -> nn.Module:
    g = type(d.generator)(d.cfg.z_dim, INFO.image_size, INFO.in_channels)
    g.load_state_dict(d.generator.state_dict())
    return g.to(memory_format=torch.channels_last).train()


def test_dfad_generator_maximises_the_l1_of_the_logits():
    d, terms, _, t, s, g0 = _one_generator_step(tiny_cfg(adversarial_discrepancy="l1"))
    assert set(terms) == {"loss_g", GEN_KL}
    assert terms["loss_g"].item() == pytest.approx(-l1_discrepancy(s, t).item(), abs=1e-6)
    # the steps' KL for the run's health, which -loss_g no longer is
    assert terms[GEN_KL].item() == pytest.approx(kl_divergence(s, t).item(), rel=1e-5)
    assert not _same(g0, _weights(d.generator))


def test_bn_prior_adds_the_weighted_sum_over_the_teachers_bn_layers():
    cfg = tiny_cfg(prior_bn=0.5)
    d, terms, x, t, s, _ = _one_generator_step(cfg)
    layers = [m for m in d.teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    inputs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, i, o: inputs.append(i[0])) for m in layers]
    with torch.no_grad():
        d.teacher(x)
    for h in handles:
        h.remove()
    expected = sum(
        bn_statistics_term(a, m.running_mean, m.running_var).item()
        for a, m in zip(inputs, layers, strict=True)
    )
    assert len(inputs) == len(layers) == 7  # WRN-10-1: 3 blocks x 2 + the head's
    assert terms["g_bn"].item() == pytest.approx(expected, rel=1e-5)
    kl = kl_divergence(s, t, reduction="mean").item()
    assert terms["g_adv"].item() == pytest.approx(kl, rel=1e-5)
    assert terms["loss_g"].item() == pytest.approx(-kl + 0.5 * expected, rel=1e-5)
    assert terms[GEN_KL].item() == terms["g_adv"].item()
    assert all(not m._forward_hooks for m in layers)  # the prior's hooks live in the step only
    assert all(m.training is False for m in layers)


def test_dafl_priors_without_adversary_train_the_generator_from_the_teacher_alone():
    cfg = tiny_cfg(adversarial_discrepancy="none", prior_onehot=1.0, prior_entropy=5.0)
    d = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    student_calls: list[bool] = []
    d.student.register_forward_hook(lambda m, i, o: student_calls.append(True))
    z = d.sample_z()
    g0 = _weights(d.generator)
    with torch.no_grad():
        t, _ = d.teacher(build_generator_copy(d)(z))
    terms = d.generator_step(z)
    assert student_calls == []  # no adversarial term: the student is not run
    assert set(terms) == {"loss_g", "g_onehot", "g_entropy", GEN_KL}
    assert terms[GEN_KL].item() == 0.0  # no adversarial KL, not -loss_g
    oh, ie = one_hot_term(t).item(), information_entropy_term(t).item()
    assert terms["g_onehot"].item() == pytest.approx(oh, rel=1e-5)
    assert terms["g_entropy"].item() == pytest.approx(ie, rel=1e-5)
    assert terms["loss_g"].item() == pytest.approx(oh + 5.0 * ie, rel=1e-5)
    assert not _same(g0, _weights(d.generator))


@pytest.mark.parametrize("prior", ["prior_bn", "prior_onehot", "prior_entropy"])
def test_each_prior_moves_the_generator_differently(prior):
    base = _one_generator_step(tiny_cfg())[0]
    with_prior = _one_generator_step(tiny_cfg(**{prior: 1.0}))[0]
    assert not _same(_weights(base.generator), _weights(with_prior.generator))


def test_dfad_student_minimises_l1_and_still_reports_kl():
    cfg = tiny_cfg(student_discrepancy="l1", n_s=1, beta=10.0)
    d = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    z = d.sample_z()
    probe_s = build_model(cfg.student_arch, INFO.num_classes, INFO.in_channels)
    probe_s.load_state_dict(d.student.state_dict())
    probe_s.to(memory_format=torch.channels_last).train()
    with torch.no_grad():
        t, t_feats = d.teacher(build_generator_copy(d)(z))
        s, s_feats = probe_s(build_generator_copy(d)(z))
    terms = d.student_phase(z)
    l1 = l1_discrepancy(s, t).item()
    at = attention_losses(s_feats, t_feats).item()
    assert terms["l1"].item() == pytest.approx(l1, rel=1e-5)
    assert terms["kl"].item() == pytest.approx(kl_divergence(s, t).item(), rel=1e-5)
    assert terms["loss_s"].item() == pytest.approx(l1 + 10.0 * at, rel=1e-5)


def test_toy2d_runs_the_dafl_priors_on_an_mlp():
    info = dataset_info("toy2d")
    cfg = DistillConfig(
        dataset="toy2d",
        teacher_arch="mlp-2x16",
        student_arch="mlp-2x16",
        beta=0.0,
        iterations=2,
        batch_size=16,
        z_dim=4,
        device="cpu",
        adversarial_discrepancy="l1",
        student_discrepancy="l1",
        prior_onehot=1.0,
        prior_entropy=1.0,
    )
    torch.manual_seed(0)
    d = ZeroShotDistiller(cfg, build_model("mlp-2x16", info.num_classes, info.in_channels), info)
    terms = d.train_iteration()
    assert {"g_adv", "g_onehot", "g_entropy", "l1"} <= set(terms)
    assert all(math.isfinite(v) for v in terms.values())


def test_priors_run_under_autocast_with_fp32_terms():
    cfg = tiny_cfg(precision="bf16", adversarial_discrepancy="l1", prior_bn=1.0, prior_entropy=1.0)
    d = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    out = d.generator_step(d.sample_z())
    assert {"g_adv", "g_bn", "g_entropy"} <= set(out)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())


# ---------------------------------------------------------------- malformed settings


BAD_OBJECTIVES = [
    ({"adversarial_discrepancy": "wasserstein"}, "adversarial_discrepancy must be one of"),
    ({"adversarial_discrepancy": "KL"}, "adversarial_discrepancy must be one of"),
    ({"student_discrepancy": "none"}, "student_discrepancy must be one of"),
    ({"prior_bn": -1.0}, "prior_bn must be a finite number >= 0"),
    ({"prior_onehot": float("nan")}, "prior_onehot must be a finite number >= 0"),
    ({"prior_entropy": float("inf")}, "prior_entropy must be a finite number >= 0"),
    ({"prior_onehot": 1.0, "n_g": 0}, "prior_onehot needs generator steps, but n_g is 0"),
    (
        {"adversarial_discrepancy": "l1", "student_discrepancy": "l1", "temperature": 4.0},
        "temperature applies to KL terms only",
    ),
    (
        {"adversarial_discrepancy": "none", "student_discrepancy": "l1", "kl_reduction": "sum"},
        "kl_reduction applies to KL terms only",
    ),
]


@pytest.mark.parametrize("changes,needle", BAD_OBJECTIVES)
def test_malformed_objectives_are_refused_in_one_line(changes, needle):
    with pytest.raises(ValueError) as e:
        tiny_cfg(**changes)
    assert needle in str(e.value) and len(str(e.value).splitlines()) == 1


def test_bn_prior_on_an_mlp_teacher_is_refused():
    with pytest.raises(ValueError, match=r"^prior_bn must be 0 for teacher mlp-3x64: it has no"):
        DistillConfig(
            dataset="toy2d",
            teacher_arch="mlp-3x64",
            student_arch="mlp-2x16",
            beta=0.0,
            prior_bn=1.0,
        )


def test_sound_combinations_are_accepted():
    tiny_cfg(adversarial_discrepancy="none")  # an untrained generator
    tiny_cfg(adversarial_discrepancy="none", prior_bn=1.0)  # DeepInversion-style generator
    tiny_cfg(adversarial_discrepancy="l1", student_discrepancy="l1", beta=0.0)  # DFAD
    tiny_cfg(adversarial_discrepancy="l1", temperature=4.0)  # the student's KL uses it
    tiny_cfg(n_g=0, adversarial_discrepancy="l1")  # no steps, so no objective: allowed


def test_yaml_and_cli_refuse_a_bad_objective_in_one_line(tmp_path, capsys):
    with pytest.raises(ValueError, match="^run.prior_bn must be a finite number >= 0"):
        from_dict(DistillConfig, {**to_dict(tiny_cfg()), "prior_bn": -2}, where="run")
    code = main(["distill", "--adversarial-discrepancy", "js", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "adversarial_discrepancy must be one of" in err
    assert not (tmp_path / "r").exists()  # refused before anything is created


def test_cli_help_shows_the_objective_flags(capsys):
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--adversarial-discrepancy",
        "--student-discrepancy",
        "--prior-bn",
        "--prior-onehot",
        "--prior-entropy",
    ):
        assert flag in out


# ---------------------------------------------------------------- configuration ids


def _config_id_before_objectives(cfg: DistillConfig) -> str:
    """``config_id`` as it was before the objective fields existed (the frozen reference)."""
    values = to_dict(cfg)
    for key in ("adversarial_discrepancy", "student_discrepancy", *_PRIORS):
        values.pop(key)
    for key in ("seed", "data_root", "download", "teacher_path", "device", "eval_batch_size"):
        values.pop(key, None)
    if values.get("precision") == "fp32":
        values.pop("precision")
    for key, value in list(values.items()):
        if isinstance(value, float) and value.is_integer():
            values[key] = int(value)
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


_PRIORS = ("prior_bn", "prior_onehot", "prior_entropy")


def test_default_objectives_keep_the_stored_configuration_ids():
    paper = DistillConfig()
    digits = DistillConfig(dataset="digits", teacher_arch="wrn-16-2", iterations=300, n_s=5)
    # ids that stored runs carry (computed before the objective fields existed)
    assert config_id(paper) == "672ea29f52"
    assert config_id(dataclasses.replace(digits, precision="bf16")) == "df25363b6a"
    for cfg in (paper, digits, tiny_cfg(), tiny_cfg(precision="bf16", beta=0.0)):
        assert config_id(cfg) == _config_id_before_objectives(cfg)
    # a study's trial params spell weights as ints or floats: 0 and 0.0 are the default
    assert config_id({**to_dict(digits), "prior_bn": 0}) == config_id(digits)


@pytest.mark.parametrize(
    "changes",
    [
        {"adversarial_discrepancy": "l1"},
        {"adversarial_discrepancy": "none"},
        {"student_discrepancy": "l1"},
        {"prior_bn": 1.0},
        {"prior_onehot": 1.0},
        {"prior_entropy": 1.0},
    ],
)
def test_each_objective_setting_is_its_own_configuration(changes):
    assert config_id(tiny_cfg(**changes)) != config_id(tiny_cfg())


@pytest.mark.parametrize(
    "changes",
    [
        {"adversarial_discrepancy": "l1"},
        {"prior_entropy": 1.0},
        {"adversarial_discrepancy": "none"},
    ],
)
def test_health_reads_the_generator_steps_kl_not_the_composite_loss(changes):
    from zskt_ray.names import HEALTH_ADV_KL

    d = ZeroShotDistiller(tiny_cfg(iterations=2, eval_every=2, **changes), tiny_teacher(), INFO)
    report = next(iter(d.run()))
    expected = report.metrics.get(GEN_KL, 0.0)  # 'none' without prior: no generator step
    assert report.metrics[HEALTH_ADV_KL] == pytest.approx(expected)
    if "loss_g" in report.metrics and changes.get("adversarial_discrepancy") != "none":
        assert expected > 0 and expected != pytest.approx(-report.metrics["loss_g"])
