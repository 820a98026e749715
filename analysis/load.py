"""Read a study's stored runs (MLflow, and the Optuna study if there is one) into the runs table.

Nothing here trains or talks to Ray. The MLflow layout read here is the study system's contract:
a parent run per study (tags ``zskt.study``, ``zskt.kind=study``, artifact ``study.yaml``) and one
nested child run per trial (tags ``zskt.kind`` in search/ablation/final/kdat, ``zskt.trial_id``,
``zskt.status``, ``zskt.status_reason``, ``zskt.config_id``, an ablation run's ``zskt.cell`` and
``zskt.cell_label``, hardware tags; params are the config
fields; metrics per iteration; artifacts ``images/pseudo_iter<it>.png``,
``mte/transition_curves.json``).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import sys
import tempfile
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm import tqdm

from ..config import DistillConfig, KDATConfig
from ..names import (
    ATTR_RUN_ID,
    ATTR_TUNE_ID,
    COMPLETED,
    COST_DEVICE_S,
    FAILED,
    KIND_FINAL,
    KIND_KDAT,
    KIND_SEARCH,
    KIND_STUDY,
    MINIMISED,
    PRUNED,
    RUNNING,
    SECTION_ABLATION,
    STUDY_FILE_ARTIFACT,
    TAG_AUDIT,
    TAG_CELL,
    TAG_CELL_LABEL,
    TAG_CONFIG_ID,
    TAG_COST_DEVICE,
    TAG_DEVICE,
    TAG_GPU_NAME,
    TAG_HEALTH,
    TAG_HEALTH_ITERATION,
    TAG_HEALTH_REASON,
    TAG_HOSTNAME,
    TAG_KIND,
    TAG_PARENT,
    TAG_REASON,
    TAG_STATUS,
    TAG_STUDY,
    TAG_TORCH_VERSION,
    TAG_TRIAL,
    TRIAL_KINDS,
    VAL_ACC,
)
from ..paths import default_tracking_uri, journal_path, sqlite_path, sqlite_url, url_scheme
from ..study.results import final_rank
from ..utils import first_line
from . import schema

KINDS = TRIAL_KINDS
_STATUS_FROM_MLFLOW = {"FINISHED": COMPLETED, "KILLED": PRUNED, "FAILED": FAILED}


class AnalysisError(ValueError):
    """A one-line problem finding or reading a study's runs."""


# ------------------------------------------------------------------ which study


@dataclass(frozen=True)
class StudyRef:
    """Where a study's runs live."""

    name: str | None  # study name (tag zskt.study); None: every study in the experiment
    tracking_uri: str
    experiment: str
    optuna_storage: str | None = None  # SQLAlchemy URL of the Optuna storage
    source: str = ""  # the study file, when given


def resolve_study(
    study_file: str | Path | None = None,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    study_name: str | None = None,
    optuna_storage: str | None = None,
    smoke: bool = False,
) -> StudyRef:
    """A :class:`StudyRef` from a study file, or from an experiment name (+ tracking URI).

    Study files are read with ``zskt_ray.study.spec.load_spec`` when it is importable and
    accepts the file (so defaults are resolved exactly as the study system does), else parsed
    minimally for ``name``, ``mlflow.tracking_uri``, ``mlflow.experiment`` and ``storage``.
    Explicit arguments override what the file says. ``smoke``: the study's quick version, as
    ``zskt study run --smoke`` names it (``<name>-smoke``).
    """
    if study_file is None:
        if not experiment:
            raise AnalysisError("give a study file or an MLflow experiment name")
        return StudyRef(
            study_name,
            _absolute_sqlite(tracking_uri or default_tracking_uri()),
            experiment,
            optuna_storage,
        )
    info = _study_file_info(Path(study_file), smoke)
    return StudyRef(
        study_name or info["name"],
        _absolute_sqlite(tracking_uri or info["tracking_uri"]),
        experiment or info["experiment"],
        optuna_storage or info["optuna_storage"],
        str(Path(study_file).resolve()),
    )


