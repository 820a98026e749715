"""Tests of the transition curves and Mean Transition Error (zskt_ray.mte)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zskt_ray.models import build_model, logits_of
from zskt_ray.mte import (
    MTEResult,
    mean_transition_error,
    mte_from_curves,
    select_agreeing,
    target_classes,
    transition_curves,
    transition_curves_per_image,
    validation_mte,
)

C = 10
K = 5


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep CPU use modest and results reproducible."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _wrn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("wrn-10-1", num_classes=C, in_channels=1)


def _perturbed(net: nn.Module, scale: float, seed: int) -> nn.Module:
    """A copy of ``net`` with small weight noise: mostly agrees with it, but not everywhere."""
    other = copy.deepcopy(net)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * (p.std() if p.numel() > 1 else 1.0))
    return other


class MLP(nn.Module):
    """Tiny logits-only network (no attention tuple), to mix output conventions."""

    def __init__(self, seed: int, in_features: int = 64) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, 16), nn.Tanh(), nn.Linear(16, C)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConstantNet(nn.Module):
    """Always predicts ``cls`` (logits independent of the input except through a zero weight)."""

    def __init__(self, cls: int) -> None:
        super().__init__()
        self.lin = nn.Linear(64, C)
        with torch.no_grad():
            self.lin.weight.zero_()
            self.lin.bias.zero_()
            self.lin.bias[cls] = 5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


def _dataset(n: int, seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    return [(x[i], int(y[i])) for i in range(n)]


def _images(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, C, (n,), generator=g)


# ----------------------------------------------------------------------------- batched vs reference


@pytest.mark.parametrize("batch_size", [7, 1000])
def test_batched_equals_per_image(batch_size: int) -> None:
    a = _wrn(0)
    b = _perturbed(a, 0.3, seed=1)
    x, y = _images(4)  # 4 * 9 = 36 pairs: 7 does not divide it
    ref_a, ref_b, ref_t = transition_curves_per_image(a, b, x, y, k=K, xi=1.0)
    bat_a, bat_b, bat_t = transition_curves(a, b, x, y, k=K, xi=1.0, batch_size=batch_size)
    assert bat_a.shape == (4, C - 1, K) and bat_b.shape == (4, C - 1, K)
    np.testing.assert_array_equal(bat_t, ref_t)
    np.testing.assert_allclose(bat_a, ref_a, atol=1e-5, rtol=0)
    np.testing.assert_allclose(bat_b, ref_b, atol=1e-5, rtol=0)
    # The trajectories move: later steps differ from the clean ones.
    assert np.abs(bat_a[:, :, -1] - bat_a[:, :, 0]).max() > 1e-3
    assert mte_from_curves(bat_a, bat_b) == pytest.approx(mte_from_curves(ref_a, ref_b), abs=1e-6)


def test_batched_equals_per_image_mixed_output_conventions() -> None:
    """A logits-only student against a WRN teacher returning (logits, attentions)."""
    a, b = MLP(3), _wrn(4)
    x, y = _images(3, seed=5)
    ref = transition_curves_per_image(a, b, x, y, k=K, xi=0.5)
    bat = transition_curves(a, b, x, y, k=K, xi=0.5, batch_size=5)
    for r, t in zip(ref, bat, strict=True):
        np.testing.assert_allclose(t, r, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- MTE values


def test_network_against_itself_has_zero_mte() -> None:
    a = _wrn(0)
    ds = _dataset(12)
    res = mean_transition_error(a, a, ds, n_test=6, k=K, xi=1.0)
    assert res.n_test == 6
    assert res.mte <= 1e-7
    res_copy = mean_transition_error(a, copy.deepcopy(a), ds, n_test=6, k=K, xi=1.0)
    assert res_copy.mte <= 1e-7


def test_different_networks_have_positive_bounded_mte() -> None:
    a = _wrn(0)
    b = _perturbed(a, 0.3, seed=1)
    res = mean_transition_error(a, b, _dataset(40), n_test=6, k=K, xi=1.0, batch_size=16)
    assert isinstance(res, MTEResult)
    assert 0.0 < res.mte <= 1.0
    assert res.k == K and res.xi == 1.0 and res.n_requested == 6 and res.n_test == 6
    assert res.curves_a.shape == (6, C - 1, K) and res.curves_b.shape == (6, C - 1, K)
    assert res.targets.shape == (6, C - 1) and res.labels.shape == (6,)
    assert res.mte == pytest.approx(float(np.abs(res.curves_a - res.curves_b).mean()))
    assert ((res.curves_a >= 0) & (res.curves_a <= 1)).all()

    mean_a, mean_b = res.mean_curves()
    assert mean_a.shape == (K,) and mean_b.shape == (K,)
    np.testing.assert_allclose(mean_a, res.curves_a.mean(axis=(0, 1)))
    d = json.loads(json.dumps(res.to_dict()))
    assert d["mte"] == pytest.approx(res.mte) and d["k"] == K and d["xi"] == 1.0
    assert d["n_test"] == 6 and d["n_requested"] == 6
    assert len(d["mean_curve_a"]) == K and len(d["mean_curve_b"]) == K


def test_step_zero_is_clean_prediction_and_targets_order() -> None:
    a, b = _wrn(0), _wrn(2)
    x, y = _images(3)
    curves_a, curves_b, targets = transition_curves(a, b, x, y, k=3, xi=1.0, batch_size=4)
    for i in range(3):
        yi = int(y[i])
        assert targets[i].tolist() == [(yi + c + 1) % C for c in range(C - 1)]
        assert yi not in targets[i].tolist()
    a.eval()
    b.eval()
    with torch.no_grad():
        pa = F.softmax(logits_of(a, x), dim=1).numpy()
        pb = F.softmax(logits_of(b, x), dim=1).numpy()
    rows = np.arange(3)[:, None]
    np.testing.assert_allclose(curves_a[:, :, 0], pa[rows, targets], atol=1e-6)
    np.testing.assert_allclose(curves_b[:, :, 0], pb[rows, targets], atol=1e-6)


def test_target_classes_wraps_around() -> None:
    t = target_classes(torch.tensor([0, 9, 4]), 10)
    assert t[0].tolist() == list(range(1, 10))
    assert t[1].tolist() == list(range(0, 9))
    assert t[2].tolist() == [5, 6, 7, 8, 9, 0, 1, 2, 3]


# ----------------------------------------------------------------------------- the step itself


class LinearNet(nn.Module):
    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(b.clone())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return x.flatten(1) @ self.w.T + self.b, []


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_step_is_raw_gradient(batch_size: int) -> None:
    """Linear logits z = Wx + b: grad_x CE(z, j) = W^T (softmax(z) - e_j), in closed form."""
    torch.manual_seed(0)
    d, n, xi = 6, 2, 0.7
    w, bias = 0.5 * torch.randn(C, d, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
    a = LinearNet(w, bias)
    b = LinearNet(w + 0.1, bias)
    x = torch.randn(n, d, dtype=torch.float64)
    y = torch.tensor([3, 9])
    curves_a, curves_b, targets = transition_curves(a, b, x, y, k=2, xi=xi, batch_size=batch_size)

    for i in range(n):
        for t in range(C - 1):
            j = int(targets[i, t])
            p0 = torch.softmax(w @ x[i] + bias, dim=0)
            grad = w.T @ (p0 - F.one_hot(torch.tensor(j), C).double())
            x1 = x[i] - xi * grad  # raw gradient, no sign, no division by the batch size
            p1a = torch.softmax(w @ x1 + bias, dim=0)[j].item()
            p1b = torch.softmax((w + 0.1) @ x1 + bias, dim=0)[j].item()
            assert curves_a[i, t, 0] == pytest.approx(p0[j].item(), abs=1e-12)
            assert curves_a[i, t, 1] == pytest.approx(p1a, abs=1e-12)
            assert curves_b[i, t, 1] == pytest.approx(p1b, abs=1e-12)
            # A sign step would land elsewhere.
            x1_sign = x[i] - xi * grad.sign()
            p1_sign = torch.softmax(w @ x1_sign + bias, dim=0)[j].item()
            assert abs(p1_sign - p1a) > 1e-6


def test_descent_raises_target_probability() -> None:
    """Stepping down CE(A, j) makes A more confident in j (a small step, a smooth net)."""
    a = MLP(0)
    x, y = _images(3)
    curves_a, _, _ = transition_curves(a, MLP(1), x, y, k=4, xi=0.05)
    assert (np.diff(curves_a, axis=2) > -1e-6).mean() > 0.95
    assert curves_a[:, :, -1].mean() > curves_a[:, :, 0].mean()


# ----------------------------------------------------------------------------- selection


def test_selection_keeps_only_agreeing_and_is_deterministic() -> None:
    a = _wrn(0)
    b = _perturbed(a, 0.6, seed=1)
    ds = _dataset(60)
    x1, y1 = select_agreeing(a, b, ds, n_test=6, seed=3, batch_size=8)
    x2, y2 = select_agreeing(a, b, ds, n_test=6, seed=3, batch_size=32)
    assert x1.shape == (6, 1, 8, 8) and y1.shape == (6,) and y1.dtype == torch.long
    torch.testing.assert_close(x1, x2, rtol=0, atol=0)
    assert torch.equal(y1, y2)
    a.eval()
    b.eval()
    with torch.no_grad():
        assert torch.equal(logits_of(a, x1).argmax(1), logits_of(b, x1).argmax(1))
        # They are the first agreeing images of the seeded shuffle, with their true labels.
        order = torch.randperm(60, generator=torch.Generator().manual_seed(3)).tolist()
        all_x = torch.stack([ds[i][0] for i in order])
        agree = logits_of(a, all_x).argmax(1) == logits_of(b, all_x).argmax(1)
        assert int(agree.sum()) < 60, "the test needs some disagreement to mean anything"
        expected = [order[i] for i in range(60) if agree[i]][:6]
    torch.testing.assert_close(x1, torch.stack([ds[i][0] for i in expected]), rtol=0, atol=0)
    assert y1.tolist() == [ds[i][1] for i in expected]
    x3, _ = select_agreeing(a, b, ds, n_test=6, seed=4)
    assert not torch.equal(x1, x3)


def test_n_test_capped_by_availability() -> None:
    a = _wrn(0)
    b = _perturbed(a, 0.6, seed=1)
    ds = _dataset(20)
    a.eval()
    b.eval()
    with torch.no_grad():
        xs = torch.stack([item[0] for item in ds])
        n_agree = int((logits_of(a, xs).argmax(1) == logits_of(b, xs).argmax(1)).sum())
    assert 0 < n_agree < 20
    res = mean_transition_error(a, b, ds, n_test=1000, k=2, batch_size=64)
    assert res.n_test == n_agree and res.n_requested == 1000
    assert res.curves_a.shape == (n_agree, C - 1, 2) and res.labels.shape == (n_agree,)


def test_no_agreement_raises() -> None:
    with pytest.raises(ValueError, match="agree"):
        select_agreeing(ConstantNet(0), ConstantNet(1), _dataset(10), n_test=5)
    with pytest.raises(ValueError, match="agree"):
        mean_transition_error(ConstantNet(0), ConstantNet(1), _dataset(10), n_test=5, k=2)


# ----------------------------------------------------------------------------- side effects


class ModeRecorder(nn.Module):
    """Records the training flag seen by each forward call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor):
        self.seen.append(self.training)
        return self.inner(x)


