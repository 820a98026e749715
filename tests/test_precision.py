"""Mixed precision in the zero-shot loop: fp32 unchanged, fp32 losses, scaler order, exact resume."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from zskt_ray import loop as loop_module
from zskt_ray.config import PRECISIONS, DistillConfig
from zskt_ray.data import dataset_info
from zskt_ray.loop import ZeroShotDistiller, configure_cuda
from zskt_ray.losses import attention_losses
from zskt_ray.models import build_model

# fp16: the scaler skips the first steps while it finds its scale; torch then warns that the
# scheduler stepped before the optimiser, which is expected.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")

INFO = dataset_info("digits")
# fp16 convolution backward has no fast CPU kernel (about 20x slower than fp32): smaller batches.
HALF_BATCH = {"fp16": 4}


@pytest.fixture(autouse=True)
def _one_thread():
    """Bit-for-bit comparisons need a fixed thread count; one also keeps the tests light."""
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
    return build_model("wrn-10-1", INFO.num_classes, INFO.in_channels)


def _weights(d: ZeroShotDistiller) -> dict[str, torch.Tensor]:
    out = {f"s.{k}": v for k, v in d.student.state_dict().items()}
    out.update({f"g.{k}": v for k, v in d.generator.state_dict().items()})
    return out


# ---------------------------------------------------------------- the step functions before #10


def _old_generator_step(d: ZeroShotDistiller, z: torch.Tensor) -> dict[str, torch.Tensor]:
    """``generator_step`` exactly as it was before precision existed (the frozen reference)."""
    d.student.requires_grad_(False)
    try:
        x = d.generator(z)
        teacher_logits, _ = d.teacher(x)
        student_logits, _ = d.student(x)
        loss_g = -d._kl(student_logits, teacher_logits)
        d.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        if d.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(d.generator.parameters(), d.cfg.grad_clip)
        d.opt_g.step()
    finally:
        d.student.requires_grad_(True)
    return {"loss_g": loss_g.detach()}


def _old_student_phase(d: ZeroShotDistiller, z: torch.Tensor) -> dict[str, torch.Tensor]:
    """``student_phase`` exactly as it was before precision existed (the frozen reference)."""
    with torch.no_grad():
        x = d.generator(z)
        teacher_logits, teacher_feats = d.teacher(x)
    sums = {"loss_s": 0.0, "kl": 0.0, "at": 0.0}
    for _ in range(d.cfg.n_s):
        student_logits, student_feats = d.student(x)
        kl = d._kl(student_logits, teacher_logits)
        at = attention_losses(student_feats, teacher_feats)
        loss_s = kl + d.cfg.beta * at
        d.opt_s.zero_grad(set_to_none=True)
        loss_s.backward()
        if d.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(d.student.parameters(), d.cfg.grad_clip)
        d.opt_s.step()
        for name, value in (("loss_s", loss_s), ("kl", kl), ("at", at)):
            sums[name] = sums[name] + value.detach()
    return {name: value / d.cfg.n_s for name, value in sums.items()}


def test_fp32_is_bit_identical_to_the_step_functions_before_precision(monkeypatch):
    cfg = tiny_cfg(iterations=3, n_g=2)
    new = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    new_terms = [new.train_iteration() for _ in range(3)]

    old = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    monkeypatch.setattr(old, "generator_step", lambda z: _old_generator_step(old, z))
    monkeypatch.setattr(old, "student_phase", lambda z: _old_student_phase(old, z))
    old_terms = [old.train_iteration() for _ in range(3)]
    a, b = _weights(new), _weights(old)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    for mine, theirs in zip(new_terms, old_terms, strict=True):
        for name in ("loss_g", "loss_s", "kl", "at"):
            assert mine[name] == theirs[name], name  # exact, not approx


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision_runs_an_iteration_with_finite_terms(precision):
    cfg = tiny_cfg(precision=precision, batch_size=HALF_BATCH.get(precision, 8))
    d = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    before = [p.clone() for p in d.student.parameters()]
    for _ in range(3):  # fp16: the scaler skips the first steps while it finds its scale
        terms = d.train_iteration()
    assert set(terms) >= {"loss_g", "loss_s", "kl", "at", "pseudo_agreement"}
    assert all(v == v and abs(v) != float("inf") for v in terms.values()), terms
    assert any(not torch.equal(a, b) for a, b in zip(before, d.student.parameters()))
    # master weights stay fp32 whatever the arithmetic of the forward passes
    assert all(p.dtype == torch.float32 for p in d.student.parameters())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_forwards_but_fp32_loss_terms(precision, monkeypatch):
    cfg = tiny_cfg(precision=precision, batch_size=HALF_BATCH.get(precision, 8))
    d = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    seen: list[tuple[str, list[torch.dtype], bool]] = []

    def record(name, fn):
        def wrapped(*args, **kwargs):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            tensors += [t for a in args if isinstance(a, list) for t in a]
            seen.append((name, [t.dtype for t in tensors], torch.is_autocast_enabled("cpu")))
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(loop_module, "kl_divergence", record("kl", loop_module.kl_divergence))
    monkeypatch.setattr(loop_module, "attention_losses", record("at", loop_module.attention_losses))
    conv_dtypes: list[torch.dtype] = []
    d.student.conv1.register_forward_hook(lambda m, i, o: conv_dtypes.append(o.dtype))
    terms = d.train_iteration()
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert conv_dtypes and set(conv_dtypes) == {half}  # the networks did run in half precision
    assert {name for name, _, _ in seen} == {"kl", "at"}
    for name, dtypes, autocast_on in seen:
        assert dtypes and set(dtypes) == {torch.float32}, (name, dtypes)
        assert not autocast_on, name  # a loss term is never inside the autocast region
    assert all(v == v for v in terms.values())


def test_fp16_unscales_before_clipping(monkeypatch):
    cfg = tiny_cfg(precision="fp16", batch_size=4, grad_clip=1e-3)  # small: every step clips
    d = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    assert d.scaler_s.is_enabled() and d.scaler_g.is_enabled()
    for _ in range(2):  # the first steps overflow while the scaler finds its scale
        d.train_iteration()
    events: list[tuple[str, float]] = []
    for scaler in (d.scaler_s, d.scaler_g):

        def unscale(opt, real=scaler.unscale_):
            events.append(("unscale", 0.0))
            return real(opt)

        scaler.unscale_ = unscale
    real_clip = torch.nn.utils.clip_grad_norm_

    def clip(params, max_norm, *args, **kwargs):
        params = list(params)
        norm = real_clip(params, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        events.append(("clip", float(norm)))
        events.append(("clipped", float(after)))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    d.train_iteration()
    kinds = [k for k, _ in events]
    assert kinds == ["unscale", "clip", "clipped"] * (cfg.n_g + cfg.n_s), kinds
    scale = min(d.scaler_s.get_scale(), d.scaler_g.get_scale())
    assert scale >= 2.0**10  # gradients were scaled by a large factor before backward
    pairs = zip(events[1::3], events[2::3], strict=True)
    finite = [(n, a) for (_, n), (_, a) in pairs if math.isfinite(n)]  # steps not skipped
    assert finite
    for norm, after in finite:
        # the clip saw the true (unscaled) norm, well below the scale factor, and clipped it
        assert norm < scale / 4
        assert after <= cfg.grad_clip * (1 + 1e-3)


def test_fp16_skips_a_step_whose_gradients_overflow():
    d = ZeroShotDistiller(tiny_cfg(precision="fp16", batch_size=4), tiny_teacher(), INFO)
    before = [p.clone() for p in d.generator.parameters()]
    scale = d.scaler_g.get_scale()
    x = next(d.generator.parameters())
    d._update(x.sum() * float("inf"), d.opt_g, d.scaler_g, d.generator)
    assert all(torch.equal(a, b) for a, b in zip(before, d.generator.parameters()))
    assert d.scaler_g.get_scale() < scale  # the scaler backed off instead of stepping


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_run_resumes_exactly(precision, tmp_path):
    cfg = tiny_cfg(
        iterations=3, eval_every=1, precision=precision, batch_size=HALF_BATCH.get(precision, 8)
    )
    straight = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    list(straight.run())

    first = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    list(first.run(until=1))
    first.save_checkpoint(tmp_path / "ckpt.pt")
    first.train_iteration()  # lost work of the interrupted process
    del first

    torch.manual_seed(999)
    resumed = ZeroShotDistiller(cfg, tiny_teacher(), INFO)
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    list(resumed.run())
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["config"]["precision"] == precision
    if precision == "fp16":
        assert state["scaler_s"]["scale"] < 2.0**16  # the scale had moved: restoring it matters
        assert resumed.scaler_s.state_dict() == straight.scaler_s.state_dict()
        assert resumed.scaler_g.state_dict() == straight.scaler_g.state_dict()
        assert "scaler_s" in state and state["scaler_s"]["scale"] > 0
    else:
        assert "scaler_s" not in state


def test_checkpoint_refuses_another_precision(tmp_path):
    d = ZeroShotDistiller(tiny_cfg(precision="fp16", batch_size=4), tiny_teacher(), INFO)
    d.save_checkpoint(tmp_path / "c.pt")
    other = ZeroShotDistiller(tiny_cfg(precision="fp32", batch_size=4), tiny_teacher(), INFO)
    with pytest.raises(ValueError, match="precision='fp16'"):
        other.load_checkpoint(tmp_path / "c.pt")


def test_precision_is_validated_and_defaults_to_the_papers_fp32():
    assert DistillConfig().precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        DistillConfig(precision="fp8")
    assert dataclasses.replace(DistillConfig(), precision="bf16").precision == "bf16"


def test_cuda_settings_allow_tf32_except_in_fp32():
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn)
    saved = [f.allow_tf32 for f in flags] + [torch.backends.cudnn.benchmark]
    try:
        configure_cuda("fp32")
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark
        for precision in ("tf32", "bf16", "fp16"):
            configure_cuda(precision)
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.backends.cudnn.benchmark = saved[2]