def _study_file_info(path: Path, smoke: bool = False) -> dict[str, str]:
    """``name``, ``tracking_uri``, ``experiment``, ``optuna_storage`` of a study file, resolved by
    the study layer exactly as a run resolves them (also for a file today's checks refuse: its
    stored runs can still be read)."""
    from ..study.spec import StudyError, load_spec, locations, read_study_file

    try:
        spec = load_spec(path, smoke=smoke)
        return {
            "name": spec.name,
            "tracking_uri": spec.tracking_uri,
            "experiment": spec.experiment,
            "optuna_storage": spec.optuna_storage,
        }
    except StudyError as e:
        try:
            found = locations(read_study_file(path), smoke=smoke)
        except StudyError:
            raise AnalysisError(first_line(e)) from None
    if not found["name"]:
        raise AnalysisError(f"{path}: a study file needs a top-level `name`")
    return found  # type: ignore[return-value]


def _absolute_sqlite(uri: str) -> str:
    """``sqlite:///rel.db`` -> ``sqlite:////abs/rel.db`` (MLflow would resolve it against the cwd)."""
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute():
        return sqlite_url(path.expanduser().resolve())
    if url_scheme(uri) is None:  # a plain path to a database file
        return sqlite_url(Path(uri).expanduser().resolve())
    return uri


# ------------------------------------------------------------------ loaded study


@dataclass
class StudyData:
    """Everything the tables and the report read: the runs table plus handles for more."""

    ref: StudyRef
    runs: pd.DataFrame  # the runs table (analysis.schema)
    spec: dict[str, Any]  # the resolved study (parent run's study.yaml), {} when absent
    parent_run_id: str | None
    objective: str  # the search objective (of a multi-objective study: its first)
    mode: str
    searched: list[str]  # searched parameter names
    log_scale: dict[str, bool]  # searched parameter -> sampled on a log scale
    optuna_study: Any = None  # optuna.Study or None
    optuna_note: str = ""  # why there is no Optuna study, when there is none
    client: Any = None  # mlflow.MlflowClient
    # Histories loaded in bulk: ``run_id``, ``key``, ``step``, ``value`` (the objective and
    # val_acc of every trial run, by step).
    histories: pd.DataFrame = field(default_factory=lambda: empty_histories())
    rungs: list[int] = field(default_factory=list)  # ASHA rungs (iterations), below the budget
    budget: int | None = None  # the search trials' full budget (loop.iterations)
    # Every objective of the search, (metric, mode) in the study file's order: one, or several
    # for a multi-objective study (search.objectives).
    objectives: list[tuple[str, str]] = field(default_factory=list)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # ---- lazy reads of MLflow data the runs table does not hold

    def metric_history(self, run_id: str, key: str = "val_acc") -> pd.DataFrame:
        """``step`` / ``value`` of one metric of one run, by step (from the bulk load if there)."""
        ck = f"hist:{run_id}:{key}"
        if ck not in self._cache:
            h = self.histories
            if key in self._cache.get("_bulk_keys", ()):
                sel = h[(h["run_id"] == run_id) & (h["key"] == key)]
                df = sel[["step", "value"]]
            else:
                hist = self.client.get_metric_history(run_id, key)
                df = pd.DataFrame(
                    {"step": [m.step for m in hist], "value": [m.value for m in hist]}
                )
            self._cache[ck] = df.sort_values("step", kind="stable").reset_index(drop=True)
        return self._cache[ck]

    def list_artifacts(self, run_id: str, path: str) -> list[str]:
        try:
            return sorted(a.path for a in self.client.list_artifacts(run_id, path) if not a.is_dir)
        except Exception:  # noqa: BLE001 - a missing artifact folder is "no artifacts"
            return []

    def download(self, run_id: str, path: str) -> Path | None:
        """Local copy of an artifact file, or None when the run has no such artifact."""
        ck = f"art:{run_id}:{path}"
        if ck not in self._cache:
            dst = (
                Path(self._cache.setdefault("_tmp", tempfile.mkdtemp(prefix="zskt-report-")))
                / run_id
            )
            dst.mkdir(parents=True, exist_ok=True)
            try:
                self._cache[ck] = Path(self.client.download_artifacts(run_id, path, str(dst)))
            except Exception:  # noqa: BLE001
                self._cache[ck] = None
        return self._cache[ck]

    def transition_curves(self, run_id: str) -> dict[str, Any] | None:
        p = self.download(run_id, "mte/transition_curves.json")
        if p is None or not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except ValueError:
            return None


