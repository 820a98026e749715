"""The one module that talks to MLflow.

Layout (the analysis layer reads exactly these names):

- experiment: the study's ``mlflow.experiment`` (default: the study name);
- one parent run per study (run name = study name, tags ``zskt.study``, ``zskt.kind=study``,
  artifact ``study.yaml``), found again by its tags when a study is re-run or resumed;
- one nested run per trial (``mlflow.parentRunId``), tags ``zskt.study``, ``zskt.kind`` (search /
  final / kdat), ``zskt.trial_id``, ``zskt.status`` (completed / pruned / failed),
  ``zskt.status_reason``, ``zskt.config_id``, ``zskt.device``, ``zskt.hostname``,
  ``zskt.gpu_name``, ``zskt.torch_version``, where it ran (``zskt.node_id``, ``zskt.node_ip``,
  ``zskt.nodes``: every node in order, ``zskt.cuda_visible_devices``: the GPU Ray assigned), the
  health verdict (``zskt.health``, ``zskt.health_reason``, ``zskt.health_iteration``), a failed
  audit (``zskt.audit``) and what ``cost_device_s`` counts (``zskt.cost_device``: :mod:`.watch`);
  params = the run's config fields; metrics over time
  with step = iteration; final metrics at the last iteration; artifacts ``images/``, ``mte/``,
  ``student/student.pt``, ``config.yaml``. Run status FINISHED / KILLED / FAILED for completed /
  pruned / failed; nothing is left RUNNING.

Every call goes through an explicit :class:`~mlflow.MlflowClient` built from the study's tracking
URI (:func:`client`), so trials on other machines write to the same store and nothing depends on
MLflow's global state or the working directory.

One retry policy covers every call, chosen by the kind of store:

- a database store (SQLite, or PostgreSQL/MySQL without a server in front): :data:`STORE_RETRY`,
  tenacity retrying what MLflow's SQL store reports as TEMPORARILY_UNAVAILABLE (SQLAlchemy's
  ``OperationalError``: SQLite's "database is locked" when several trials write one file and one
  of them holds the lock longer than the 20 s busy timeout MLflow gives SQLite). MLflow has no
  retry of its own there.
- a tracking server (``http(s)://``): the study's outage policy (:func:`outage_retry`). A server
  that does not answer (connection refused or reset, timeouts, 429 and 5xx through MLflow's own
  retries) is waited for: MLflow's HTTP retries try each request a few times over a few seconds
  (:data:`HTTP_RETRY_DEFAULTS`, unless the driver's environment sets :data:`HTTP_RETRY_ENV`; the
  driver's values go to every trial), and tenacity repeats the call with exponential backoff (1 s
  doubling to at most 30 s apart) until it succeeds or ``mlflow.max_outage_s`` (default 600 s)
  has passed since the first failure; then :class:`TrackingUnavailable` (one line) is raised.

What an outage does to a study, by design: a trial waits at its next MLflow call (its training
pauses; nothing is buffered, so a checkpoint never gets ahead of what the run holds) and goes on
when the server is back. Nothing is lost and no step is logged twice: a retried metric batch
carries the timestamps of its first try, and MLflow's store drops rows it already holds; a run is
created again only after looking for it (:meth:`TrialRun.open`); params are re-logged with their
values, tags and artifacts overwritten. A server away for longer than the limit makes the trial
fail with the one-line reason; Tune restarts it from its last checkpoint (``search.max_failures``
times) and it continues its own run, waiting again. MLflow's asynchronous logging is not used:
it would let a trial checkpoint past metrics still queued in its memory, which a trial killed
then would lose.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy.exc
import tenacity
import yaml
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE, ErrorCode
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from .. import names
from ..names import (
    KIND_STUDY,
    STUDY_FILE_ARTIFACT,
    TAG_CONFIG_ID,
    TAG_KIND,
    TAG_PARENT,
    TAG_REASON,
    TAG_STATUS,
    TAG_STUDY,
    TAG_SUMMARY_PREFIX,
    TAG_TRIAL,
)
from ..paths import runs_page, sqlite_path, url_scheme
from .auth import forwarded_auth_env
from .lock import sqlite_lock
from .results import outcome, parse_trial_label

log = logging.getLogger(__name__)


_END_STATUS = {
    names.COMPLETED: "FINISHED",
    names.PRUNED: "KILLED",
    names.FAILED: "FAILED",
    names.INTERRUPTED: "KILLED",
}


DEFAULT_MAX_OUTAGE_S = 600.0  # mlflow.max_outage_s: how long a tracking server is waited for


class TrackingUnavailable(RuntimeError):
    """The tracking server stayed unreachable past the study's limit (``mlflow.max_outage_s``)."""


