"""The Optuna searcher as Tune saves it with an experiment: plain data, no study model."""

from __future__ import annotations

import copy

import pytest
from test_study_spec import BASE

pytest.importorskip("ray")

from zskt_ray.study import space  # noqa: E402
from zskt_ray.study.spec import parse_spec  # noqa: E402


def test_the_saved_searcher_holds_no_study_model(tmp_path, monkeypatch):
    """Tune pickles the searcher into the experiment's state; a resumed study unpickles it. It
    holds the search space and the budget as plain data, so a later version of the study schema
    still restores it, and it suggests the same way after the round trip."""
    monkeypatch.setenv("ZSKT_HOME", str(tmp_path / "home"))
    data = copy.deepcopy(BASE)
    data["storage"] = {"optuna": f"sqlite:///{tmp_path / 'optuna.db'}"}
    spec = parse_spec(data)
    searcher = space.StudySearcher(spec)
    saved = tmp_path / "searcher.pkl"
    searcher.save(str(saved))
    blob = saved.read_bytes()
    assert b"zskt_ray.study.spec" not in blob and b"zskt_ray.study.schema" not in blob
    restored = space.StudySearcher(spec)
    restored.restore(str(saved))
    config = restored.suggest("trial_0")
    assert set(config) == {"n_s", "beta", "lr_s"}
    assert 1 <= config["n_s"] <= 4 and config["beta"] in (0, 250) and 1e-4 <= config["lr_s"] <= 1e-2
    trial = restored._ot_trials["trial_0"]
    assert trial.user_attrs[space.ATTR_CONFIG_ID] == space.config_id(spec.trial_config(config))