def load_study(ref: StudyRef, with_optuna: bool = True, progress: bool | None = None) -> StudyData:
    """Read a study's runs from MLflow (and its Optuna study) into a :class:`StudyData`.

    Runs, params, tags and last metric values come from ``search_runs`` pages (1,000 runs per
    call); the histories of the objective (and ``val_acc``) come in bulk (:func:`bulk_histories`);
    artifacts are downloaded only when a figure needs them. ``progress``: show a progress bar
    on stderr (default: when stderr is a terminal).
    """
    from mlflow import MlflowClient

    path = sqlite_path(ref.tracking_uri)
    if path is not None and not path.is_file():
        raise AnalysisError(f"no MLflow database at {path} (tracking URI {ref.tracking_uri})")
    client = MlflowClient(tracking_uri=ref.tracking_uri)
    exp_id = _experiment_id(client, ref)
    with _progress(progress, f"runs of {ref.experiment}", "runs") as bar:
        all_runs = _search_all(client, exp_id, ref.name, bar)
        name = _study_name(ref, all_runs, lambda: _search_all(client, exp_id, None, bar))
        runs = [r for r in all_runs if r.data.tags.get(TAG_STUDY) == name]
        data = _study_data(dataclasses.replace(ref, name=name), runs, client)
        children = [r for r in runs if r.data.tags.get(TAG_KIND) in KINDS]
        _load_histories(data, children, bar)
    reached = _reached(data.histories, data.objective)
    rows = [_row(r, data, reached) for r in children]
    df = schema.conform(pd.DataFrame(rows)) if rows else schema.empty_frame()
    if with_optuna:
        _read_optuna(data)
    else:
        data.optuna_note = "Optuna study not read (--no-optuna)"
    if data.optuna_study is not None:
        df = _join_optuna(df, data.optuna_study)
    if not data.searched and not data.spec.get(SECTION_ABLATION):  # an ablation searches nothing
        data.searched = _infer_searched(df, data.optuna_study)
    data.runs = df
    data.budget, data.rungs = _budget_and_rungs(data)
    return data


def _experiment_id(client: Any, ref: StudyRef) -> str:
    exp = client.get_experiment_by_name(ref.experiment)
    if exp is None:
        known = sorted(e.name for e in client.search_experiments())
        raise AnalysisError(
            f"no MLflow experiment {ref.experiment!r} at {ref.tracking_uri} (known: {', '.join(known) or 'none'})"
        )
    return exp.experiment_id


def _study_name(ref: StudyRef, runs: list[Any], every_run: Callable[[], list[Any]]) -> str:
    """The study ``ref`` names, or the one study its experiment holds; ``every_run`` lists the
    experiment's runs of all studies (for the error when the named study has none)."""
    studies = sorted({r.data.tags.get(TAG_STUDY) for r in runs} - {None})
    name = ref.name
    if name is not None:
        if name not in studies:
            studies = sorted({r.data.tags.get(TAG_STUDY) for r in every_run()} - {None})
            raise AnalysisError(
                f"experiment {ref.experiment!r} holds no runs of study {name!r} (studies there: {', '.join(studies) or 'none'})"
            )
        return name
    if len(studies) == 1:
        return studies[0]
    if ref.experiment in studies:
        return ref.experiment
    if not studies:
        raise AnalysisError(
            f"experiment {ref.experiment!r} holds no zskt study runs (tag zskt.study)"
        )
    raise AnalysisError(
        f"experiment {ref.experiment!r} holds several studies ({', '.join(studies)}); name one"
    )


