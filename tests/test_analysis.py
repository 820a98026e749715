"""analysis/: runs table, tables and report from a small real study stored in MLflow + Optuna.

The runs are written with the MLflow client exactly as the study system's contract says (parent
run, nested child runs with zskt.* tags, config params as strings, metrics with step = iteration,
artifacts), into a temporary SQLite store; a matching Optuna study lives in a temporary RDB
storage. Expected table numbers are computed by hand below.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from matplotlib import image as mpimg
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from zskt_ray.analysis import rungs, schema, tables
from zskt_ray.analysis.blocks import Bullets, Heading, Img, ImgRow, Para, Pre, TableBlock
from zskt_ray.analysis.cli import main as report_main
from zskt_ray.analysis.load import StudyRef, load_study, resolve_study
from zskt_ray.analysis.render import render_html, render_markdown
from zskt_ray.analysis.report import build_report

from zskt_ray.config import DistillConfig, KDATConfig, to_dict

STUDY = "tiny"
PAIR = dict(dataset="cifar10", teacher_arch="wrn-40-2", student_arch="wrn-16-1")
ITERS = 40
K, XI = 5, 1.0

# Search trials: (trial id, n_s, beta, status, final val_acc, test_acc logged by the trial).
# Search trials log a (trap) test accuracy of 99.x: it must never reach a table.
SEARCH = [
    ("t0", 2, 100.0, "completed", 60.0, 99.0),
    ("t1", 5, 250.0, "completed", 70.0, 99.5),
    ("t2", 8, 500.0, "completed", 65.0, 99.8),
    ("t3", 1, 20.0, "pruned", 30.0, None),
    ("t4", 3, 800.0, "pruned", 35.0, None),
    ("t5", 9, 50.0, "failed", None, None),
]
# Final re-runs: config A (t1's, search rank 1) and config B (t2's, rank 2), 3 seeds each.
# B has the higher *test* accuracy but the lower *validation* accuracy: A must stand in Table 1.
FINAL = {
    "cfgA": dict(
        rank=1,
        n_s=5,
        beta=250.0,
        val=[71.0, 72.0, 73.0],
        test=[80.0, 81.5, 83.0],
        mte=[0.20, 0.25, 0.30],
    ),
    "cfgB": dict(
        rank=2,
        n_s=8,
        beta=500.0,
        val=[66.0, 67.0, 68.0],
        test=[84.0, 85.0, 86.0],
        mte=[0.40, 0.45, 0.50],
    ),
}
KDAT = dict(m=200, test=[78.0, 79.0], mte=[0.60, 0.70])
TEACHER_ACC = 94.0


def _png(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    grid = np.kron(rng.random((4, 4, 3)), np.ones((8, 8, 1)))
    mpimg.imsave(path, grid)
    return path


def _curves_json(path: Path, mte: float) -> Path:
    a = np.linspace(0.05, 0.95, K)
    b = np.clip(a - mte, 0.0, 1.0)
    path.write_text(
        json.dumps(
            {
                "mte": mte,
                "k": K,
                "xi": XI,
                "n_test": 50,
                "n_requested": 50,
                "num_classes": 10,
                "mean_curve_a": a.tolist(),
                "mean_curve_b": b.tolist(),
            }
        )
    )
    return path


class _Writer:
    """Writes runs the way the study system's contract describes."""

    def __init__(self, client: MlflowClient, exp_id: str, study: str, tmp: Path):
        self.c, self.exp, self.study, self.tmp = client, exp_id, study, tmp
        self.t0 = int(time.time() * 1000) - 3_600_000
        self.n = 0

    def parent(self, spec: dict) -> str:
        run = self.c.create_run(
            self.exp, run_name=self.study, tags={"zskt.study": self.study, "zskt.kind": "study"}
        )
        p = self.tmp / self.study / "study.yaml"
        p.parent.mkdir()
        p.write_text(yaml.safe_dump(spec, sort_keys=False))
        self.c.log_artifact(run.info.run_id, str(p))
        self.parent_id = run.info.run_id
        return run.info.run_id

    def child(
        self, kind, trial_id, status, params, curve, final, config_id, reason="", artifacts=()
    ):
        self.n += 1
        tags = {
            "mlflow.parentRunId": self.parent_id,
            "zskt.study": self.study,
            "zskt.kind": kind,
            "zskt.trial_id": trial_id,
            "zskt.status": status,
            "zskt.config_id": config_id,
            "zskt.device": "cpu",
            "zskt.hostname": "testhost",
            "zskt.gpu_name": "none",
            "zskt.torch_version": "2.14.1",
        }
        if reason:
            tags["zskt.status_reason"] = reason
        run = self.c.create_run(
            self.exp, run_name=trial_id, tags=tags, start_time=self.t0 + 1000 * self.n
        )
        rid = run.info.run_id
        ts = self.t0 + 1000 * self.n
        metrics = [Metric(k, float(v), ts, step) for k, pts in curve.items() for step, v in pts]
        last = max((s for pts in curve.values() for s, _ in pts), default=0)
        metrics += [Metric(k, float(v), ts, last) for k, v in final.items()]
        self.c.log_batch(rid, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
        for local, dest in artifacts:
            self.c.log_artifact(rid, str(local), dest)
        mlstatus = {"completed": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}[status]
        self.c.set_terminated(rid, mlstatus, end_time=ts + 500)
        return rid


def _spec(name: str, tracking_uri: str, optuna_url: str) -> dict:
    return {
        "name": name,
        "dataset": "cifar10",
        "teacher": {"arch": "wrn-40-2"},
        "student": {"arch": "wrn-16-1"},
        "loop": {"iterations": ITERS, "eval_every": 10, "batch_size": 16},
        "search": {
            "space": {
                "n_s": {"type": "int", "low": 1, "high": 10},
                "beta": {"type": "float", "low": 10.0, "high": 1000.0, "log": True},
            },
            "metric": "val_acc",
            "mode": "max",
            "scheduler": {"type": "asha", "grace_period": 10, "reduction_factor": 2},
        },
        "final": {"top_k": 2, "seeds": [0, 1, 2]},
        "kdat": {"enabled": True, "seeds": [0, 1], "config": {"m_per_class": 200}},
        "storage": {"optuna": optuna_url},
        "mlflow": {"tracking_uri": tracking_uri, "experiment": name},
    }


def _distill_params(n_s: int, beta: float, seed: int = 0) -> dict:
    return to_dict(
        DistillConfig(
            **PAIR,
            iterations=ITERS,
            eval_every=10,
            batch_size=16,
            n_s=n_s,
            beta=beta,
            seed=seed,
            device="cpu",
        )
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The MLflow store and Optuna storage of study ``tiny`` (and of a degenerate study ``bare``)."""
    tmp = tmp_path_factory.mktemp("analysis")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    optuna_url = f"sqlite:///{tmp / 'optuna.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(STUDY, artifact_location=(tmp / "artifacts").as_uri())
    w = _Writer(client, exp, STUDY, tmp)
    w.parent(_spec(STUDY, uri, optuna_url))
    img_dir = tmp / "img"
    img_dir.mkdir()
    pngs = [(_png(img_dir / f"pseudo_iter{it:06d}.png", it), "images") for it in (0, 20, 40)]
    ids: dict[str, str] = {}

    def final_metrics(val, test, mte):
        return {
            "val_acc": val,
            "test_acc": test,
            "mte": mte,
            "mte_k": K,
            "mte_xi": XI,
            "mte_n_test": 50,
            "teacher_test_acc": TEACHER_ACC,
            "iterations_done": ITERS,
            "wall_time_s": 12.0,
        }

    for tid, n_s, beta, status, val, test in SEARCH:
        params = _distill_params(n_s, beta)
        if status == "completed":
            curve = {
                "val_acc": [(10, val - 20), (20, val - 10), (30, val - 5), (ITERS, val)],
                "loss_s": [(ITERS, 0.1)],
            }
            final = final_metrics(val, test, 0.3)
            ids[tid] = w.child(
                "search",
                tid,
                status,
                params,
                curve,
                final,
                f"cfg-{tid}",
                artifacts=pngs if tid == "t1" else (),
            )
        elif status == "pruned":
            curve = {"val_acc": [(10, val)]}
            reason = f"stopped by the scheduler at iteration 10 of {ITERS}"
            ids[tid] = w.child("search", tid, status, params, curve, {}, f"cfg-{tid}", reason)
        else:
            ids[tid] = w.child(
                "search", tid, status, params, {}, {}, f"cfg-{tid}", "RuntimeError: boom"
            )
    curves_dir = tmp / "curves"
    curves_dir.mkdir()
    for cid, f in FINAL.items():
        for seed, (val, test, mte) in enumerate(zip(f["val"], f["test"], f["mte"], strict=True)):
            tid = f"final-{f['rank']}-seed{seed}"
            sub = curves_dir / tid
            sub.mkdir()
            arts = [(_curves_json(sub / "transition_curves.json", mte), "mte")]
            if cid == "cfgA" and seed == 0:
                arts += pngs
            curve = {"val_acc": [(10, val - 30), (20, val - 10), (ITERS, val)]}
            w.child(
                "final",
                tid,
                "completed",
                _distill_params(f["n_s"], f["beta"], seed),
                curve,
                final_metrics(val, test, mte),
                cid,
                artifacts=arts,
            )
    # a failed seed of config A: excluded from every statistic
    w.child(
        "final",
        "final-1-seed3",
        "failed",
        _distill_params(5, 250.0, 3),
        {"val_acc": [(10, 5.0)]},
        {},
        "cfgA",
        "killed by OOM",
    )
    for seed, (test, mte) in enumerate(zip(KDAT["test"], KDAT["mte"], strict=True)):
        params = to_dict(KDATConfig(**PAIR, m_per_class=KDAT["m"], seed=seed, device="cpu"))
        sub = curves_dir / f"kdat{seed}"
        sub.mkdir()
        final = {
            "val_acc": test - 1,
            "test_acc": test,
            "mte": mte,
            "mte_k": K,
            "mte_xi": XI,
            "mte_n_test": 50,
            "teacher_test_acc": TEACHER_ACC,
            "wall_time_s": 30.0,
        }
        w.child(
            "kdat",
            f"kdat-seed{seed}",
            "completed",
            params,
            {},
            final,
            "kdat-200",
            artifacts=[(_curves_json(sub / "transition_curves.json", mte), "mte")],
        )

    # the Optuna study of the search
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.create_study(study_name=STUDY, storage=optuna_url, direction="maximize")
    dists = {
        "n_s": optuna.distributions.IntDistribution(1, 10),
        "beta": optuna.distributions.FloatDistribution(10.0, 1000.0, log=True),
    }
    states = {
        "completed": optuna.trial.TrialState.COMPLETE,
        "pruned": optuna.trial.TrialState.PRUNED,
        "failed": optuna.trial.TrialState.FAIL,
    }
    for tid, n_s, beta, status, val, _ in SEARCH:
        st.add_trial(
            optuna.trial.create_trial(
                params={"n_s": n_s, "beta": beta},
                distributions=dists,
                state=states[status],
                value=val if status == "completed" else None,
                intermediate_values={10: val} if status == "pruned" else None,
                user_attrs={"mlflow_run_id": ids[tid], "tune_trial_id": tid},
            )
        )

    # a degenerate study: one completed and one failed search trial, nothing else
    bare_url = f"sqlite:///{tmp / 'optuna_bare.db'}"
    exp2 = client.create_experiment("bare", artifact_location=(tmp / "artifacts2").as_uri())
    w2 = _Writer(client, exp2, "bare", tmp)
    w2.parent(_spec("bare", uri, bare_url))
    rid = w2.child(
        "search",
        "b0",
        "completed",
        _distill_params(4, 100.0),
        {"val_acc": [(ITERS, 50.0)]},
        final_metrics(50.0, 97.0, 0.3),
        "cfg-b0",
    )
    w2.child(
        "search",
        "b1",
        "failed",
        _distill_params(6, 300.0),
        {},
        {},
        "cfg-b1",
        "ValueError: nan loss",
    )
    st2 = optuna.create_study(study_name="bare", storage=bare_url, direction="maximize")
    st2.add_trial(
        optuna.trial.create_trial(
            params={"n_s": 4, "beta": 100.0},
            distributions=dists,
            value=50.0,
            user_attrs={"mlflow_run_id": rid},
        )
    )
    st2.add_trial(
        optuna.trial.create_trial(
            params={"n_s": 6, "beta": 300.0},
            distributions=dists,
            state=optuna.trial.TrialState.FAIL,
        )
    )
    return {"tmp": tmp, "uri": uri, "optuna": optuna_url}


@pytest.fixture(scope="module")
def data(store):
    return load_study(StudyRef(STUDY, store["uri"], STUDY, store["optuna"]))


# ------------------------------------------------------------------ loading and the runs table


def test_runs_table_one_typed_row_per_run(data):
    runs = data.runs
    assert (
        len(runs) == 6 + 7 + 2
    )  # search + final (incl. a failed seed) + kdat; the parent is not a row
    assert runs["kind"].value_counts().to_dict() == {"search": 6, "final": 7, "kdat": 2}
    assert (runs["status"] == "failed").sum() == 2 and (runs["status"] == "pruned").sum() == 2
    assert data.objective == "val_acc" and data.mode == "max" and data.searched == ["n_s", "beta"]
    assert data.log_scale == {"n_s": False, "beta": True}
    t1 = runs[runs["trial_id"] == "t1"].iloc[0]
    assert (
        t1["n_s"] == 5 and t1["beta"] == 250.0 and not t1["download"] and pd.notna(t1["download"])
    )
    assert (
        t1["teacher_path"] is pd.NA
        and t1["iterations_reached"] == ITERS
        and t1["objective"] == 70.0
    )
    assert (
        t1["optuna_number"] == 1 and t1["optuna_state"] == "COMPLETE" and t1["optuna_value"] == 70.0
    )
    assert (
        t1["hw_device"] == "cpu"
        and t1["hw_gpu_name"] == "none"
        and t1["hw_torch_version"] == "2.14.1"
    )
    t3 = runs[runs["trial_id"] == "t3"].iloc[0]
    assert (
        t3["status"] == "pruned"
        and t3["mlflow_status"] == "KILLED"
        and t3["iterations_reached"] == 10
    )
    assert t3["status_reason"] == f"stopped by the scheduler at iteration 10 of {ITERS}"
    kd = runs[runs["kind"] == "kdat"].iloc[0]
    assert (
        kd["m_per_class"] == 200
        and kd["base_milestones"] == "[60, 120, 160]"
        and pd.isna(kd["n_s"])
    )
    fin = runs[runs["trial_id"] == "final-2-seed1"].iloc[0]
    assert (
        fin["final_rank"] == 2
        and fin["config_id"] == "cfgB"
        and fin["mte_k"] == K
        and fin["seed"] == 1
    )
    assert str(runs["n_s"].dtype) == "Int64" and runs["beta"].dtype == "float64"
    assert str(runs["start_time"].dtype) == "datetime64[ms, UTC]"


def test_parquet_round_trip_preserves_schema_and_dtypes(data, tmp_path):
    path = schema.write_parquet(data.runs, tmp_path / "runs.parquet", "val_acc", "max", STUDY)
    assert pq.read_schema(path).remove_metadata().equals(schema.SCHEMA)
    assert schema.read_metadata(path) == {
        "schema_version": "3",
        "objective": "val_acc",
        "mode": "max",
        "study": STUDY,
    }
    back = schema.read_parquet(path)
    assert list(back.columns) == list(schema.COLUMNS)
    assert back.dtypes.to_dict() == data.runs.dtypes.to_dict()
    pd.testing.assert_frame_equal(back, data.runs)
    # another schema version is refused, naming the versions
    table = pq.read_table(path)
    pq.write_table(
        table.replace_schema_metadata({b"zskt.analysis.schema_version": b"0"}),
        tmp_path / "old.parquet",
    )
    with pytest.raises(ValueError, match="schema version 0"):
        schema.read_parquet(tmp_path / "old.parquet")


# ------------------------------------------------------------------ tables, against hand-computed values


def _pstd(xs):
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def test_per_config_uses_final_runs_only_with_population_std(data):
    configs = tables.per_config(data.runs, data.searched, data.objective, data.mode)
    assert list(configs["config_id"]) == ["cfgA", "cfgB"]  # best mean val_acc first
    for cid, f in FINAL.items():
        r = configs[configs["config_id"] == cid].iloc[0]
        assert r["test_acc_n"] == 3 and r["seeds"] == "0,1,2"  # the failed seed 3 is not counted
        assert r["test_acc_mean"] == pytest.approx(sum(f["test"]) / 3)
        assert r["test_acc_std"] == pytest.approx(_pstd(f["test"]))  # ddof=0
        assert r["val_acc_mean"] == pytest.approx(sum(f["val"]) / 3)
        assert r["mte_mean"] == pytest.approx(sum(f["mte"]) / 3)
        assert r["mte_std"] == pytest.approx(_pstd(f["mte"]))
        assert r["n_s"] == f["n_s"] and r["beta"] == f["beta"] and r["rank"] == f["rank"]
    # hand values for config A: mean 81.5, population std sqrt(1.5)
    a = configs.iloc[0]
    assert a["test_acc_mean"] == pytest.approx(81.5) and a["test_acc_std"] == pytest.approx(
        math.sqrt(1.5)
    )


def test_table1_pairs_zero_shot_with_kdat_and_paper(data):
    configs = tables.per_config(data.runs, data.searched)
    t1 = tables.table1(data.runs, configs)
    assert len(t1) == 1
    r = t1.iloc[0]
    assert (r["dataset"], r["teacher_arch"], r["student_arch"]) == (
        "cifar10",
        "wrn-40-2",
        "wrn-16-1",
    )
    # chosen on validation (A: 72 > B: 67), although B has the higher test accuracy
    assert r["zero_shot_config_id"] == "cfgA"
    assert r["zero_shot_acc_mean"] == pytest.approx(81.5) and r[
        "zero_shot_acc_std"
    ] == pytest.approx(math.sqrt(1.5))
    assert r["zero_shot_n"] == 3
    assert r["kdat_m"] == 200 and r["kdat_n"] == 2
    assert r["kdat_acc_mean"] == pytest.approx(78.5) and r["kdat_acc_std"] == pytest.approx(0.5)
    assert r["teacher_acc"] == pytest.approx(TEACHER_ACC)
    # the paper's CIFAR-10 WRN-40-2 -> WRN-16-1 row (method notes, section 6)
    assert (r["paper_teacher_acc"], r["paper_zero_shot_mean"], r["paper_zero_shot_std"]) == (
        94.73,
        83.69,
        0.58,
    )
    assert r["paper_kdat_mean"] == 81.25  # M = 200
    d = tables.display_table1(t1).iloc[0]
    assert d["zero-shot"] == "81.50 ± 1.22 (n=3)" and d["KD+AT"] == "78.50 ± 0.50 (n=2)"
    assert (
        d["zero-shot (paper)"] == "83.69 ± 0.58" and d["teacher → student"] == "WRN-40-2 → WRN-16-1"
    )


def test_table2_mte_with_k_and_xi(data):
    t2 = tables.table2(data.runs, tables.per_config(data.runs, data.searched))
    r = t2.iloc[0]
    assert r["zero_shot_mte_mean"] == pytest.approx(0.25) and r[
        "zero_shot_mte_std"
    ] == pytest.approx(_pstd([0.2, 0.25, 0.3]))
    assert r["kdat_mte_mean"] == pytest.approx(0.65) and r["kdat_mte_std"] == pytest.approx(0.05)
    assert (r["zero_shot_k"], r["zero_shot_xi"], r["kdat_k"], r["kdat_xi"]) == (K, XI, K, XI)
    assert r["paper_zero_shot_mte"] == 0.22 and (r["paper_k"], r["paper_xi"]) == (100, 1.0)
    assert math.isnan(
        r["paper_kdat_mte"]
    )  # the paper's KD+AT MTE is for the full-data student, ours is M=200
    cell = tables.display_table2(t2).iloc[0]["zero-shot MTE"]
    assert cell == "0.250 ± 0.041 (n=3, K=5, ξ=1)"


def test_tables_written_as_markdown_csv_latex_without_search_test_accuracy(data, tmp_path):
    written = []
    for t in tables.build_tables(data.runs, data.searched):
        written += t.write(tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(
        f"{n}.{e}"
        for n in ("accuracy_per_config", "table1", "table2")
        for e in ("csv", "md", "tex")
    )
    text = "".join(p.read_text() for p in written)
    for _, _, _, _, _, trap in SEARCH:
        if trap is not None:
            assert f"{trap}" not in text  # search trials' test accuracy never reaches a table
    md = (tmp_path / "table1.md").read_text()
    assert "| teacher → student |" in md and "81.50 ± 1.22 (n=3)" in md
    tex = (tmp_path / "table1.tex").read_text()
    assert r"\begin{tabular}" in tex and r"81.50 $\pm$ 1.22" in tex and r"$\to$" in tex
    csv = pd.read_csv(tmp_path / "table1.csv")
    assert csv.loc[0, "zero_shot_acc_mean"] == pytest.approx(81.5)


# ------------------------------------------------------------------ the report


def _images(html: str) -> int:
    return html.count('src="data:image/png;base64,')


GOLDEN_OUTLINE = Path(__file__).parent / "golden" / "report_outline.json"
_RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")


class _Outline(HTMLParser):
    """A report page's structure in page order: headings, the table of contents, tables (column
    headers and row count), paragraphs (their class), lists (item count), figures and their
    captions, image rows, collapsed blocks. Run ids read as ``<run>``; other text is compared as
    it is, except paragraph and list text (dates, paths, fitted numbers)."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[list] = []
        self.stack: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.table: dict | None = None
        self.figure: dict | None = None
        self.row: list | None = None
        self.images = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("h1", "h2", "h3", "h4", "h5", "p", "figcaption", "th", "summary", "a", "title"):
            self.text = []
        if tag == "table":
            self.table = {"headers": [], "rows": 0}
        elif tag == "tr" and self.table is not None and self._inside("tbody"):
            self.table["rows"] += 1
        elif tag == "ul":
            self.items.append(["list", 0])
        elif tag == "li" and self.items and self.items[-1][0] == "list":
            self.items[-1][1] += 1
        elif tag == "nav":
            self.items.append(["nav", []])
        elif tag == "figure":
            self.figure = {"images": 0, "caption": None}
        elif tag == "img":
            self.images += 1
            if self.figure is not None:
                self.figure["images"] += 1
        elif tag == "div" and "row" in (a.get("class") or "").split():
            self.row = []
        if tag not in ("img", "meta", "br"):
            self.stack.append((tag, a))

    def _inside(self, tag: str) -> bool:
        return any(t == tag for t, _ in self.stack)

    def handle_data(self, data):
        self.text.append(data)

    def _text(self) -> str:
        return _RUN_ID.sub("<run>", " ".join("".join(self.text).split()))

    def handle_endtag(self, tag):
        while self.stack:
            open_tag, attrs = self.stack.pop()
            if open_tag == tag:
                break
        else:
            return
        cls = attrs.get("class", "")
        if tag in ("h1", "h2", "h3", "h4", "h5"):
            self.items.append([tag, self._text()])
        elif tag == "a" and self._inside("nav"):
            self.items[-1][1].append(self._text())
        elif tag == "th" and self.table is not None:
            self.table["headers"].append(self._text())
        elif tag == "table":
            self.items.append(["table", self.table["headers"], self.table["rows"]])
            self.table = None
        elif tag == "p":
            self.items.append(["caption", self._text()] if cls == "caption" else ["p", cls])
        elif tag == "figcaption" and self.figure is not None:
            self.figure["caption"] = self._text()
        elif tag == "figure":
            fig = ["figure", self.figure["images"], self.figure["caption"]]
            (self.row if self.row is not None else self.items).append(fig)
            self.figure = None
        elif tag == "div" and "row" in cls.split():
            self.items.append(["row", self.row])
            self.row = None
        elif tag == "summary":
            self.items.append(["details", self._text()])
        elif tag == "title":
            self.items.append(["title", self._text()])


def _outline(page: str) -> dict:
    """The structure of a report page (see :class:`_Outline`) and its image count."""
    parser = _Outline()
    parser.feed(page)
    parser.close()
    return {"images": parser.images, "blocks": parser.items}


def _assert_outline(page: str, name: str) -> None:
    """The page has the structure recorded in GOLDEN_OUTLINE (from the report before its HTML
    moved to templates); a difference is shown as a diff of blocks."""
    got, want = _outline(page), json.loads(GOLDEN_OUTLINE.read_text())[name]
    lines = [[json.dumps(b, ensure_ascii=False) for b in o["blocks"]] for o in (want, got)]
    diff = "\n".join(difflib.unified_diff(*lines, "golden", "this report", lineterm="", n=1))
    assert got == want, (
        f"{name}: the report's structure differs from {GOLDEN_OUTLINE.name} "
        f"(images: {want['images']} recorded, {got['images']} now)\n{diff}"
    )


def test_html_escapes_every_text_and_embeds_every_image(tmp_path):
    """Text from runs (tags, reasons, parameter values) cannot inject markup into the page."""
    _png(tmp_path / "a.png", 0)
    evil = '<script>alert("x")</script> & co'
    blocks = [
        Heading(evil, 1),
        Heading("Runs <b>", 2),
        Para(evil, "note"),
        Bullets([evil]),
        TableBlock(pd.DataFrame({evil: [evil, 1.5]}), evil),
        Img("a.png", evil),
        ImgRow([Img("a.png", evil)], evil),
        Pre(evil, evil),
    ]
    page = render_html(blocks, tmp_path, title=evil)
    assert "<script>" not in page and "<b>" not in page
    # title, h1, note, bullet, column, cell, table caption, 2 x (alt, figcaption), row caption,
    # summary, pre
    assert page.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; co") == 14
    assert '<nav><a href="#runs-b">Runs &lt;b&gt;</a></nav>' in page
    assert _images(page) == 2 and "1.5" in page
    md = render_markdown(blocks)
    assert md.count("![") == 2 and "&lt;script>" in md


def test_report_html_and_markdown_with_every_plot(data, tmp_path):
    res = build_report(data, tmp_path / "rep")
    page = res.html.read_text()
    # 2 parameter plots, history, importances, learning curves, transition curves, 3 pseudo-image grids
    assert _images(page) == len(res.figures) == 9
    for section in (
        "Runs and exclusions",
        "Table 1",
        "Table 2",
        "Accuracy per configuration",
        "Search trials",
        "Effect of each searched parameter",
        "Optimisation history",
        "Learning curves",
        "Average transition curves",
        "Pseudo images",
        "Run configuration and hardware",
    ):
        assert section in page, section
    assert "15 runs in total; 4 excluded" in page and "2 failed" in page and "2 pruned" in page
    assert "2 × search pruned: stopped by the scheduler at iteration 10 of 40" in page
    assert "1 × final failed: killed by OOM" in page
    # equal budgets: the default view is ASHA's rung at iteration 10, which all 5 trials with a
    # value reached (3 completed, 2 pruned there); the importances come from those 5 trials
    assert re.search(r"At the ASHA rung at iteration 10: (n_s|beta) matters most .*5 trials", page)
    assert (
        "No parameter importances at the full budget, iteration 40: they need at least 4 trials and 3 reached it"
        in page
    )
    assert "value when stopped" not in page and "last reported" not in page
    assert not re.search(r'(src|href)="(https?:|file:|figures/)', page)  # self-contained
    md = res.markdown.read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(refs) == 9 and all((res.out_dir / r).is_file() for r in refs)
    assert (res.out_dir / "runs.parquet").is_file() and len(
        res.tables
    ) == 21  # 7 tables (with the final re-runs' seed statistics) x 3 formats
    assert res.n_excluded == 4 and res.excluded == {"pruned": 2, "failed": 2}
    _assert_outline(page, "tiny")


def test_report_of_degenerate_study_says_what_is_missing(store, tmp_path, capsys):
    """One completed and one failed trial, no final runs: still a report, saying why things are missing."""
    study_file = tmp_path / "bare.yaml"
    study_file.write_text(
        yaml.safe_dump(_spec("bare", store["uri"], f"sqlite:///{store['tmp'] / 'optuna_bare.db'}"))
    )
    ref = resolve_study(study_file)
    assert (ref.name, ref.experiment, ref.tracking_uri) == ("bare", "bare", store["uri"])
    assert (
        resolve_study(study_file, smoke=True).name == "bare-smoke"
    )  # as `zskt study run --smoke` names it
    rc = report_main(["report", str(study_file), "--out", str(tmp_path / "rep")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "2 runs, 1 excluded (1 failed)" in out
    page = (tmp_path / "rep" / "report.html").read_text()
    assert (
        "2 runs in total; 1 excluded" in page and "1 × search failed: ValueError: nan loss" in page
    )
    assert (
        "No parameter importances at the ASHA rung at iteration 10: they need at least 4 trials and 1 reached it"
        in page
    )
    assert "No completed final re-runs" in page
    assert _images(page) >= 3  # 2 parameter plots + history (+ learning curve)
    _assert_outline(page, "bare")
    # an unknown experiment is a one-line error
    assert (
        report_main(
            ["report", "nosuch", "--tracking-uri", store["uri"], "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert "no MLflow experiment 'nosuch'" in capsys.readouterr().err


# ------------------------------------------------------------------ equal budgets, several studies

# Study "imp" (a second store): 16 search trials over lr_s (log float), n_s (int) and z_dim
# (categorical). The value at ASHA's rung 10 is a function of lr_s alone; ASHA stopped 13 trials
# there, 3 completed the 40-iteration budget. Its chosen configuration was re-run over 3 seeds on
# the pair WRN-16-2 -> WRN-16-1, the paper's first Table-1 row.
IMP_PAIR = dict(dataset="cifar10", teacher_arch="wrn-16-2", student_arch="wrn-16-1")
IMP_FINAL_TEST = [90.0, 91.0, 95.0]


def _imp_value(lr_s: float) -> float:
    return 40.0 + 10.0 * math.log10(lr_s / 1e-4)  # 40 at 1e-4 ... 70 at 1e-1


@pytest.fixture(scope="module")
def imp_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imp")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("imp", artifact_location=(tmp / "artifacts").as_uri())
    w = _Writer(client, exp, "imp", tmp)
    spec = _spec("imp", uri, f"sqlite:///{tmp / 'no-optuna.db'}")
    spec["teacher"], spec["student"] = {"arch": "wrn-16-2"}, {"arch": "wrn-16-1"}
    spec["search"]["space"] = {
        "lr_s": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "n_s": {"type": "int", "low": 1, "high": 8},
        "z_dim": {"type": "categorical", "choices": [32, 64, 100]},
    }
    w.parent(spec)
    rng = np.random.default_rng(0)
    expect = {}
    for i in range(16):
        lr_s = float(10 ** rng.uniform(-4, -1))
        n_s, z_dim = int(rng.integers(1, 9)), int(rng.choice([32, 64, 100]))
        params = to_dict(
            DistillConfig(
                **IMP_PAIR, iterations=ITERS, eval_every=10, n_s=n_s, lr_s=lr_s, z_dim=z_dim
            )
        )
        v = _imp_value(lr_s)
        expect[f"i{i}"] = v
        if i < 3:  # completed: the full budget's value depends on n_s too
            curve = {"val_acc": [(10, v), (20, v + 1), (30, v + 2), (ITERS, v + n_s)]}
            final = {"val_acc": v + n_s, "iterations_done": ITERS}
            w.child("search", f"i{i}", "completed", params, curve, final, f"cfg-i{i}")
        else:
            reason = f"stopped by the scheduler at iteration 10 of {ITERS}"
            w.child(
                "search", f"i{i}", "pruned", params, {"val_acc": [(10, v)]}, {}, f"cfg-i{i}", reason
            )
    for seed, test in enumerate(IMP_FINAL_TEST):
        params = to_dict(DistillConfig(**IMP_PAIR, iterations=ITERS, seed=seed))
        final = {"val_acc": 80.0 + seed, "test_acc": test, "teacher_test_acc": 93.0}
        w.child("final", f"final-0-seed{seed}", "completed", params, {}, final, "cfg-imp")
    study_file = tmp / "imp.yaml"
    study_file.write_text(yaml.safe_dump(spec))
    return {"uri": uri, "study_file": study_file, "expect": expect}


def test_rung_values_are_at_one_iteration(imp_store):
    data = load_study(StudyRef("imp", imp_store["uri"], "imp"), with_optuna=False)
    assert data.budget == ITERS and data.rungs == [10, 20]  # 10 * 2**k below 40
    table = rungs.rung_values(data)
    bs = {(b.iteration, b.full): b.n for b in rungs.budgets(table, data)}
    assert bs == {(10, False): 16, (20, False): 3, (ITERS, True): 3}
    view = rungs.default_budget(rungs.budgets(table, data), min_trials=5)
    assert (view.iteration, view.full, view.n) == (10, False, 16)
    at10 = rungs.at_budget(table, view)
    got = dict(zip(at10["trial_id"], at10["value"], strict=True))
    assert got == pytest.approx(imp_store["expect"])  # never a value from another iteration
    assert set(at10["step"]) == {10}


def test_importances_at_rung_find_the_parameter_that_decides(imp_store):
    """lr_s alone decides the rung value: it comes out most important, from all 16 trials."""
    data = load_study(StudyRef("imp", imp_store["uri"], "imp"), with_optuna=False)
    table = rungs.rung_values(data)
    at10 = table[(table["iteration"] == 10) & ~table["full"]]
    space = data.spec["search"]["space"]
    for method in ("fanova", "ped-anova"):
        imp = rungs.importances(at10, data.searched, space, "max", method)
        assert imp.n == 16 and list(imp.values)[0] == "lr_s", (method, imp)
    assert imp.values["lr_s"] > 0.5
    eff = rungs.marginal_effects(at10, "lr_s", log=True)
    assert eff["n"].sum() == 16 and eff["mean"].is_monotonic_increasing
    few = rungs.importances(at10.head(3), data.searched, space, "max")
    assert few.values == {} and "at least 4 trials and 3 reached it" in few.note


def test_report_of_two_studies_one_table1(store, imp_store, tmp_path, capsys):
    """Two studies in two stores: one Table 1 with both pairs, in the paper's order."""
    tiny_file = tmp_path / "tiny.yaml"
    tiny_file.write_text(yaml.safe_dump(_spec(STUDY, store["uri"], store["optuna"])))
    out = tmp_path / "both"
    rc = report_main(["report", str(tiny_file), str(imp_store["study_file"]), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    t1 = pd.read_csv(out / "tables" / "table1.csv")
    assert list(zip(t1["teacher_arch"], t1["student_arch"], strict=True)) == [
        ("wrn-16-2", "wrn-16-1"),  # the paper's first row
        ("wrn-40-2", "wrn-16-1"),
    ]
    assert t1.loc[0, "zero_shot_acc_mean"] == pytest.approx(sum(IMP_FINAL_TEST) / 3)
    assert t1.loc[0, "zero_shot_acc_std"] == pytest.approx(_pstd(IMP_FINAL_TEST))
    assert t1.loc[0, "paper_zero_shot_mean"] == 82.44
    assert t1.loc[1, "zero_shot_acc_mean"] == pytest.approx(81.5)
    assert len(pd.read_csv(out / "tables" / "table2.csv")) == 2
    page = (out / "report.html").read_text()
    assert "Study tiny" in page and "Study imp" in page
    assert re.search(r"At the ASHA rung at iteration 10: lr_s matters most .*16 trials", page)
    assert (out / "tables" / "search_trials_imp.csv").is_file()
    assert len(pd.read_parquet(out / "runs.parquet")) == 15 + 19
    _assert_outline(page, "two")
