"""The Optuna searcher as Tune saves it with an experiment: plain data, no study model."""

from __future__ import annotations

import copy

import pytest
from test_study_spec import BASE

pytest.importorskip("ray")

from zskt_ray import names  # noqa: E402
from zskt_ray.study import space  # noqa: E402
from zskt_ray.study.spec import parse_spec  # noqa: E402


def _spec(tmp_path, monkeypatch):
    """The shared test study, its home and its Optuna database in ``tmp_path``."""
    monkeypatch.setenv("ZSKT_HOME", str(tmp_path / "home"))
    data = copy.deepcopy(BASE)
    data["storage"] = {"optuna": f"sqlite:///{tmp_path / 'optuna.db'}"}
    return parse_spec(data)


def test_the_saved_searcher_holds_no_study_model(tmp_path, monkeypatch):
    """Tune pickles the searcher into the experiment's state; a resumed study unpickles it. It
    holds the search space and the budget as plain data, so a later version of the study schema
    still restores it, and it suggests the same way after the round trip."""
    spec = _spec(tmp_path, monkeypatch)
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


def test_a_trial_the_saved_searcher_predates_still_reaches_optuna(tmp_path, monkeypatch):
    """A driver killed between saving the searcher and saving Tune's experiment leaves a restored
    trial that the restored searcher never suggested. Its outcome must still be told to its
    Optuna trial (found by its Tune id), or the study would stop one trial short, with that trial
    RUNNING in Optuna for good."""
    spec = _spec(tmp_path, monkeypatch)
    first = space.StudySearcher(spec)
    saved = tmp_path / "searcher.pkl"
    first.save(str(saved))  # the searcher's state, saved before the trial below was suggested
    first.suggest("late_trial")
    restored = space.StudySearcher(spec)
    restored.restore(str(saved))
    restored.on_trial_result("late_trial", {spec.metric: 0.5, names.ITERATION: 2})
    restored.on_trial_complete(
        "late_trial", {spec.metric: 0.75, names.ITERATION: 4, names.STATUS: names.COMPLETED}
    )
    (trial,) = space.open_study(spec, create=False).trials
    assert trial.state == space.TrialState.COMPLETE and trial.value == 0.75
    assert trial.intermediate_values == {2: 0.5, 4: 0.75}