def test_modes_and_requires_grad_restored_no_param_grads() -> None:
    a = ModeRecorder(_wrn(0))
    b = ModeRecorder(_perturbed(a.inner, 0.3, seed=1))
    a.train()
    a.inner.block1.eval()  # mixed modes must survive
    b.eval()
    frozen = a.inner.fc.weight
    frozen.requires_grad_(False)
    modes_a = {name: m.training for name, m in a.named_modules()}
    modes_b = {name: m.training for name, m in b.named_modules()}
    flags_a = {name: p.requires_grad for name, p in a.named_parameters()}
    flags_b = {name: p.requires_grad for name, p in b.named_parameters()}

    mean_transition_error(a, b, _dataset(30), n_test=3, k=3, batch_size=8)
    x, y = _images(2)
    transition_curves_per_image(a, b, x, y, k=2)

    assert a.seen and b.seen and not any(a.seen) and not any(b.seen)
    assert {name: m.training for name, m in a.named_modules()} == modes_a
    assert {name: m.training for name, m in b.named_modules()} == modes_b
    assert {name: p.requires_grad for name, p in a.named_parameters()} == flags_a
    assert {name: p.requires_grad for name, p in b.named_parameters()} == flags_b
    assert all(p.grad is None for p in a.parameters())
    assert all(p.grad is None for p in b.parameters())
    # BN running statistics untouched (eval mode throughout).
    bn = next(m for m in a.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_restored_after_an_error() -> None:
    a, b = _wrn(0), _wrn(1)
    a.train()
    x, y = _images(2)
    with pytest.raises(ValueError, match="num_classes"):
        transition_curves(a, b, x, y, k=2, num_classes=7)
    assert a.training and all(p.requires_grad for p in a.parameters())


def test_device_argument_accepts_str_and_device() -> None:
    a = _wrn(0)
    b = _perturbed(a, 0.3, seed=1)
    x, y = _images(2)
    r1 = transition_curves(a, b, x, y, k=2, device="cpu")
    r2 = transition_curves(a, b, x, y, k=2, device=torch.device("cpu"))
    for u, v in zip(r1, r2, strict=True):
        assert isinstance(u, np.ndarray)
        np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match="net_a"):
        transition_curves(a, b, x, y, k=2, device="meta")


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"k": 0}, "k"),
        ({"k": -3}, "k"),
        ({"xi": 0.0}, "xi"),
        ({"xi": -1.0}, "xi"),
        ({"xi": float("nan")}, "xi"),
        ({"n_test": 0}, "n_test"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, name: str) -> None:
    a, b = MLP(0), MLP(1)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        mean_transition_error(a, b, _dataset(5), **{"n_test": 2, "k": 2, **kwargs})