def _study_data(ref: StudyRef, runs: list[Any], client: Any) -> StudyData:
    """The study's parent run, its study.yaml and what that says (objective, searched space)."""
    parents = sorted(
        (r for r in runs if r.data.tags.get(TAG_KIND) == KIND_STUDY),
        key=lambda r: r.info.start_time or 0,
    )
    parent = parents[-1] if parents else None
    data = StudyData(
        ref=ref,
        runs=schema.empty_frame(),
        spec={},
        parent_run_id=parent.info.run_id if parent else None,
        objective=VAL_ACC,
        mode="max",
        searched=[],
        log_scale={},
        client=client,
    )
    if parent is not None:
        p = data.download(parent.info.run_id, STUDY_FILE_ARTIFACT)
        if p is not None and p.is_file():
            loaded = yaml.safe_load(p.read_text())
            data.spec = loaded if isinstance(loaded, dict) else {}
    search_spec = data.spec.get("search") or {}
    data.objectives = _objectives(search_spec.get("objectives") or [search_spec])
    data.objective, data.mode = data.objectives[0]
    space = search_spec.get("space") or {}
    data.searched = list(space)
    data.log_scale = {k: bool(isinstance(v, dict) and v.get("log")) for k, v in space.items()}
    return data


def _objectives(listed: list[Any]) -> list[tuple[str, str]]:
    """(metric, mode) of each objective study.yaml lists (the mode derived where it is absent)."""
    out = []
    for o in listed:
        metric = str((o or {}).get("metric") or VAL_ACC)
        out.append(
            (metric, str((o or {}).get("mode") or ("min" if metric in MINIMISED else "max")))
        )
    return out


def _load_histories(data: StudyData, children: list[Any], bar: tqdm) -> None:
    """The objective's, val_acc's and cost_device_s's histories of every trial run (not KD+AT:
    one point)."""
    keys = list(dict.fromkeys((data.objective, VAL_ACC, COST_DEVICE_S)))
    hist_ids = [r.info.run_id for r in children if r.data.tags.get(TAG_KIND) != KIND_KDAT]
    bar.reset(total=len(hist_ids) * len(keys))
    bar.set_description(f"metric histories of {data.ref.experiment}")
    bar.unit = "histories"
    data.histories = bulk_histories(data.client, hist_ids, keys, bar)
    data._cache["_bulk_keys"] = tuple(keys)


def _read_optuna(data: StudyData) -> None:
    """The Optuna study: from the given storage first, then the one study.yaml records."""
    candidates = [data.ref.optuna_storage, (data.spec.get("storage") or {}).get("optuna")]
    notes = []
    for storage in dict.fromkeys(c for c in candidates if c):
        data.optuna_study, note = load_optuna_study(storage, str(data.ref.name))
        if data.optuna_study is not None:
            data.optuna_note = ""
            return
        notes.append(note)
    data.optuna_note = "; ".join(notes) or "no Optuna storage known for this study"


def load_studies(
    refs: list[StudyRef], with_optuna: bool = True, progress: bool | None = None
) -> list[StudyData]:
    """Several studies (for tables across teacher-student pairs and data sets)."""
    out = [load_study(r, with_optuna=with_optuna, progress=progress) for r in refs]
    seen: dict[tuple[str, str, str | None], None] = {}
    for d in out:
        key = (d.ref.tracking_uri, d.ref.experiment, d.ref.name)
        if key in seen:
            raise AnalysisError(
                f"study {d.ref.name!r} of experiment {d.ref.experiment!r} is given twice"
            )
        seen[key] = None
    return out


def load_runs(ref: StudyRef, with_optuna: bool = True) -> pd.DataFrame:
    """Just the runs table of a study (see :mod:`analysis.schema`)."""
    return load_study(ref, with_optuna=with_optuna).runs


def _search_all(client: Any, experiment_id: str, study: str | None, bar: Any) -> list[Any]:
    """Every run of the experiment (of one study when named), 1,000 per ``search_runs`` call."""
    filt = f"tags.`{TAG_STUDY}` = '{study}'" if study and "'" not in study else ""
    out, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filt, max_results=1000, page_token=token
        )
        out.extend(page)
        bar.update(len(page))
        token = page.token
        if not token:
            return out


