"""The one module that talks to MLflow.

Layout (the analysis layer reads exactly these names):

- experiment: the study's ``mlflow.experiment`` (default: the study name);
- one parent run per study (run name = study name, tags ``zskt.study``, ``zskt.kind=study``,
  artifact ``study.yaml``), found again by its tags when a study is re-run or resumed;
- one nested run per trial (``mlflow.parentRunId``), tags ``zskt.study``, ``zskt.kind`` (search /
  final / kdat), ``zskt.trial_id``, ``zskt.status`` (completed / pruned / failed),
  ``zskt.status_reason``, ``zskt.config_id``, ``zskt.device``, ``zskt.hostname``,
  ``zskt.gpu_name``, ``zskt.torch_version``, where it ran (``zskt.node_id``, ``zskt.node_ip``,
  ``zskt.nodes``: every node in order, ``zskt.cuda_visible_devices``: the GPU Ray assigned); params = the run's config fields; metrics over time
  with step = iteration; final metrics at the last iteration; artifacts ``images/``, ``mte/``,
  ``student/student.pt``, ``config.yaml``. Run status FINISHED / KILLED / FAILED for completed /
  pruned / failed; nothing is left RUNNING.

Every call goes through an explicit :class:`~mlflow.MlflowClient` built from the study's tracking
URI, so trials on other machines write to the same store and nothing depends on MLflow's global
state or the working directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from .. import names
from ..names import (
    TAG_CONFIG_ID,
    TAG_KIND,
    TAG_PARENT,
    TAG_REASON,
    TAG_STATUS,
    TAG_STUDY,
    TAG_TRIAL,
)
from .results import outcome

log = logging.getLogger(__name__)


_END_STATUS = {
    names.COMPLETED: "FINISHED",
    names.PRUNED: "KILLED",
    names.FAILED: "FAILED",
    names.INTERRUPTED: "KILLED",
}


@dataclasses.dataclass(frozen=True)
class TrackingInfo:
    """What a trial needs to find its study in MLflow (picklable, sent to workers)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    study: str


def client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def _artifact_location(uri: str, experiment: str) -> str | None:
    """For a local sqlite store: artifacts beside the database (absolute), never in the cwd."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts" / experiment).resolve().as_uri()
    return None


def _retry(fn, *args, tries: int = 5, **kwargs):
    """MLflow calls against a busy sqlite file or a restarting server: retry a few times."""
    for attempt in range(tries):
        try:
            return fn(*args, **kwargs)
        except mlflow.exceptions.MlflowException as e:
            text = str(e).lower()
            if attempt == tries - 1 or not any(
                s in text for s in ("locked", "timeout", "connection", "temporar")
            ):
                raise
            time.sleep(1.0 + attempt)
    raise AssertionError  # pragma: no cover


def setup_study(
    uri: str, experiment: str, study: str, study_yaml: Mapping[str, Any]
) -> TrackingInfo:
    """On the driver, before any trial: create store, experiment and the (single) parent run."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        exp_id = c.create_experiment(
            experiment, artifact_location=_artifact_location(uri, experiment)
        )
    else:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        exp_id = exp.experiment_id
    parent = find_parent_run(uri, exp_id, study)
    if parent is None:
        run = c.create_run(exp_id, run_name=study, tags={TAG_STUDY: study, TAG_KIND: "study"})
        parent_id = run.info.run_id
    else:
        parent_id = parent
        c.update_run(parent_id, status="RUNNING")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d, "study.yaml")
        p.write_text(yaml.safe_dump(dict(study_yaml), sort_keys=False))
        c.log_artifact(parent_id, str(p))
    return TrackingInfo(uri, exp_id, parent_id, study)