@pytest.mark.parametrize("fn", [transition_curves, transition_curves_per_image])
def test_bad_arguments_raise_for_curves(fn) -> None:
    a, b = MLP(0), MLP(1)
    x, y = _images(2)
    with pytest.raises(ValueError, match=r"\bk\b"):
        fn(a, b, x, y, k=0)
    with pytest.raises(ValueError, match=r"\bxi\b"):
        fn(a, b, x, y, k=2, xi=0)
    with pytest.raises(ValueError, match="labels"):
        fn(a, b, x, y[:1], k=2)
    with pytest.raises(ValueError, match="labels"):
        fn(a, b, x, torch.tensor([0, C]), k=2)


# ----------------------------------------------------------------------------- validation MTE


class Forbidden(torch.utils.data.Dataset):
    """A split that must not be read: any access fails the test."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __len__(self) -> int:
        raise AssertionError(f"the {self.name} split was read")

    def __getitem__(self, index: int):
        raise AssertionError(f"the {self.name} split was read")


def _splits_with_val(val):
    from zskt_ray.data import DataSplits, dataset_info

    return DataSplits(dataset_info("digits"), Forbidden("train"), val, Forbidden("test"))


def test_validation_mte_reads_only_validation_images_and_is_deterministic() -> None:
    a = _wrn(0)
    b = _perturbed(a, 0.6, seed=1)
    val = _dataset(60, seed=5)
    splits = _splits_with_val(val)
    r1 = validation_mte(a, b, splits, n_val=6, k=K, xi=1.0, seed=3, batch_size=8)
    r2 = validation_mte(a, b, splits, n_val=6, k=K, xi=1.0, seed=3, batch_size=32)
    assert r1.mte == r2.mte and np.array_equal(r1.curves_a, r2.curves_a)
    assert (r1.k, r1.xi, r1.n_test) == (K, 1.0, 6)
    # The images are the first agreeing validation images of the seeded shuffle: the same value
    # as the MTE computed on the validation split directly.
    direct = mean_transition_error(a, b, val, n_test=6, k=K, xi=1.0, seed=3)
    assert r1.mte == pytest.approx(direct.mte, rel=1e-12)
    assert r1.labels.tolist() == direct.labels.tolist()
    other = validation_mte(a, b, splits, n_val=6, k=K, xi=1.0, seed=4)
    assert not np.array_equal(other.curves_a, r1.curves_a)


def test_validation_mte_on_real_toy2d_splits_never_reads_test() -> None:
    from zskt_ray.data import load_dataset

    splits = load_dataset("toy2d")
    splits.test = Forbidden("test")
    splits.train = Forbidden("train")
    torch.manual_seed(0)
    student = build_model("mlp-2x16", num_classes=3, in_channels=2)
    teacher = _perturbed(student, 0.3, seed=1)  # agrees on most points, not all
    res = validation_mte(student, teacher, splits, n_val=20, k=3, xi=0.1, seed=0)
    assert 0.0 <= res.mte <= 1.0 and res.n_test <= 20 and res.k == 3
