"""Frozen configs: paper defaults, YAML round trip, errors that name the key."""

import dataclasses

import pytest

from zskt_ray.config import (
    DistillConfig,
    KDATConfig,
    TeacherConfig,
    field_docs,
    from_dict,
    load_yaml,
    save_yaml,
)


def test_defaults_are_the_papers():
    c = DistillConfig()
    assert (c.n_g, c.n_s, c.batch_size, c.z_dim, c.beta) == (1, 10, 128, 100, 250.0)
    assert (c.lr_s, c.lr_g, c.grad_clip, c.kl_reduction, c.temperature) == (
        2e-3,
        1e-3,
        5.0,
        "mean",
        1.0,
    )
    assert c.iterations == 80_000
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.n_s = 3  # type: ignore[misc]


def test_every_field_is_documented():
    for cls in (DistillConfig, TeacherConfig, KDATConfig):
        assert all(doc for doc in field_docs(cls).values()), cls


@pytest.mark.parametrize("cls", [DistillConfig, TeacherConfig, KDATConfig])
def test_yaml_round_trip(tmp_path, cls):
    cfg = cls()
    assert load_yaml(cls, save_yaml(cfg, tmp_path / "c.yaml")) == cfg


def test_errors_name_the_key(tmp_path):
    with pytest.raises(KeyError, match="n_x"):
        from_dict(DistillConfig, {"n_x": 1})
    with pytest.raises(TypeError, match="n_s"):
        from_dict(DistillConfig, {"n_s": "ten"})
    with pytest.raises(ValueError, match="n_s"):
        from_dict(DistillConfig, {"n_s": 0})
    with pytest.raises(ValueError, match="kl_reduction"):
        from_dict(DistillConfig, {"kl_reduction": "avg"})
    with pytest.raises(ValueError, match="m_per_class"):
        from_dict(KDATConfig, {"m_per_class": 0})
    bad = tmp_path / "bad.yaml"
    bad.write_text("beta: [1, 2]\n")
    with pytest.raises(TypeError, match="bad.yaml.*beta"):
        load_yaml(DistillConfig, bad)


def test_ints_are_accepted_for_floats_and_lists_for_tuples():
    c = from_dict(DistillConfig, {"beta": 0, "lr_s": 1})
    assert isinstance(c.beta, float) and c.beta == 0.0
    t = from_dict(TeacherConfig, {"milestones": [1, 2]})
    assert t.milestones == (1, 2)


def test_teacher_recipes():
    assert TeacherConfig.recipe("svhn", "wrn-40-2").milestones == (30, 60, 80)
    assert TeacherConfig.recipe("cifar10", "wrn-40-2").augment is True
    with pytest.raises(ValueError, match="mnist"):
        TeacherConfig.recipe("mnist", "wrn-40-2")


def test_kdat_recipe_takes_the_teacher_schedule_of_the_dataset():
    k = KDATConfig.recipe("digits", m_per_class=5)
    t = TeacherConfig.recipe("digits", "wrn-16-1")
    assert (k.base_epochs, k.base_milestones, k.m_per_class) == (t.epochs, t.milestones, 5)
    assert KDATConfig.recipe("cifar10").base_milestones == (60, 120, 160)