def _progress(enabled: bool | None, desc: str, unit: str) -> tqdm:
    """A progress bar on stderr (default: when stderr is a terminal); disabled, it shows nothing."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(
        desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True, disable=not enabled
    )


def empty_histories() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": pd.Series(dtype=object),
            "key": pd.Series(dtype=object),
            "step": pd.Series(dtype="int64"),
            "value": pd.Series(dtype="float64"),
        }
    )


# Bulk histories read through MLflow internals. MlflowClient has no public call that reads the
# histories of many runs at once: a database store's ``get_metric_history_bulk`` is reached
# through the client's private ``_tracking_client.store``, and a tracking server's
# ``get-history-bulk`` endpoint (the one MLflow's UI calls) through ``mlflow.utils.rest_utils``.
# tests/test_mlflow_internals.py fails, naming what is gone, when an MLflow version drops one of
# them (bulk_histories would then read run by run: the same values, far slower).
HISTORY_BULK_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
_BULK_RUNS_SQL = 500  # runs per query on a database store
_BULK_RUNS_REST = 100  # the server's cap on run ids per get-history-bulk request
_REST_MAX = 25_000  # the server's cap on points per get-history-bulk request
HistoryRows = list[tuple[str, str, int, float]]


def history_reader(client: Any) -> str:
    """How :func:`bulk_histories` reads this client's store: ``"database"`` (one query per metric
    and 500 runs), ``"server"`` (one request per metric and 100 runs) or ``"per-run"``."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if hasattr(store, "get_metric_history_bulk") and hasattr(store, "ManagedSessionMaker"):
        return "database"
    if hasattr(store, "get_host_creds"):
        return "server"
    return "per-run"


def bulk_histories(
    client: Any, run_ids: list[str], keys: list[str], bar: tqdm | None = None
) -> pd.DataFrame:
    """``run_id``, ``key``, ``step``, ``value`` of the metrics ``keys`` of many runs, in bulk.

    A database store (SQLite, PostgreSQL, ...) answers one query per metric and 500 runs
    (MLflow's ``SqlAlchemyStore.get_metric_history_bulk``); a tracking server one request per
    metric and 100 runs (its ``metrics/get-history-bulk`` endpoint, the same query; runs of a
    request that reaches the server's 25,000-point cap are read one by one); any other store, one
    call per run and metric. Values are sorted by run and step.
    """
    bar = tqdm(disable=True) if bar is None else bar
    read, size = {
        "database": (_database_chunk, _BULK_RUNS_SQL),
        "server": (_server_chunk, _BULK_RUNS_REST),
        "per-run": (_per_run_chunk, 1),
    }[history_reader(client)]
    rows: HistoryRows = []
    for key in keys:
        for i in range(0, len(run_ids), size):
            chunk = run_ids[i : i + size]
            rows += read(client, chunk, key)
            bar.update(len(chunk))
    if not rows:
        return empty_histories()
    df = pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])
    df["step"] = df["step"].astype("int64")
    return df.sort_values(["run_id", "key", "step"], kind="stable").reset_index(drop=True)


def _database_chunk(client: Any, run_ids: list[str], key: str) -> HistoryRows:
    store = client._tracking_client.store
    got = store.get_metric_history_bulk(run_ids, key, max_results=10**9)
    return [(m.run_id, key, int(m.step), float(m.value)) for m in got]


def _server_chunk(client: Any, run_ids: list[str], key: str) -> HistoryRows:
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    resp = http_request(
        client._tracking_client.store.get_host_creds(),
        HISTORY_BULK_ENDPOINT,
        "GET",
        params={"run_id": run_ids, "metric_key": key, "max_results": _REST_MAX},
    )
    verify_rest_response(resp, HISTORY_BULK_ENDPOINT)
    got = resp.json().get("metrics", [])
    if len(got) >= _REST_MAX:  # the server's cap: read these runs one by one
        return _per_run_chunk(client, run_ids, key)
    return [(m["run_id"], key, int(m.get("step", 0)), float(m["value"])) for m in got]


def _per_run_chunk(client: Any, run_ids: list[str], key: str) -> HistoryRows:
    return [row for rid in run_ids for row in _history_rows(client, rid, key)]


def _history_rows(client: Any, run_id: str, key: str) -> HistoryRows:
    return [
        (run_id, key, int(m.step), float(m.value)) for m in client.get_metric_history(run_id, key)
    ]


def _reached(histories: pd.DataFrame, key: str) -> dict[str, int]:
    """Last step of ``key`` per run."""
    h = histories[histories["key"] == key]
    return {str(k): int(v) for k, v in h.groupby("run_id")["step"].max().items()}


