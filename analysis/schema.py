"""The runs table: one row per MLflow child run of a study, and its Parquet schema.

Schema version 3 (``zskt.analysis.schema_version`` in the Parquet file metadata; version 2 added
``cell`` and ``cell_label``, version 3 the health and cost columns). Columns, in order:

Identity and outcome
    ``run_id``, ``parent_run_id``, ``experiment_id``, ``run_name``, ``study`` (tag ``zskt.study``),
    ``kind`` (``search`` | ``final`` | ``kdat``), ``trial_id``, ``config_id`` (seeds of one
    configuration share it), ``cell`` and ``cell_label`` (the designed-ablation cell a run belongs
    to, its stable id and readable label, from tags ``zskt.cell`` and ``zskt.cell_label``; null
    outside ablations; with ``seed`` they key the run in its design),
    ``status`` (``completed`` | ``pruned`` | ``failed`` | ``running``),
    ``status_reason``, ``mlflow_status`` (FINISHED, KILLED, FAILED, RUNNING): all ``string``;
    ``final_rank`` (``int64``: the search rank of the configuration a final re-run repeats, read
    from trial ids ``final-<rank>-seed<seed>``).
Parameters
    One column per field of :class:`zskt_ray.config.DistillConfig` and
    :class:`zskt_ray.config.KDATConfig`, named as the field, typed from its annotation:
    ``int`` -> ``int64``, ``float`` -> ``float64``, ``bool`` -> ``bool``, ``str`` / ``str | None``
    -> ``string``, ``tuple[int, ...]`` -> ``string`` holding a JSON list. A field a run did not log
    is null (search/final runs log DistillConfig, kdat runs KDATConfig). ``extra_params``
    (``string``, a JSON object) keeps any other logged parameter, so nothing is lost.
Metrics (``float64``, the last logged value)
    ``val_acc``, ``test_acc``, ``teacher_test_acc`` (percent), ``mte``, ``mte_xi`` (test MTE: final
    re-runs and KD+AT runs), ``val_mte``, ``val_mte_xi`` (validation MTE: search trials), ``wall_time_s``,
    ``loss_g``, ``loss_s``, ``kl``, ``at``, ``teacher_conf``, ``student_conf``,
    ``pseudo_agreement``, ``iters_per_s`` (``lr_s`` / ``lr_g`` are the configured rates, not the
    schedule's last value), and ``objective`` (the last value of
    the study's search metric, named in the file metadata ``zskt.analysis.objective``).
    ``mte_k``, ``mte_n_test``, ``val_mte_k``, ``val_mte_n``, ``iterations_done`` are ``int64``;
    ``iterations_reached``
    (``int64``) is ``iterations_done`` or, for runs stopped early, the iteration of the last
    ``val_acc``.
Health and cost (``zskt_ray/health.py``, ``zskt_ray/cost.py``; null where a run has none)
    ``health`` (``healthy`` | ``collapsed`` | ``stalled``, tag ``zskt.health``), ``health_reason``
    (``string``) and ``health_iteration`` (``int64``): the health rule's verdict; ``audit``
    (``string``, tag ``zskt.audit``): the one-line error of a failed wiring audit or test-split
    guard; ``cost_device`` (``cpu`` | ``gpu``, tag ``zskt.cost_device``): what ``cost_device_s``
    counts. The run's last cost counters: ``cost_wall_s``, ``cost_device_s``, ``cost_peak_mem_mib``
    (``float64``), ``cost_pseudo_images`` and the forward/backward passes ``cost_teacher_fwd`` ...
    ``cost_generator_bwd`` (``int64``).
Hardware and time
    ``hw_device``, ``hw_gpu_name``, ``hw_hostname``, ``hw_torch_version`` (``string``, tags
    ``zskt.device`` ... ``zskt.torch_version``); ``start_time``, ``end_time``
    (``timestamp[ms, UTC]``).
Optuna (null without an Optuna study)
    ``optuna_number`` (``int64``), ``optuna_state`` (``string``), ``optuna_value`` (``float64``).

Pandas dtypes after :func:`read_parquet` (and from :func:`conform`): ``string`` for strings,
``Int64`` for integers, ``float64`` for floats (NaN when missing), ``boolean`` for booleans,
``datetime64[ms, UTC]`` for times: a write/read round trip preserves them exactly.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import DistillConfig, KDATConfig
from ..names import (
    COST_DEVICE_S,
    COST_PASSES,
    COST_PEAK_MEM_MIB,
    COST_PSEUDO_IMAGES,
    COST_WALL_S,
    SCHEDULE_METRICS,
    VAL_MTE,
    VAL_MTE_PARAMS,
)
from ..names import CURVE_METRICS as CURVE_METRICS_ALL

SCHEMA_VERSION = "3"
META_VERSION = b"zskt.analysis.schema_version"
META_OBJECTIVE = b"zskt.analysis.objective"
META_MODE = b"zskt.analysis.mode"
META_STUDY = b"zskt.analysis.study"

# Metric vocabulary of the loop (zskt_ray/loop.py) and of the final evaluation. The runs table keeps
# the last value of the curve metrics except ``lr_s`` / ``lr_g`` (the schedule, ~0 at the end; the
# columns of those names are the configured learning rates).
CURVE_METRICS = tuple(m for m in CURVE_METRICS_ALL if m not in SCHEDULE_METRICS)
FINAL_FLOAT_METRICS = (
    "val_acc",
    "test_acc",
    "mte",
    "mte_xi",
    VAL_MTE,
    VAL_MTE_PARAMS[1],
    "teacher_test_acc",
    "wall_time_s",
)
FINAL_INT_METRICS = ("mte_k", "mte_n_test", VAL_MTE_PARAMS[0], VAL_MTE_PARAMS[2], "iterations_done")
COST_FLOAT_METRICS = (COST_WALL_S, COST_DEVICE_S, COST_PEAK_MEM_MIB)
COST_INT_METRICS = (COST_PSEUDO_IMAGES, *COST_PASSES)
# The health verdict and the cost unit, from the run's tags.
HEALTH_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("health", pa.string()),
    ("health_reason", pa.string()),
    ("health_iteration", pa.int64()),
    ("audit", pa.string()),
    ("cost_device", pa.string()),
)

_ID_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("run_id", pa.string()),
    ("parent_run_id", pa.string()),
    ("experiment_id", pa.string()),
    ("run_name", pa.string()),
    ("study", pa.string()),
    ("kind", pa.string()),
    ("trial_id", pa.string()),
    ("config_id", pa.string()),
    ("cell", pa.string()),
    ("cell_label", pa.string()),
    ("status", pa.string()),
    ("status_reason", pa.string()),
    ("mlflow_status", pa.string()),
    ("final_rank", pa.int64()),
)
_TAIL_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("hw_device", pa.string()),
    ("hw_gpu_name", pa.string()),
    ("hw_hostname", pa.string()),
    ("hw_torch_version", pa.string()),
    ("start_time", pa.timestamp("ms", tz="UTC")),
    ("end_time", pa.timestamp("ms", tz="UTC")),
    ("optuna_number", pa.int64()),
    ("optuna_state", pa.string()),
    ("optuna_value", pa.float64()),
)


def _arrow_type(name: str, annotation: Any) -> pa.DataType:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is tuple:
        return pa.string()  # JSON list
    if args and origin is not None:  # Optional[X] / X | None
        return _arrow_type(name, args[0])
    mapping = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}
    if annotation not in mapping:
        raise TypeError(f"config field {name}: no Parquet type for {annotation!r}")
    return mapping[annotation]


def _param_columns() -> tuple[tuple[str, pa.DataType], ...]:
    """One column per DistillConfig / KDATConfig field (first occurrence decides the order)."""
    out: dict[str, pa.DataType] = {}
    for cls in (DistillConfig, KDATConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t = _arrow_type(f.name, hints[f.name])
            if f.name in out and out[f.name] != t:
                raise TypeError(f"config field {f.name} has different types in the config classes")
            out.setdefault(f.name, t)
    return tuple(out.items())


PARAM_COLUMNS = _param_columns()
PARAM_NAMES = tuple(name for name, _ in PARAM_COLUMNS)
_METRIC_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    *((m, pa.float64()) for m in dict.fromkeys((*FINAL_FLOAT_METRICS, *CURVE_METRICS))),
    *((m, pa.int64()) for m in FINAL_INT_METRICS),
    ("iterations_reached", pa.int64()),
    ("objective", pa.float64()),
    *HEALTH_COLUMNS,
    *((m, pa.float64()) for m in COST_FLOAT_METRICS),
    *((m, pa.int64()) for m in COST_INT_METRICS),
)

SCHEMA = pa.schema(
    [
        *(pa.field(n, t) for n, t in _ID_COLUMNS),
        *(pa.field(n, t) for n, t in PARAM_COLUMNS),
        pa.field("extra_params", pa.string()),
        *(pa.field(n, t) for n, t in _METRIC_COLUMNS),
        *(pa.field(n, t) for n, t in _TAIL_COLUMNS),
    ]
)
COLUMNS = tuple(SCHEMA.names)
if len(set(COLUMNS)) != len(COLUMNS):  # a config field named like a metric would be ambiguous
    raise TypeError(
        f"duplicate runs-table columns: {sorted({c for c in COLUMNS if COLUMNS.count(c) > 1})}"
    )


def _pandas_dtype(t: pa.DataType) -> Any:
    if pa.types.is_string(t):
        return pd.StringDtype()
    if pa.types.is_int64(t):
        return pd.Int64Dtype()
    if pa.types.is_boolean(t):
        return pd.BooleanDtype()
    if pa.types.is_float64(t):
        return "float64"
    if pa.types.is_timestamp(t):
        return pd.DatetimeTZDtype(unit=t.unit, tz=t.tz)
    raise TypeError(f"no pandas dtype for {t}")  # pragma: no cover


PANDAS_DTYPES: dict[str, Any] = {f.name: _pandas_dtype(f.type) for f in SCHEMA}


def empty_frame() -> pd.DataFrame:
    """A runs table with no rows (the right columns and dtypes)."""
    return conform(pd.DataFrame({c: [] for c in COLUMNS}))


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Columns of the schema in order (missing ones null) with the schema's pandas dtypes.

    Columns outside the schema are kept, after the schema's.
    """
    df = df.copy()
    for name in COLUMNS:
        if name not in df.columns:
            df[name] = pd.NA
    extra = [c for c in df.columns if c not in PANDAS_DTYPES]
    df = df[[*COLUMNS, *extra]]
    for name, dtype in PANDAS_DTYPES.items():
        col = df[name]
        if dtype == "float64":
            df[name] = pd.to_numeric(col, errors="coerce").astype("float64")
        elif isinstance(dtype, pd.DatetimeTZDtype):
            df[name] = pd.to_datetime(col, utc=True).astype(dtype)
        else:
            df[name] = col.astype(dtype)
    return df.reset_index(drop=True)


