"""Golden values of the loss terms: the reductions the paper's numbers depend on."""

import math

import pytest
import torch

from zskt_ray.losses import (
    attention_loss,
    attention_losses,
    attention_map,
    kd_at_terms,
    kl_divergence,
)

# Teacher p = (0.75, 0.25), student q = (0.5, 0.5): KL(p||q) summed over classes, by hand.
KL_SUM = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812...


def _pair():
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    student = torch.tensor([[0.0, 0.0]])
    return student, teacher


def test_kl_mean_divides_by_batch_times_classes():
    s, t = _pair()
    assert KL_SUM == pytest.approx(0.1308120, abs=1e-6)
    assert kl_divergence(s, t, reduction="mean").item() == pytest.approx(KL_SUM / 2, abs=1e-6)
    assert kl_divergence(s, t, reduction="batchmean").item() == pytest.approx(KL_SUM, abs=1e-6)
    assert kl_divergence(s, t, reduction="sum").item() == pytest.approx(KL_SUM, abs=1e-6)


def test_kl_mean_over_batch_of_two_and_ten_classes():
    torch.manual_seed(0)
    s, t = torch.randn(2, 10), torch.randn(2, 10)
    p, logq = t.softmax(1), s.log_softmax(1)
    by_hand = (p * (p.log() - logq)).sum()
    assert kl_divergence(s, t, reduction="mean").item() == pytest.approx(
        by_hand.item() / 20, rel=1e-5
    )
    # batchmean is C times larger: the imbalance against beta the method doc warns about
    ratio = kl_divergence(s, t, reduction="batchmean") / kl_divergence(s, t, reduction="mean")
    assert ratio.item() == pytest.approx(10.0, rel=1e-5)


def test_kl_temperature_softens_both_sides():
    s, t = _pair()
    hot = kl_divergence(s * 2, t * 2, temperature=2.0, reduction="mean")
    assert hot.item() == pytest.approx(KL_SUM / 2, abs=1e-6)


def test_kl_rejects_unknown_reduction():
    s, t = _pair()
    with pytest.raises(ValueError, match="reduction"):
        kl_divergence(s, t, reduction="avg")  # type: ignore[arg-type]


def test_attention_golden_value():
    # student map (1, 0), teacher map (1, 1)/sqrt(2): squared diffs (1-1/sqrt2)^2 and 1/2, mean of 2
    s = torch.tensor([[[[1.0, 0.0]]]])
    t = torch.tensor([[[[1.0, 1.0]]]])
    expected = ((1 - 1 / math.sqrt(2)) ** 2 + 0.5) / 2
    assert expected == pytest.approx(0.2928932, abs=1e-6)
    assert attention_loss(s, t).item() == pytest.approx(expected, abs=1e-6)


def test_attention_map_is_channel_mean_of_squares_normalised():
    a = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # B=1, C=2, H=1, W=2
    raw = torch.tensor([(1 + 9) / 2, (4 + 0) / 2])
    assert torch.allclose(attention_map(a)[0], raw / raw.norm())


def test_attention_losses_sum_over_groups_and_zero_for_equal():
    torch.manual_seed(0)
    feats = [torch.randn(3, 4, 8, 8), torch.randn(3, 8, 4, 4)]
    assert attention_losses(feats, feats).item() == 0.0
    other = [f + torch.randn_like(f) for f in feats]
    total = attention_losses(feats, other)
    assert total.item() == pytest.approx(
        sum(attention_loss(a, b).item() for a, b in zip(feats, other))
    )
    with pytest.raises(ValueError, match="groups"):
        attention_losses(feats, feats[:1])


def test_kd_at_terms_combination():
    torch.manual_seed(0)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    y = torch.tensor([0, 1, 2, 3])
    fs, ft = [torch.randn(4, 2, 4, 4)], [torch.randn(4, 2, 4, 4)]
    terms = kd_at_terms(s, t, y, fs, ft, alpha=0.9, temperature=4.0, beta=1000.0)
    expected = 0.1 * terms["ce"] + 2 * 0.9 * 16 * terms["kl"] + 1000 * terms["at"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["kl"].item() == pytest.approx(kl_divergence(s, t, 4.0, "mean").item(), rel=1e-6)