def _budget_and_rungs(data: StudyData) -> tuple[int | None, list[int]]:
    """The search budget and the ASHA rungs below it (iterations), from study.yaml.

    Ray's ASHA puts its rungs at ``grace_period * reduction_factor**k`` below ``max_t`` (the
    loop's ``iterations``). Without study.yaml they are read from the runs: the iterations at
    which pruned trials stopped.
    """
    search = data.runs[data.runs["kind"] == KIND_SEARCH]
    loop = data.spec.get("loop") if isinstance(data.spec.get("loop"), dict) else {}
    budget = loop.get("iterations")
    if budget is None and len(search):
        its = search["iterations"].dropna()
        budget = int(its.max()) if len(its) else None
    sched = (data.spec.get("search") or {}).get("scheduler") or {}
    rungs: list[int] = []
    if data.spec and sched.get("type", "asha") == "asha" and sched.get("grace_period"):
        grace, rf = float(sched["grace_period"]), float(sched.get("reduction_factor") or 3.0)
        r = grace
        while budget is None or r < budget:
            rungs.append(int(round(r)))
            r *= rf
            if rf <= 1 or len(rungs) > 64:
                break
    elif sched.get("type") != "none":  # no study.yaml (or no scheduler in it): from the runs
        pruned = search[search["status"] == PRUNED]["iterations_reached"].dropna()
        rungs = sorted({int(v) for v in pruned if budget is None or v < budget})
    return (int(budget) if budget is not None else None), rungs


# ------------------------------------------------------------------ one row per run


_DISTILL_TYPES = typing.get_type_hints(DistillConfig)
_KDAT_TYPES = typing.get_type_hints(KDATConfig)


def _row(run: Any, data: StudyData, reached_steps: dict[str, int]) -> dict[str, Any]:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    kind = tags.get(TAG_KIND)
    types = _KDAT_TYPES if kind == KIND_KDAT else _DISTILL_TYPES
    mlflow_status = run.info.status
    status = tags.get(TAG_STATUS) or _STATUS_FROM_MLFLOW.get(mlflow_status, RUNNING)
    trial_id = tags.get(TAG_TRIAL)
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "parent_run_id": tags.get(TAG_PARENT),
        "experiment_id": run.info.experiment_id,
        "run_name": run.info.run_name,
        "study": tags.get(TAG_STUDY),
        "kind": kind,
        "trial_id": trial_id,
        "config_id": tags.get(TAG_CONFIG_ID),
        "cell": tags.get(TAG_CELL),
        "cell_label": tags.get(TAG_CELL_LABEL),
        "status": status,
        "status_reason": tags.get(TAG_REASON) or None,
        "mlflow_status": mlflow_status,
        "final_rank": final_rank(trial_id) if kind == KIND_FINAL else None,
        "hw_device": tags.get(TAG_DEVICE),
        "hw_gpu_name": tags.get(TAG_GPU_NAME),
        "hw_hostname": tags.get(TAG_HOSTNAME),
        "hw_torch_version": tags.get(TAG_TORCH_VERSION),
        "start_time": pd.Timestamp(run.info.start_time, unit="ms", tz="UTC")
        if run.info.start_time
        else None,
        "end_time": pd.Timestamp(run.info.end_time, unit="ms", tz="UTC")
        if run.info.end_time
        else None,
    }
    extra = {}
    for key, raw in params.items():
        if key in types:
            row[key] = _typed(raw, types[key])
        else:
            extra[key] = raw
    row["extra_params"] = json.dumps(extra, sort_keys=True) if extra else None
    for key in (*schema.FINAL_FLOAT_METRICS, *schema.CURVE_METRICS):
        row[key] = metrics.get(key)
    for key in schema.FINAL_INT_METRICS:
        row[key] = int(round(metrics[key])) if key in metrics else None
    row["objective"] = metrics.get(data.objective)
    reached = row["iterations_done"]
    if reached is None and kind != KIND_KDAT:
        reached = reached_steps.get(run.info.run_id)
    row["iterations_reached"] = reached
    row.update(_health_and_cost(tags, metrics))
    return row