@dataclasses.dataclass(frozen=True)
class TrackingInfo:
    """What a trial needs to find its study in MLflow (picklable, sent to workers)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    study: str
    searched: tuple[str, ...] = ()  # searched parameters, named in search runs' names
    run_tags: dict[str, str] = dataclasses.field(default_factory=dict)  # mlflow.run_tags
    max_outage_s: float = (
        DEFAULT_MAX_OUTAGE_S  # mlflow.max_outage_s: how long a server is waited for
    )

    def client(self) -> Any:
        """The client of the study's store, with the study's outage limit."""
        return client(self.tracking_uri, self.max_outage_s)


# ------------------------------------------------------------------ the client and its retries

# MLflow's HTTP retry settings for a tracking server; set in the driver's environment, they are
# sent to the trials too (runtime_env_vars).
HTTP_RETRY_ENV = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)
# What a study sets where the driver's environment does not: 3 retries per request, about 7 s
# (urllib3 waits 0, 2 and 4 s, plus MLflow's jitter of up to 1 s), so that the outage policy's
# limit, not MLflow's defaults (7 retries with factor 2: about 4 minutes per call), decides how
# long a study waits. MLflow's 120 s per request stays.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
_SERVER_SCHEMES = ("http", "https")


# SQLAlchemy's errors of a database that is busy now but not wrong: SQLite's "database is locked"
# (an OperationalError), a connection pool that had none free in time.
_PASSING = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.TimeoutError)


def _transient(e: BaseException) -> bool:
    """A database store's passing trouble, worth another try: what MLflow's SQL store reports as
    TEMPORARILY_UNAVAILABLE, or wraps from one of :data:`_PASSING`."""
    if isinstance(e, MlflowException):
        return e.error_code == ErrorCode.Name(TEMPORARILY_UNAVAILABLE) or isinstance(
            e.__cause__, _PASSING
        )
    return isinstance(e, _PASSING)


# The retry policy of a database store: 5 tries (each waits up to SQLite's busy timeout), 1, 2, 3
# and 4 s apart.
STORE_RETRY = tenacity.Retrying(
    retry=tenacity.retry_if_exception(_transient),
    stop=tenacity.stop_after_attempt(5),
    wait=tenacity.wait_incrementing(start=1, increment=1),
    before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
    reraise=True,
)


def _unreachable(e: BaseException) -> bool:
    """A tracking server that did not answer, or kept answering 429/5xx through MLflow's own
    retries: MLflow wraps requests' error into its own exception (as the cause or context)."""
    import requests

    passing = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.RetryError,
    )
    seen: BaseException | None = e
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, passing):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def outage_retry(uri: str, limit: float) -> tenacity.Retrying:
    """The outage policy of a tracking server (module doc): retried with backoff while it is
    unreachable, for ``limit`` seconds; then :class:`TrackingUnavailable`."""

    def waiting(state: tenacity.RetryCallState) -> None:
        log.warning(
            "tracking server %s unreachable for %.0f s (limit %g s); next try in %.0f s",
            uri,
            state.seconds_since_start,
            limit,
            state.upcoming_sleep,
        )

    def give_up(state: tenacity.RetryCallState) -> Any:
        error = state.outcome.exception() if state.outcome is not None else None
        cause = type(error.__context__ or error).__name__ if error is not None else "no answer"
        raise TrackingUnavailable(
            f"tracking server {uri} unreachable for {state.seconds_since_start:.0f} s, longer "
            f"than mlflow.max_outage_s={limit:g} ({cause})"
        ) from error

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(_unreachable),
        stop=tenacity.stop_after_delay(limit),
        wait=tenacity.wait_exponential(multiplier=1, min=1, max=30),
        before_sleep=waiting,
        retry_error_callback=give_up,
    )


class _RetryingClient:
    """An :class:`MlflowClient` whose every method follows the store's retry policy (module doc):
    reads (``get_run``, ``search_runs``, ...) as well as writes."""

    def __init__(self, uri: str, max_outage_s: float | None = None) -> None:
        self._client = MlflowClient(tracking_uri=uri)
        if url_scheme(uri) in _SERVER_SCHEMES:
            self.policy = outage_retry(uri, max_outage_s or DEFAULT_MAX_OUTAGE_S)
        else:
            self.policy = STORE_RETRY

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name.startswith("_") or not callable(attr):
            return attr
        return self.policy.wraps(attr)


