"""MLflow as a researcher browses it: model-training experiments, runs named by what they are."""

from __future__ import annotations

from mlflow import MlflowClient

from zskt_ray import names
from zskt_ray.study import tracking

STUDY_YAML = {
    "name": "browse",
    "search": {"space": {"n_s": {"type": "int"}, "beta": {"type": "float"}}},
}


def test_study_experiment_is_model_training_and_runs_say_what_they_are(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    # an experiment created before (no kind): setting the study up marks it
    client.create_experiment("browse", artifact_location=(tmp_path / "a").as_uri())
    tags = {"project": "zskt", "owner": "lab"}
    info = tracking.setup_study(uri, "browse", "browse", STUDY_YAML, ("n_s", "beta"), tags)
    exp = client.get_experiment(info.experiment_id)
    assert exp.tags[names.TAG_EXPERIMENT_KIND] == names.EXPERIMENT_KIND_TRAINING
    fresh = tracking.setup_study(uri, "browse-2", "browse-2", STUDY_YAML, ("n_s", "beta"))
    assert (
        client.get_experiment(fresh.experiment_id).tags[names.TAG_EXPERIMENT_KIND]
        == names.EXPERIMENT_KIND_TRAINING
    )
    assert info.searched == ("n_s", "beta")
    params = {"n_s": 6, "beta": 250.0, "lr_s": 0.0019, "seed": 1, "m_per_class": 200}
    search = tracking.TrialRun.open(info, "search", "a1b2c_00003", params, "c1", "cpu")
    final = tracking.TrialRun.open(info, "final", "final-0-seed1", params, "c1", "cpu")
    kdat = tracking.TrialRun.open(info, "kdat", "kdat-seed1", params, "k1", "cpu")
    got = {r.run_id: client.get_run(r.run_id).info.run_name for r in (search, final, kdat)}
    assert got[search.run_id] == "search 3: n_s=6 beta=250"
    assert got[final.run_id] == "final rank 0 seed 1: n_s=6 beta=250"
    assert got[kdat.run_id] == "kdat M=200 seed 1"
    run = client.get_run(search.run_id)
    assert run.data.tags[names.TAG_PARENT] == info.parent_run_id
    for run_id in (info.parent_run_id, search.run_id, final.run_id, kdat.run_id):
        assert tags.items() <= client.get_run(run_id).data.tags.items()  # mlflow.run_tags
    text = tracking.how_to_open(uri, info.experiment_id)
    assert f"#/experiments/{info.experiment_id}/runs" in text and "mlflow ui" in text


def test_trial_labels_are_built_and_read_in_one_place():
    from zskt_ray.study.results import TrialLabel, final_rank, parse_trial_label, trial_label

    assert trial_label(names.KIND_FINAL, 2, 1) == "final-2-seed1"
    assert trial_label(names.KIND_KDAT, seed=3) == "kdat-seed3"
    for kind, rank, seed in ((names.KIND_FINAL, 0, 7), (names.KIND_FINAL, 12, -1)):
        assert parse_trial_label(trial_label(kind, rank, seed)) == TrialLabel(kind, rank, seed)
    assert parse_trial_label("kdat-seed3") == TrialLabel(names.KIND_KDAT, None, 3)
    assert final_rank("final-2-seed1") == 2
    assert final_rank("kdat-seed3") is None and final_rank("a1b2c_00003") is None
    assert parse_trial_label("final-x-seed1") is None and parse_trial_label(None) is None