def find_parent_run(uri: str, experiment_id: str, study: str) -> str | None:
    runs = client(uri).search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_KIND}` = 'study'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=10,
    )
    runs = sorted(runs, key=lambda r: r.info.start_time or 0)
    return runs[0].info.run_id if runs else None


def find_trial_run(info: TrackingInfo, trial_id: str) -> str | None:
    runs = client(info.tracking_uri).search_runs(
        [info.experiment_id],
        filter_string=(
            f"tags.`{TAG_PARENT}` = '{info.parent_run_id}' and tags.`{TAG_TRIAL}` = '{trial_id}'"
        ),
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=10,
    )
    runs = sorted(runs, key=lambda r: r.info.start_time or 0)
    return runs[0].info.run_id if runs else None


def study_trial_runs(info: TrackingInfo, kind: str | None = None) -> list[Any]:
    """All nested runs of the study (optionally of one kind), as MLflow Run objects."""
    filt = f"tags.`{TAG_PARENT}` = '{info.parent_run_id}'"
    if kind:
        filt += f" and tags.`{TAG_KIND}` = '{kind}'"
    c = client(info.tracking_uri)
    out, token = [], None
    while True:
        page = c.search_runs(
            [info.experiment_id], filter_string=filt, max_results=1000, page_token=token
        )
        out.extend(page)
        token = page.token
        if not token:
            return out


def _environment_tags() -> dict[str, str]:
    """Where the trial runs: host, Ray node (id and IP), the GPU Ray gave it, torch version."""
    import ray
    import torch

    gpu = "none"
    if torch.cuda.is_available():
        try:
            gpu = torch.cuda.get_device_name(torch.cuda.current_device())
        except Exception:  # noqa: BLE001
            gpu = "unknown"
    tags = {
        names.TAG_HOSTNAME: socket.gethostname(),
        names.TAG_GPU_NAME: gpu,
        names.TAG_TORCH_VERSION: torch.__version__,
        # Ray sets it for every task: the GPU ids of the trial's share ("" without a GPU share)
        names.TAG_CUDA_VISIBLE: os.environ.get("CUDA_VISIBLE_DEVICES", "unset") or "none",
    }
    if ray.is_initialized():
        try:
            tags[names.TAG_NODE_ID] = ray.get_runtime_context().get_node_id()
            tags[names.TAG_NODE_IP] = ray.util.get_node_ip_address()
        except Exception:  # noqa: BLE001 - outside a Ray worker there is no node to name
            pass
    return tags


def _node_history(previous: str | None, node_id: str | None) -> str | None:
    """``zskt.nodes``: the nodes a trial ran on, in order (a retry after node loss adds one)."""
    nodes = [n for n in (previous or "").split(",") if n]
    if node_id and (not nodes or nodes[-1] != node_id):
        nodes.append(node_id)
    return ",".join(nodes) or None


class TrialRun:
    """The MLflow run of one trial; reopened by run id (or found by tags) when a trial resumes."""

    def __init__(self, info: TrackingInfo, run_id: str):
        self.info = info
        self.run_id = run_id
        self.client = client(info.tracking_uri)

    @classmethod
    def open(
        cls,
        info: TrackingInfo,
        kind: str,
        trial_id: str,
        params: Mapping[str, Any],
        config_id: str,
        device: str,
        run_id: str | None = None,
    ) -> TrialRun:
        c = client(info.tracking_uri)
        run_id = run_id or find_trial_run(info, trial_id)
        if run_id is None:
            run = _retry(
                c.create_run,
                info.experiment_id,
                run_name=f"{kind}-{trial_id}" if kind == "search" else trial_id,
                tags={
                    TAG_PARENT: info.parent_run_id,
                    TAG_STUDY: info.study,
                    TAG_KIND: kind,
                    TAG_TRIAL: trial_id,
                },
            )
            run_id = run.info.run_id
            existing: dict[str, str] = {}
            old_tags: dict[str, str] = {}
        else:
            _retry(c.update_run, run_id, status="RUNNING")
            data = c.get_run(run_id).data
            existing, old_tags = data.params, data.tags
        self = cls(info, run_id)
        env = _environment_tags()
        tags = {
            TAG_STUDY: info.study,
            TAG_KIND: kind,
            TAG_TRIAL: trial_id,
            TAG_CONFIG_ID: config_id,
            TAG_STATUS: "running",
            names.TAG_DEVICE: device,
            **env,
        }
        nodes = _node_history(old_tags.get(names.TAG_NODES), env.get(names.TAG_NODE_ID))
        if nodes:
            tags[names.TAG_NODES] = nodes
        new_params = [Param(k, _param_str(v)) for k, v in params.items() if k not in existing]
        for k, v in params.items():
            if k in existing and existing[k] != _param_str(v):
                log.warning(
                    "mlflow run %s: param %s was %s, now %s (kept)", run_id, k, existing[k], v
                )
        self._batch(params=new_params, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return self

    def _batch(
        self,
        metrics: Iterable[Metric] = (),
        params: Iterable[Param] = (),
        tags: Iterable[RunTag] = (),
    ) -> None:
        metrics, params, tags = list(metrics), list(params), list(tags)
        for i in range(0, max(len(metrics), len(params), len(tags), 1), 100):
            _retry(
                self.client.log_batch,
                self.run_id,
                metrics=metrics[i : i + 100],
                params=params[i : i + 100],
                tags=tags[i : i + 100],
            )

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        self._batch(
            metrics=[
                Metric(k, float(v), ts, int(step)) for k, v in metrics.items() if _is_number(v)
            ]
        )

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        _retry(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_json(self, obj: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d, Path(name).name)
            p.write_text(json.dumps(obj, indent=1))
            self.log_file(p, str(Path(name).parent) if Path(name).parent != Path(".") else None)

    def log_text(self, text: str, name: str) -> None:
        _retry(self.client.log_text, self.run_id, text, name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._batch(tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, status: str, reason: str = "") -> None:
        finish_run(self.info.tracking_uri, self.run_id, status, reason)


def finish_run(uri: str, run_id: str, status: str, reason: str = "") -> None:
    """Tag a trial run with its outcome and end it (FINISHED / KILLED / FAILED)."""
    c = client(uri)
    tags = [RunTag(TAG_STATUS, status)]
    if reason:
        tags.append(RunTag(TAG_REASON, reason[:4000]))
    _retry(c.log_batch, run_id, tags=tags)
    _retry(c.set_terminated, run_id, status=_END_STATUS[status])


def _param_str(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return json.dumps(list(v))
    return str(v)


def _is_number(v: Any) -> bool:
    return (
        isinstance(v, (int, float))
        and not isinstance(v, bool)
        and v == v
        and abs(v) != float("inf")
    )


class CloseTrialRuns(Callback):
    """Driver-side: end the MLflow run of every trial that Tune finishes, with the right status.

    A trial stopped by the scheduler is torn down before it can end its own run; one that raised
    may die before it can. This callback closes those runs (KILLED for pruned, FAILED for failed)
    and leaves alone runs the trial already ended itself.
    """

    def __init__(self, info: TrackingInfo):
        self.info = info

    def _close(self, trial: Any, error: bool) -> None:
        try:
            result = trial.last_result or {}
            status, reason = outcome(result, error)
            if error and getattr(trial, "error_file", None):
                try:
                    text = Path(trial.error_file).read_text().strip().splitlines()
                    reason = text[-1][:500] if text else reason
                except OSError:
                    pass
            run_id = result.get(names.RUN_ID) or find_trial_run(self.info, trial.trial_id)
            if run_id is None:
                return
            run = client(self.info.tracking_uri).get_run(run_id)
            if run.info.status != RunStatus.to_string(RunStatus.RUNNING) and not error:
                return  # the trial ended its own run
            if run.info.status == "FINISHED" and error:
                return
            finish_run(self.info.tracking_uri, run_id, status, reason)
        except Exception as exc:  # noqa: BLE001 - bookkeeping must not stop the experiment
            log.warning("mlflow: could not close the run of trial %s: %s", trial.trial_id, exc)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, error=True)


def close_leftovers(info: TrackingInfo, live_trial_ids: set[str], kind: str) -> list[str]:
    """After an experiment: runs of ``kind`` still RUNNING.

    A run of a trial Tune knows is ended with the trial's fate; a run of no known trial (a trial a
    killed driver started but never saved) is ended FAILED and deleted, so the experiment holds
    exactly one run per trial.
    """
    closed = []
    for run in study_trial_runs(info, kind):
        tid = run.data.tags.get(TAG_TRIAL, "")
        if tid not in live_trial_ids:
            if run.info.status == "RUNNING":
                finish_run(
                    info.tracking_uri,
                    run.info.run_id,
                    names.FAILED,
                    "orphaned: the driver stopped before the trial was saved",
                )
            client(info.tracking_uri).delete_run(run.info.run_id)
            closed.append(tid)
        elif run.info.status == "RUNNING":
            finish_run(
                info.tracking_uri,
                run.info.run_id,
                names.FAILED,
                "left running when the experiment ended",
            )
            closed.append(tid)
    return closed


def close_interrupted(info: TrackingInfo) -> list[str]:
    """End the runs of trials that were in flight when the study was interrupted.

    They end KILLED with ``zskt.status=interrupted``; resuming the study reopens each of them (the
    trial continues its own run), so none is left RUNNING in between and none is duplicated.
    """
    closed = []
    for run in study_trial_runs(info):
        if run.info.status == "RUNNING":
            finish_run(
                info.tracking_uri,
                run.info.run_id,
                names.INTERRUPTED,
                "the study was interrupted; `zskt study resume` continues this trial",
            )
            closed.append(run.data.tags.get(TAG_TRIAL, run.info.run_id))
    return closed


def finish_study(info: TrackingInfo, summary: Mapping[str, Any], status: str = "FINISHED") -> None:
    c = client(info.tracking_uri)
    metrics = {k: v for k, v in summary.items() if _is_number(v)}
    tags = {f"zskt.summary.{k}": v for k, v in summary.items() if not _is_number(v)}
    ts = int(time.time() * 1000)
    _retry(
        c.log_batch,
        info.parent_run_id,
        metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
        tags=[RunTag(k, str(v)[:4000]) for k, v in tags.items()],
    )
    _retry(c.set_terminated, info.parent_run_id, status=status)


def how_to_open(uri: str) -> str:
    """Where the store is and the command that shows it."""
    if uri.startswith("sqlite:///"):
        return f"MLflow store: {uri}\n  open it with: mlflow ui --backend-store-uri {uri}  (then http://127.0.0.1:5000)"
    return f"MLflow tracking server: {uri}\n  open it in a browser (or through `ray dashboard`-style port forwarding)"


def runtime_env_vars(uri: str) -> dict[str, str]:
    """Environment for Ray workers: the absolute tracking URI, never a cwd-relative default."""
    return {"MLFLOW_TRACKING_URI": uri}


def experiment_env_cleanup() -> None:
    """Forget a driver-side ``MLFLOW_EXPERIMENT_ID`` so it cannot leak into workers."""
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