def _health_and_cost(tags: Any, metrics: Any) -> dict[str, Any]:
    """The health verdict, a failed audit and the cost counters of one run (analysis.schema)."""
    it = tags.get(TAG_HEALTH_ITERATION)
    out: dict[str, Any] = {
        "health": tags.get(TAG_HEALTH),
        "health_reason": tags.get(TAG_HEALTH_REASON),
        "health_iteration": int(it) if it is not None and it.isdigit() else None,
        "audit": tags.get(TAG_AUDIT),
        "cost_device": tags.get(TAG_COST_DEVICE),
    }
    for key in schema.COST_FLOAT_METRICS:
        out[key] = metrics.get(key)
    for key in schema.COST_INT_METRICS:
        out[key] = int(round(metrics[key])) if key in metrics else None
    return out


def _typed(raw: str, annotation: Any) -> Any:
    """An MLflow param string back to the config field's type (None when it does not parse)."""
    if raw is None or raw == "None":
        return None
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    try:
        if origin is tuple:
            value = ast.literal_eval(raw)
            return schema.json_list(value if isinstance(value, list | tuple) else [value])
        if args and origin is not None:
            return _typed(raw, args[0])
        if annotation is bool:
            return {"true": True, "false": False, "1": True, "0": False}[raw.strip().lower()]
        if annotation is int:
            return int(float(raw)) if float(raw).is_integer() else None
        if annotation is float:
            return float(raw)
        return str(raw)
    except (ValueError, KeyError, SyntaxError):
        return None


# ------------------------------------------------------------------ Optuna


def load_optuna_study(storage: str | None, name: str) -> tuple[Any, str]:
    """``(optuna.Study, "")`` or ``(None, why not)``; never creates a database."""
    if not storage:
        return None, "no Optuna storage known for this study"
    path = sqlite_path(storage)
    if path is not None and not path.is_file():
        return None, f"no Optuna database at {path}"
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        journal = journal_path(storage)  # storage.optuna: a journal file (NFS)
        if journal is not None:
            if not journal.is_file():
                return None, f"no Optuna journal at {journal}"
            st = optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(str(journal))
            )
        else:
            st = optuna.storages.RDBStorage(storage)
        return optuna.load_study(study_name=name, storage=st), ""
    except Exception as e:  # noqa: BLE001 - a missing study is a note in the report, not a crash
        return None, f"Optuna study {name!r} not readable from {storage}: {first_line(e)}"


def _join_optuna(df: pd.DataFrame, study: Any) -> pd.DataFrame:
    by_run, by_tune = {}, {}
    for t in study.trials:
        rec = (t.number, t.state.name, t.value if t.values and len(t.values) == 1 else None)
        if t.user_attrs.get(ATTR_RUN_ID):
            by_run[t.user_attrs[ATTR_RUN_ID]] = rec
        if t.user_attrs.get(ATTR_TUNE_ID):
            by_tune[str(t.user_attrs[ATTR_TUNE_ID])] = rec
    df = df.copy()
    recs = []
    for run_id, trial_id, kind in zip(df["run_id"], df["trial_id"], df["kind"], strict=True):
        rec = by_run.get(run_id)
        if rec is None and kind == KIND_SEARCH and isinstance(trial_id, str):
            rec = by_tune.get(trial_id)
        recs.append(rec or (None, None, None))
    df["optuna_number"] = pd.array([r[0] for r in recs], dtype="Int64")
    df["optuna_state"] = pd.array([r[1] for r in recs], dtype="string")
    df["optuna_value"] = pd.to_numeric(
        pd.Series([r[2] for r in recs], index=df.index), errors="coerce"
    )
    return df


def _infer_searched(df: pd.DataFrame, study: Any) -> list[str]:
    """Searched parameters when study.yaml is missing: Optuna's, else params that vary in search runs."""
    if study is not None:
        names: dict[str, None] = {}
        for t in study.trials:
            names.update(dict.fromkeys(t.params))
        if names:
            return list(names)
    search = df[df["kind"] == KIND_SEARCH]
    skip = {"seed", "device", "data_root", "teacher_path", "download"}
    return [
        c
        for c in schema.PARAM_NAMES
        if c not in skip and c in search and search[c].dropna().nunique() > 1
    ]