def client(uri: str, max_outage_s: float | None = None) -> Any:
    """The MLflow client of a store: an :class:`MlflowClient` with the store's retry policy
    (a tracking server is waited for up to ``max_outage_s``, default
    :data:`DEFAULT_MAX_OUTAGE_S`)."""
    return _RetryingClient(uri, max_outage_s)


def _artifact_location(uri: str, experiment: str) -> str | None:
    """For a local sqlite store: artifacts beside the database (absolute), never in the cwd."""
    db = sqlite_path(uri)
    if db is not None:
        return (db.parent / "mlartifacts" / experiment).resolve().as_uri()
    return None


# ------------------------------------------------------------------ the study run


def setup_study(
    uri: str,
    experiment: str,
    study: str,
    study_yaml: Mapping[str, Any],
    searched: Iterable[str] = (),
    run_tags: Mapping[str, str] | None = None,
    max_outage_s: float = DEFAULT_MAX_OUTAGE_S,
) -> TrackingInfo:
    """On the driver, before any trial: create store, experiment and the (single) parent run,
    with the resolved study as its ``study.yaml``; ``searched`` parameters name the search runs;
    a tracking server is waited for up to ``max_outage_s`` at every call (module doc)."""
    # Two studies starting at once on one fresh sqlite file race on MLflow's schema creation (and
    # on a shared experiment): the store and the experiment are made under a lock beside the file.
    # A model-training experiment: MLflow 3's UI then opens its runs table, not GenAI traces.
    kind_tag = {names.TAG_EXPERIMENT_KIND: names.EXPERIMENT_KIND_TRAINING}
    with sqlite_lock(uri):
        c = client(uri, max_outage_s)  # (a new client creates or upgrades the schema)
        exp = c.get_experiment_by_name(experiment)
        if exp is None:
            exp_id = c.create_experiment(
                experiment, artifact_location=_artifact_location(uri, experiment), tags=kind_tag
            )
        else:
            if exp.lifecycle_stage == "deleted":
                c.restore_experiment(exp.experiment_id)
            exp_id = exp.experiment_id
            if exp.tags.get(names.TAG_EXPERIMENT_KIND) != names.EXPERIMENT_KIND_TRAINING:
                c.set_experiment_tag(
                    exp_id, names.TAG_EXPERIMENT_KIND, names.EXPERIMENT_KIND_TRAINING
                )
    parent = find_parent_run(uri, exp_id, study, max_outage_s)
    if parent is None:
        tags = {**(run_tags or {}), TAG_STUDY: study, TAG_KIND: KIND_STUDY}
        run = c.create_run(exp_id, run_name=study, tags=tags)
        parent_id = run.info.run_id
    else:
        parent_id = parent
        c.update_run(parent_id, status="RUNNING")
        if TAG_STATUS in c.get_run(parent_id).data.tags:  # a run that had failed is running again
            c.set_tag(parent_id, TAG_STATUS, names.RUNNING)
            c.set_tag(parent_id, TAG_REASON, "")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d, STUDY_FILE_ARTIFACT)
        p.write_text(yaml.safe_dump(dict(study_yaml), sort_keys=False))
        c.log_artifact(parent_id, str(p))
    for key, value in (run_tags or {}).items():
        c.set_tag(parent_id, key, value)
    info = TrackingInfo(
        uri, exp_id, parent_id, study, tuple(searched), dict(run_tags or {}), max_outage_s
    )
    _CURRENT[study] = info
    return info


# The tracking info each study has in this driver process (see CloseTrialRuns.current).
_CURRENT: dict[str, TrackingInfo] = {}


