"""Architectures: the parameter counts of the method doc, shapes, the registry."""

import pytest
import torch

from zskt_ray.models import Generator, WideResNet, build_model, count_parameters, parse_wrn

PAPER_COUNTS = {
    "wrn-16-1": 175_066,
    "wrn-16-2": 691_674,
    "wrn-40-1": 563_930,
    "wrn-40-2": 2_243_546,
}


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_wrn_parameter_counts_match_the_paper(name):
    assert count_parameters(build_model(name, num_classes=10, in_channels=3)) == PAPER_COUNTS[name]


def test_wrn_returns_logits_and_three_raw_groups():
    net = build_model("wrn-16-2", num_classes=7, in_channels=1)
    logits, groups = net(torch.randn(2, 1, 16, 16))
    assert logits.shape == (2, 7)
    assert [g.shape for g in groups] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4)]
    # raw group outputs (before BN/ReLU) can be negative
    assert (groups[2] < 0).any()


def test_wrn_init_follows_the_method_doc():
    net = WideResNet(16, 1)
    std = net.conv1.weight.std().item()
    assert std == pytest.approx((2 / (9 * 16)) ** 0.5, rel=0.15)
    assert torch.all(net.fc.bias == 0)
    assert torch.all(net.bn.weight == 1) and torch.all(net.bn.bias == 0)


@pytest.mark.parametrize("bad", ["wrn-15-1", "resnet-18", "wrn-16-0", "wrn-4-1"])
def test_registry_rejects_invalid_names(bad):
    with pytest.raises(ValueError, match="architecture"):
        parse_wrn(bad)


@pytest.mark.parametrize("size,channels", [(32, 3), (16, 1), (28, 1)])
def test_generator_shapes(size, channels):
    g = Generator(z_dim=100, image_size=size, channels=channels)
    x = g(torch.randn(4, 100))
    assert x.shape == (4, channels, size, size)
    assert g.linear.out_features == 128 * (size // 4) ** 2


def test_generator_output_is_batchnormed_not_squashed():
    torch.manual_seed(0)
    x = Generator(z_dim=10, image_size=16, channels=3)(torch.randn(64, 10))
    per_channel_mean = x.mean(dim=(0, 2, 3))
    assert torch.allclose(per_channel_mean, torch.zeros(3), atol=1e-5)
    assert x.abs().max() > 1.0  # no tanh / clamp: normalised input space


def test_generator_rejects_bad_sizes():
    with pytest.raises(ValueError, match="image_size"):
        Generator(image_size=30)
    with pytest.raises(ValueError, match="z_dim"):
        Generator(z_dim=0)