def to_arrow(df: pd.DataFrame, objective: str = "", mode: str = "", study: str = "") -> pa.Table:
    """The runs table as an Arrow table of :data:`SCHEMA` with the versioned file metadata."""
    df = conform(df)
    arrays = [_arrow_column(df[f.name], f.type) for f in SCHEMA]
    meta = {
        META_VERSION: SCHEMA_VERSION.encode(),
        META_OBJECTIVE: objective.encode(),
        META_MODE: mode.encode(),
        META_STUDY: study.encode(),
    }
    return pa.Table.from_arrays(arrays, schema=SCHEMA.with_metadata(meta))


def _arrow_column(col: pd.Series, t: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(t):  # via naive UTC values (no tz-dropping ``Series.values``)
        naive = col.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
        return pa.array(naive, type=pa.timestamp(t.unit), from_pandas=True).cast(t)
    return pa.array(col, type=t, from_pandas=True)


def write_parquet(
    df: pd.DataFrame, path: str | Path, objective: str = "", mode: str = "", study: str = ""
) -> Path:
    """Write the runs table to ``path`` (schema :data:`SCHEMA`, version in the file metadata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(to_arrow(df, objective, mode, study), path)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``zskt.analysis.*`` entries of a runs file's metadata (version, objective, mode, study)."""
    meta = pq.read_schema(path).metadata or {}
    return {
        k.decode().removeprefix("zskt.analysis."): v.decode()
        for k, v in meta.items()
        if k.startswith(b"zskt.analysis.")
    }


def read_parquet(path: str | Path) -> pd.DataFrame:
    """Read a runs file written by :func:`write_parquet`; refuses a file of another schema version."""
    table = pq.read_table(path)
    version = (table.schema.metadata or {}).get(META_VERSION, b"").decode()
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{path}: runs table schema version {version or '(none)'}, this code reads version "
            f"{SCHEMA_VERSION}; regenerate it with `zskt report`"
        )
    mapper = {
        pa.string(): pd.StringDtype(),
        pa.int64(): pd.Int64Dtype(),
        pa.bool_(): pd.BooleanDtype(),
    }
    df = table.to_pandas(types_mapper=mapper.get, ignore_metadata=True)
    return conform(df)


def describe() -> str:
    """The schema as text (name: Arrow type), for documentation and ``--schema``."""
    return "\n".join(f"{f.name}: {f.type}" for f in SCHEMA)


def json_list(value: Any) -> str:
    """A tuple/list parameter as its JSON list string."""
    return json.dumps(list(value))