def find_parent_run(
    uri: str, experiment_id: str, study: str, max_outage_s: float | None = None
) -> str | None:
    runs = client(uri, max_outage_s).search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_KIND}` = '{KIND_STUDY}'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=10,
    )
    runs = sorted(runs, key=lambda r: r.info.start_time or 0)
    return runs[0].info.run_id if runs else None


def find_trial_run(info: TrackingInfo, trial_id: str) -> str | None:
    runs = info.client().search_runs(
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
    c = info.client()
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

    def __init__(self, info: TrackingInfo, run_id: str, logged: dict[str, set[int]] | None = None):
        self.info = info
        self.run_id = run_id
        self.client = info.client()
        # (metric, step) pairs the run already holds: a trial that resumes from a checkpoint older
        # than its last logged step computes those steps again, and they are not logged twice.
        self.logged: dict[str, set[int]] = logged or {}

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
        c = info.client()
        run_id = run_id or find_trial_run(info, trial_id)
        if run_id is None:
            run_id = _create_trial_run(info, kind, trial_id, params)
            existing: dict[str, str] = {}
            logged: dict[str, set[int]] = {}
            old_tags: dict[str, str] = {}
        else:
            c.update_run(run_id, status="RUNNING")
            data = c.get_run(run_id).data
            existing, old_tags = data.params, data.tags
            logged = {k: {m.step for m in c.get_metric_history(run_id, k)} for k in data.metrics}
        self = cls(info, run_id, logged)
        env = _environment_tags()
        tags = {
            **info.run_tags,
            TAG_STUDY: info.study,
            TAG_KIND: kind,
            TAG_TRIAL: trial_id,
            TAG_CONFIG_ID: config_id,
            TAG_STATUS: names.RUNNING,
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
            self.client.log_batch(
                self.run_id,
                metrics=metrics[i : i + 100],
                params=params[i : i + 100],
                tags=tags[i : i + 100],
            )

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log metrics at ``step``; a (metric, step) the run already holds is skipped."""
        ts = int(time.time() * 1000)
        step = int(step)
        batch = [
            Metric(k, float(v), ts, step)
            for k, v in metrics.items()
            if _is_number(v) and step not in self.logged.get(k, ())
        ]
        self._batch(metrics=batch)
        for m in batch:
            self.logged.setdefault(m.key, set()).add(step)

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_json(self, obj: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d, Path(name).name)
            p.write_text(json.dumps(obj, indent=1))
            self.log_file(p, str(Path(name).parent) if Path(name).parent != Path(".") else None)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._batch(tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, status: str, reason: str = "") -> None:
        finish_run(self.info.tracking_uri, self.run_id, status, reason, self.info.max_outage_s)


def _create_trial_run(
    info: TrackingInfo, kind: str, trial_id: str, params: Mapping[str, Any]
) -> str:
    """A trial's new run. Created once even when a tracking server's answer is lost: a try after
    a failed one looks for the run first (a server that created it and died before answering)."""
    c = info.client()
    tries = 0

    def find_or_create() -> str:
        nonlocal tries
        tries += 1
        found = find_trial_run(info, trial_id) if tries > 1 else None
        if found is not None:
            return found
        run = c._client.create_run(  # one try: the policy below retries the whole step
            info.experiment_id,
            run_name=run_name(kind, trial_id, params, getattr(info, "searched", ())),
            tags={
                TAG_PARENT: info.parent_run_id,
                TAG_STUDY: info.study,
                TAG_KIND: kind,
                TAG_TRIAL: trial_id,
            },
        )
        return run.info.run_id

    return c.policy(find_or_create)


@contextlib.contextmanager
def system_metrics(info: TrackingInfo, run_id: str, enabled: bool) -> Iterator[None]:
    """MLflow's own system metrics on a trial's run while the block runs, when ``enabled`` (the
    study's ``mlflow.system_metrics``): MLflow's monitor thread samples CPU, memory, disk and
    network (psutil; GPUs through nvidia-ml-py when it is installed) every 10 s
    (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``) and logs them as ``system/*``, continuing the
    steps of a resumed run."""
    if not enabled:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=info.tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (list, tuple)):
        return ",".join(_short(x) for x in v)
    return str(v)


def run_name(kind: str, trial_id: str, params: Mapping[str, Any], searched: Iterable[str]) -> str:
    """A run name that says what the run is: kind, trial (or rank and seed), searched values.

    ``search 3: n_s=6 beta=250``, ``final rank 0 seed 1: n_s=6 beta=250``, ``kdat M=200 seed 0``.
    """
    values = " ".join(f"{k}={_short(params[k])}" for k in searched if k in params)
    label = parse_trial_label(trial_id)
    if kind == names.KIND_FINAL and label is not None and label.kind == kind:
        head = f"{kind} rank {label.rank} seed {label.seed}"
    elif kind == names.KIND_KDAT:
        per_class = params.get("m_per_class")
        shots = "full data" if per_class in (-1, "-1") else f"M={per_class}"
        return f"kdat {shots} seed {params.get('seed', '?')}"
    elif kind == names.KIND_SEARCH:
        n = re.search(r"_(\d+)$", trial_id)
        head = f"search {int(n.group(1)) if n else trial_id}"
    else:
        head = f"{kind} {trial_id}"
    return f"{head}: {values}" if values else head


def finish_run(
    uri: str, run_id: str, status: str, reason: str = "", max_outage_s: float | None = None
) -> None:
    """Tag a trial run with its outcome and end it (FINISHED / KILLED / FAILED)."""
    c = client(uri, max_outage_s)
    tags = [RunTag(TAG_STATUS, status)]
    if reason:
        tags.append(RunTag(TAG_REASON, reason[:4000]))
    c.log_batch(run_id, tags=tags)
    c.set_terminated(run_id, status=_END_STATUS[status])


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

    def __init__(self, info: TrackingInfo, experiment: str = ""):
        self.info = info
        self.experiment = experiment

    @property
    def current(self) -> TrackingInfo:
        """This driver's tracking info for the study. ``Tuner.restore`` unpickles the callback
        with the info of the driver that created it, whose MLflow server may be gone (a Slurm
        job resumed on another head node)."""
        return _CURRENT.get(self.info.study, self.info)

    def _close(self, trial: Any, error: bool) -> None:
        status = ""
        try:
            _close_run(self.current, trial, error)
            status, _ = outcome(trial.last_result or {}, error)
        finally:
            _test_kill_hook(self.experiment, status)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, error=True)


KILL_HOOK_ENV = "ZSKT_TEST_KILL_DRIVER_AFTER"


def _test_kill_hook(experiment: str, status: str) -> None:
    """Test hook: ``ZSKT_TEST_KILL_DRIVER_AFTER=<experiment>:<status>`` (e.g. ``search:pruned``)
    SIGKILLs the driver (and its process group when it leads one: the local Ray it started) right
    after Optuna and MLflow recorded such a trial, before Tune's next experiment-state save."""
    want = os.environ.get(KILL_HOOK_ENV)
    if not want or want != f"{experiment}:{status}":
        return
    import signal

    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _close_run(info: TrackingInfo, trial: Any, error: bool) -> None:
    """End the MLflow run of a trial Tune has finished (see :class:`CloseTrialRuns`)."""
    try:
        result = trial.last_result or {}
        status, reason = outcome(result, error)
        if error and getattr(trial, "error_file", None):
            try:
                text = Path(trial.error_file).read_text().strip().splitlines()
                reason = text[-1][:500] if text else reason
            except OSError:
                pass
        run_id = result.get(names.RUN_ID) or find_trial_run(info, trial.trial_id)
        if run_id is None:
            return
        run = info.client().get_run(run_id)
        if run.info.status != RunStatus.to_string(RunStatus.RUNNING) and not error:
            return  # the trial ended its own run
        if run.info.status == "FINISHED" and error:
            return
        finish_run(info.tracking_uri, run_id, status, reason, info.max_outage_s)
    except Exception as exc:  # noqa: BLE001 - bookkeeping must not stop the experiment
        log.warning("mlflow: could not close the run of trial %s: %s", trial.trial_id, exc)


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
                    info.max_outage_s,
                )
            info.client().delete_run(run.info.run_id)
            closed.append(tid)
        elif run.info.status == "RUNNING":
            finish_run(
                info.tracking_uri,
                run.info.run_id,
                names.FAILED,
                "left running when the experiment ended",
                info.max_outage_s,
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
                info.max_outage_s,
            )
            closed.append(run.data.tags.get(TAG_TRIAL, run.info.run_id))
    return closed


_ENDED = (names.COMPLETED, names.PRUNED, names.FAILED)


def ended_results(info: TrackingInfo, kind: str) -> dict[str, dict[str, Any]]:
    """Trial id -> last result of every run of ``kind`` that has ended for good.

    Ended means completed, pruned or failed and no longer RUNNING (an *interrupted* run is not
    ended: resuming continues it). The result is what the trial reported last: its latest metrics,
    the iteration it reached, its budget, run id, status and reason; a resumed experiment reports
    it again instead of training the trial again.
    """
    c = info.client()
    out: dict[str, dict[str, Any]] = {}
    for run in study_trial_runs(info, kind):
        tags = run.data.tags
        status = tags.get(TAG_STATUS)
        if run.info.status == "RUNNING" or status not in _ENDED:
            continue
        metrics = dict(run.data.metrics)
        if "iterations_done" in metrics:
            iteration = int(metrics["iterations_done"])
        elif kind == names.KIND_KDAT:
            iteration = 1
        else:
            key = names.VAL_ACC if names.VAL_ACC in metrics else next(iter(metrics), None)
            hist = c.get_metric_history(run.info.run_id, key) if key else []
            iteration = max((m.step for m in hist), default=0)
        budget = run.data.params.get(names.BUDGET)
        out[tags.get(TAG_TRIAL, "")] = {
            **metrics,
            names.ITERATION: iteration,
            names.BUDGET: int(budget) if budget and budget.isdigit() else 1,
            names.RUN_ID: run.info.run_id,
            names.STATUS: status,
            names.REASON: tags.get(TAG_REASON, ""),
        }
    return out


def fail_study(info: TrackingInfo, reason: str) -> None:
    """End the study's parent run FAILED with the reason (a run that stopped on an error)."""
    c = info.client()
    c.log_batch(
        info.parent_run_id,
        tags=[RunTag(TAG_STATUS, names.FAILED), RunTag(TAG_REASON, reason[:4000])],
    )
    c.set_terminated(info.parent_run_id, status="FAILED")


def finish_study(info: TrackingInfo, summary: Mapping[str, Any], status: str = "FINISHED") -> None:
    c = info.client()
    metrics = {k: v for k, v in summary.items() if _is_number(v)}
    tags = {f"{TAG_SUMMARY_PREFIX}{k}": v for k, v in summary.items() if not _is_number(v)}
    tags[TAG_STATUS] = names.COMPLETED if status == "FINISHED" else names.INTERRUPTED
    ts = int(time.time() * 1000)
    c.log_batch(
        info.parent_run_id,
        metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
        tags=[RunTag(k, str(v)[:4000]) for k, v in tags.items()],
    )
    c.set_terminated(info.parent_run_id, status=status)


def how_to_open(uri: str, experiment_id: str | None = None) -> str:
    """Where the store is, the command that shows it and the direct link to the study's runs."""
    if sqlite_path(uri) is not None:
        page = (
            runs_page("http://127.0.0.1:5000", experiment_id)
            if experiment_id
            else "http://127.0.0.1:5000"
        )
        return f"MLflow store: {uri}\n  open it with: mlflow ui --backend-store-uri {uri}  (then {page})"
    if experiment_id and url_scheme(uri) in _SERVER_SCHEMES:
        return f"MLflow tracking server: {uri}\n  the study's runs: {runs_page(uri, experiment_id)}"
    return f"MLflow tracking server: {uri}\n  open it in a browser (or through `ray dashboard`-style port forwarding)"


def runtime_env_vars(uri: str) -> dict[str, str]:
    """Environment for Ray workers: the absolute tracking URI, never a cwd-relative default; for a
    tracking server, the HTTP retry settings (the driver's, else :data:`HTTP_RETRY_DEFAULTS`); and,
    when the driver authenticates with a credentials file, that file's path and the plugin that
    reads it (:mod:`.auth`; never a password: Ray's runtime environment is shown by its
    dashboard)."""
    return {"MLFLOW_TRACKING_URI": uri, **http_retry_env(uri), **forwarded_auth_env()}


def http_retry_env(uri: str | None = None) -> dict[str, str]:
    """The MLflow HTTP retry settings (:data:`HTTP_RETRY_ENV`) the driver's environment sets, and
    for a tracking server ``uri`` the study's defaults for those it does not set."""
    declared = {k: os.environ[k] for k in HTTP_RETRY_ENV if os.environ.get(k)}
    if uri is not None and url_scheme(uri) in _SERVER_SCHEMES:
        return {**HTTP_RETRY_DEFAULTS, **declared}
    return declared


def use_http_retry_defaults(uri: str) -> None:
    """In the driver: the study's MLflow HTTP retry settings for a tracking server where the
    environment sets none (MLflow reads them at each request)."""
    if url_scheme(uri) in _SERVER_SCHEMES:
        for key, value in HTTP_RETRY_DEFAULTS.items():
            os.environ.setdefault(key, value)


def experiment_env_cleanup() -> None:
    """Forget a driver-side ``MLFLOW_EXPERIMENT_ID`` so it cannot leak into workers."""
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
