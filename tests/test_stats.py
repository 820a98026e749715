"""analysis/stats.py on synthetic run tables whose truth is known, and one table checked by hand.

Every random table comes from a fixed numpy seed, so each figure below is reproducible; the
simulations are sized to run in a few seconds.
"""

from __future__ import annotations

import gc
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import optimize
from scipy import stats as sps
from zskt_ray.analysis import plots, schema, stats

from zskt_ray.study.design import make_design


@pytest.fixture(autouse=True)
def _no_forced_garbage_collection(monkeypatch):
    """statsmodels' Holm correction calls gc.collect() on every call: most of a second in a
    process that holds torch and MLflow. The simulations here correct hundreds of tables."""
    monkeypatch.setattr(gc, "collect", lambda generation=2: 0)


def _contrast(treatment, reference, label=""):
    return SimpleNamespace(
        label=label or f"{treatment} vs {reference}",
        treatment=tuple(np.atleast_1d(treatment)),
        reference=tuple(np.atleast_1d(reference)),
    )


def _table(means: dict[str, float], seeds, noise, rng, seed_sd=0.0) -> pd.DataFrame:
    """One completed run per cell and seed: cell mean + a per-seed offset shared by every cell
    (the seed's initialisation, the same in each cell) + independent noise."""
    offsets = {s: rng.normal(0.0, seed_sd) for s in seeds}
    rows = [
        dict(cell=c, seed=s, value=m + offsets[s] + rng.normal(0.0, noise), status="completed")
        for s in seeds
        for c, m in means.items()
    ]
    return pd.DataFrame(rows).assign(status_reason=None)


# ------------------------------------------------------------------ the acceptance figures


def test_planted_effect_of_2_points_is_found_with_its_sign_and_an_interval_covering_it():
    rng = np.random.default_rng(11)
    frame = _table({"ref": 90.0, "treat": 92.0}, range(5), 0.5, rng, seed_sd=1.0)
    row = stats.compare(frame, [_contrast("treat", "ref")], better="max").iloc[0]
    assert row["n"] == 5 and row["ci_method"] == "t"
    assert row["diff"] > 0 and row["ci_low"] < 2.0 < row["ci_high"] and row["ci_low"] > 0
    assert row["verdict"] == stats.BETTER and row["p_holm"] < 0.05
    # for a metric that is better when small (MTE), the same difference is worse
    row_min = stats.compare(frame, [_contrast("treat", "ref")], better="min").iloc[0]
    assert row_min["verdict"] == stats.WORSE
    # and the other way round: the reference against the treatment is 2 points lower
    back = stats.compare(frame, [_contrast("ref", "treat")]).iloc[0]
    assert back["diff"] == pytest.approx(-row["diff"]) and back["verdict"] == stats.WORSE


def test_t_interval_covers_the_planted_effect_about_95_percent_of_the_time():
    rng = np.random.default_rng(12)
    covered = 0
    designs = 200
    for _ in range(designs):
        frame = _table({"ref": 90.0, "treat": 92.0}, range(4), 0.5, rng, seed_sd=2.0)
        row = stats.compare_pair(frame, ["treat"], ["ref"])
        covered += row["ci_low"] <= 2.0 <= row["ci_high"]
    assert 0.91 <= covered / designs <= 0.99, covered


def _null_rates(designs: int, arms: int, seeds: int, rng) -> dict[str, float]:
    """Under no effect: the share of comparisons flagged and of designs with any flag, with and
    without Holm's correction (``arms`` treatments against one reference per design)."""
    flagged_raw = flagged_holm = any_raw = any_holm = 0
    means = {"ref": 80.0, **{f"t{i}": 80.0 for i in range(arms)}}
    contrasts = [_contrast(f"t{i}", "ref") for i in range(arms)]
    for _ in range(designs):
        frame = _table(means, range(seeds), 0.5, rng, seed_sd=1.0)
        table = stats.compare(frame, contrasts)
        raw = table["p"] < stats.ALPHA
        holm = table["verdict"] != stats.not_distinguishable(seeds)
        flagged_raw += int(raw.sum())
        flagged_holm += int(holm.sum())
        any_raw += bool(raw.any())
        any_holm += bool(holm.any())
    n = designs * arms
    return {
        "comparisons_raw": flagged_raw / n,
        "comparisons_holm": flagged_holm / n,
        "familywise_raw": any_raw / designs,
        "familywise_holm": any_holm / designs,
    }


def test_under_no_effect_holm_keeps_false_positives_near_5_percent():
    rates = _null_rates(designs=200, arms=5, seeds=5, rng=np.random.default_rng(13))
    # Holm bounds the chance of any false flag in a design (family-wise) by 5 %: 200 designs
    # give a binomial standard error of 1.5 points, hence the margin
    assert rates["familywise_holm"] <= 0.08, rates
    assert rates["comparisons_holm"] <= 0.05, rates
    # without it, five comparisons per design flag something far more often
    assert rates["familywise_raw"] >= 0.12, rates
    assert rates["familywise_raw"] >= rates["familywise_holm"] + 0.06, rates


def test_pairing_by_seed_narrows_the_interval_when_seeds_share_an_offset():
    rng = np.random.default_rng(14)
    frame = _table({"ref": 85.0, "treat": 87.0}, range(6), 0.5, rng, seed_sd=3.0)
    paired = stats.compare_pair(frame, ["treat"], ["ref"])
    t = frame[frame["cell"] == "treat"]["value"].to_numpy()
    r = frame[frame["cell"] == "ref"]["value"].to_numpy()
    unpaired = sps.ttest_ind(t, r, equal_var=False).confidence_interval(0.95)
    paired_width = paired["ci_high"] - paired["ci_low"]
    assert paired_width < (unpaired.high - unpaired.low) / 3
    assert paired["ci_low"] > 0 and unpaired.low < 0  # only the paired design sees the 2 points
    # seed s pairs with seed s whatever the row order
    shuffled = frame.sample(frac=1.0, random_state=0)
    assert stats.compare_pair(shuffled, ["treat"], ["ref"])["ci_low"] == paired["ci_low"]
    # relabelling the seeds of one cell breaks the pairing, and the interval widens
    broken = frame.copy()
    treat = broken["cell"] == "treat"
    broken.loc[treat, "seed"] = (broken.loc[treat, "seed"] + 1) % 6
    wide = stats.compare_pair(broken, ["treat"], ["ref"])
    assert wide["ci_high"] - wide["ci_low"] > 3 * paired_width


def test_minimum_detectable_effect_shrinks_with_seeds_and_grows_with_noise():
    mdes = [stats.minimum_detectable_effect(1.0, n) for n in range(2, 21)]
    assert all(a > b for a, b in zip(mdes, mdes[1:]))
    for n in (3, 5, 10):
        assert stats.minimum_detectable_effect(2.0, n) == pytest.approx(
            2 * stats.minimum_detectable_effect(1.0, n)
        )
    assert np.isnan(stats.minimum_detectable_effect(1.0, 1))
    assert np.isnan(stats.minimum_detectable_effect(0.0, 5))


def _power_by_hand(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test, from the noncentral t distribution."""
    df, nc = n - 1, effect / sd * np.sqrt(n)
    crit = sps.t.ppf(1 - alpha / 2, df)
    wrong_side = np.nan_to_num(sps.nct.cdf(-crit, df, nc))  # scipy: NaN far in the tail, ~0
    return sps.nct.sf(crit, df, nc) + wrong_side


@pytest.mark.parametrize("n,sd", [(3, 0.5), (5, 1.2), (12, 0.8)])
def test_minimum_detectable_effect_has_80_percent_power_by_hand(n, sd):
    by_hand = optimize.brentq(lambda e: _power_by_hand(e, sd, n) - 0.8, 1e-6, 10 * sd)
    assert stats.minimum_detectable_effect(sd, n) == pytest.approx(by_hand, rel=1e-4)


def _factorial(interaction: float, rng) -> tuple[pd.DataFrame, list[str]]:
    """A 2 x 3 full factorial over 4 seeds: main effects of a and b, and ``interaction`` points
    added where a=1 and b=2."""
    design = make_design({}, {"n_s": [5, 10], "z_dim": [10, 50, 100]}, seeds=[0, 1, 2, 3])
    offsets = rng.normal(0.0, 1.0, size=4)
    rows = []
    for run in design.runs:
        s = run.cell.settings
        value = 80.0 + 1.5 * (s["n_s"] == 10) + 1.0 * (s["z_dim"] == 100)
        value += interaction * ((s["n_s"] == 10) and (s["z_dim"] == 100))
        value += offsets[run.seed] + rng.normal(0.0, 0.5)
        rows.append(dict(cell=run.cell.id, seed=run.seed, value=value, status="completed", **s))
    return pd.DataFrame(rows), ["n_s", "z_dim"]


def test_anova_finds_a_planted_interaction_and_not_a_missing_one():
    frame, factors = _factorial(interaction=2.0, rng=np.random.default_rng(15))
    result = stats.anova(frame, factors)
    p = result.table.set_index("term")["p"]
    assert list(result.table["term"]) == ["seed (block)", "n_s", "z_dim", "n_s × z_dim", "residual"]
    assert p["n_s × z_dim"] < 1e-3 and p["n_s"] < 1e-3 and p["z_dim"] < 1e-3
    assert result.n == 24 and result.n_left_out == 0 and result.note == ""
    # residual df: 24 runs - 1 - 3 (seeds) - 1 - 2 - 2
    assert result.table.set_index("term").loc["residual", "df"] == 15
    frame, _ = _factorial(interaction=0.0, rng=np.random.default_rng(15))
    p0 = stats.anova(frame, factors).table.set_index("term")["p"]
    assert p0["n_s × z_dim"] > 0.05 and p0["n_s"] < 1e-3


def test_anova_counts_failed_runs_and_says_when_it_cannot_test():
    frame, factors = _factorial(interaction=0.0, rng=np.random.default_rng(16))
    frame.loc[3, "status"] = "failed"
    result = stats.anova(frame, factors)
    assert result.n == 23 and result.n_left_out == 1 and "1 run(s)" in result.note
    # one seed and one run per cell: sums of squares, but nothing left to test against
    one_seed = frame[frame["seed"] == 1]
    saturated = stats.anova(one_seed, factors)
    assert saturated.table["F"].isna().all() and "no residual" in saturated.note
    # a whole cell failed: the factors are no longer crossed
    cell = frame["cell"].iloc[0]
    gone = frame.assign(status=np.where(frame["cell"] == cell, "failed", "completed"))
    assert "not crossed" in stats.anova(gone, factors).note
    # a control cell repeats the reference's levels: it must be left out
    twin = frame[frame["cell"] == cell].assign(cell="control")
    with pytest.raises(ValueError, match="leave out control cells"):
        stats.anova(pd.concat([frame, twin]), factors)


# ------------------------------------------------------------------ golden values


GOLDEN = pd.DataFrame(
    {
        "cell": ["A"] * 3 + ["B"] * 3 + ["C"] * 3,
        "seed": [0, 1, 2] * 3,
        "value": [80.0, 81.5, 83.0, 84.0, 85.0, 86.0, 79.0, 82.0, 82.5],
        "status": "completed",
        "status_reason": None,
    }
)


def test_golden_cell_summary_of_a_3x3_table():
    summary = stats.cell_summary(GOLDEN).set_index("cell")
    t975 = 4.302652729911275  # t quantile 0.975, 2 degrees of freedom
    # A: mean 81.5, sample std 1.5, half-width t * 1.5 / sqrt(3)
    assert summary.loc["A", "mean"] == pytest.approx(81.5)
    assert summary.loc["A", "std"] == pytest.approx(1.5)
    half = t975 * 1.5 / np.sqrt(3)
    assert summary.loc["A", "ci_low"] == pytest.approx(81.5 - half)
    assert summary.loc["A", "ci_high"] == pytest.approx(81.5 + half)
    assert summary.loc["A", "ci_low"] == pytest.approx(77.773793, abs=1e-6)
    # B: mean 85, std 1
    assert summary.loc["B", "ci_high"] == pytest.approx(85.0 + t975 / np.sqrt(3))
    assert (summary["n"] == 3).all() and (summary["failure_rate"] == 0).all()


def test_golden_paired_comparisons_and_holm_of_a_3x3_table():
    table = stats.compare(GOLDEN, [_contrast("B", "A"), _contrast("C", "A")]).set_index("contrast")
    b, c = table.loc["B vs A"], table.loc["C vs A"]
    # B - A per seed: 4, 3.5, 3 -> mean 3.5, sd 0.5, t = 3.5 / (0.5 / sqrt 3) = 12.124
    t_b = 3.5 / (0.5 / np.sqrt(3))
    p_b = 2 * sps.t.sf(t_b, 2)
    assert b["diff"] == pytest.approx(3.5) and b["sd_diff"] == pytest.approx(0.5)
    assert b["p_t"] == pytest.approx(p_b) and b["p_t"] == pytest.approx(0.006734, abs=1e-6)
    assert b["t_low"] == pytest.approx(3.5 - 4.302652729911275 * 0.5 / np.sqrt(3))
    # three positive differences: the exact signed-rank p is its floor, 2 / 2^3
    assert b["p_wilcoxon"] == pytest.approx(0.25) and b["wilcoxon_min_p"] == 0.25
    # C - A per seed: -1, 0.5, -0.5
    d = np.array([-1.0, 0.5, -0.5])
    t_c = d.mean() / (d.std(ddof=1) / np.sqrt(3))
    p_c = 2 * sps.t.sf(abs(t_c), 2)
    assert c["diff"] == pytest.approx(-1 / 3) and c["p_t"] == pytest.approx(p_c)
    # Holm over 2: the smaller p times 2, the larger times 1 (never below the first)
    assert b["p_holm"] == pytest.approx(2 * p_b)
    assert c["p_holm"] == pytest.approx(max(p_c, 2 * p_b))
    assert b["verdict"] == "better" and c["verdict"] == "not distinguishable with 3 seeds"
    assert (
        stats.summary_line(b)
        == f"better: +3.50 [{b['ci_low']:+.2f}, {b['ci_high']:+.2f}] (t), Holm p = {2 * p_b:.2g}"
    )
    assert stats.summary_line(c).startswith("not distinguishable with 3 seeds: -0.33 [")
    assert stats.summary_line(c).endswith(f"smallest detectable difference {c['mde']:.2f}")
    # MDE of C vs A from its spread: the effect with 80 % power, by hand
    by_hand = optimize.brentq(lambda e: _power_by_hand(e, d.std(ddof=1), 3) - 0.8, 1e-6, 10)
    assert c["mde"] == pytest.approx(by_hand, rel=1e-4)


def test_holm_across_metrics_of_one_report():
    acc = stats.compare(GOLDEN, [_contrast("B", "A")], better="max", metric="test_acc")
    mte = GOLDEN.assign(value=GOLDEN["value"] / 100)
    mte_t = stats.compare(mte, [_contrast("B", "A")], better="min", metric="mte")
    both = stats.correct(pd.concat([acc, mte_t], ignore_index=True))
    assert both["p_holm"].tolist() == pytest.approx([2 * acc["p"].iloc[0], 2 * mte_t["p"].iloc[0]])
    assert both["verdict"].tolist() == ["better", "worse"]  # a higher MTE is worse


# ------------------------------------------------------------------ degenerate cases


def test_one_seed_gives_no_interval_and_no_test():
    one = GOLDEN[GOLDEN["seed"] == 0]
    summary = stats.cell_summary(one).set_index("cell")
    assert (
        np.isnan(summary.loc["A", "ci_low"]) and summary.loc["A", "note"] == "1 seed: no interval"
    )
    row = stats.compare(one, [_contrast("B", "A")]).iloc[0]
    assert row["n"] == 1 and row["diff"] == 4.0 and np.isnan(row["p"]) and np.isnan(row["p_holm"])
    assert row["verdict"] == "not distinguishable with 1 seed" and "no test" in row["note"]


def test_equal_differences_fall_back_to_the_signed_rank_test():
    flat = GOLDEN.copy()
    flat.loc[flat["cell"] == "B", "value"] = [81.0, 82.5, 84.0]  # A + 1 on every seed
    row = stats.compare(flat, [_contrast("B", "A")]).iloc[0]
    assert row["diff"] == pytest.approx(1.0) and row["ci_low"] == row["ci_high"] == row["diff"]
    assert np.isnan(row["p_t"]) and row["p_source"] == "wilcoxon" and row["p"] == 0.25
    assert np.isnan(row["mde"]) and "cannot go below p = 0.25" in row["note"]
    assert row["verdict"] == "not distinguishable with 3 seeds"
    same = stats.compare(GOLDEN, [_contrast("A", "A")]).iloc[0]
    assert same["diff"] == 0 and same["p"] == 1.0


def test_a_seed_failed_in_one_cell_is_dropped_from_the_pair_and_counted():
    frame = GOLDEN.copy()
    frame.loc[(frame["cell"] == "B") & (frame["seed"] == 1), "status"] = "failed"
    frame.loc[(frame["cell"] == "B") & (frame["seed"] == 1), "status_reason"] = "diverged: kl nan"
    frame.loc[(frame["cell"] == "C") & (frame["seed"] == 2), "status"] = "failed"
    row = stats.compare(frame, [_contrast("B", "A")]).iloc[0]
    assert row["n"] == 2 and row["n_dropped"] == 1 and row["dropped_seeds"] == "1"
    assert row["diff"] == pytest.approx((4.0 + 3.0) / 2) and "seed 1 dropped" in row["note"]
    summary = stats.cell_summary(frame).set_index("cell")
    assert summary.loc["B", "n_failed"] == 1 and summary.loc["B", "n_diverged"] == 1
    assert summary.loc["C", "failure_rate"] == pytest.approx(1 / 3)
    # a cell averaged over several: a seed counts only where all of them have a value
    pairs, dropped = stats.paired_values(frame, ["B", "C"], ["A"])
    assert pairs["seed"].tolist() == [0] and dropped == [1, 2]


def test_every_seed_failed_gives_a_row_not_nan_soup():
    frame = GOLDEN.assign(status="failed", status_reason="boom")
    summary = stats.cell_summary(frame)
    assert (summary["failure_rate"] == 1.0).all() and (summary["n"] == 0).all()
    assert summary["note"].str.startswith("every finished seed failed").all()
    row = stats.compare(frame, [_contrast("B", "A")]).iloc[0]
    assert row["n"] == 0 and row["n_dropped"] == 3 and row["verdict"].endswith("with 0 seeds")
    assert "no seed has a value on both sides" in row["note"]


def test_unfinished_runs_and_missing_values_are_not_failures_and_duplicates_are_refused():
    frame = GOLDEN.copy()
    frame.loc[0, "status"] = "running"
    frame.loc[4, "value"] = np.nan  # B seed 1 completed without logging the metric
    summary = stats.cell_summary(frame).set_index("cell")
    assert summary.loc["A", "n_unfinished"] == 1 and summary.loc["A", "failure_rate"] == 0
    assert summary.loc["A", "n"] == 2
    assert summary.loc["B", "n_missing"] == 1 and summary.loc["B", "n_failed"] == 0
    assert summary.loc["B", "n"] == 2 and summary.loc["B", "n_runs"] == 3
    with pytest.raises(ValueError, match="cell A has seed 0 more than once"):
        stats.cell_summary(pd.concat([GOLDEN, GOLDEN.iloc[[0]]]))


def test_bootstrap_interval_is_shown_from_ten_seeds():
    rng = np.random.default_rng(17)
    few = stats.compare_pair(_table({"a": 1.0, "b": 2.0}, range(9), 0.5, rng), ["b"], ["a"])
    many = stats.compare_pair(_table({"a": 1.0, "b": 2.0}, range(12), 0.5, rng), ["b"], ["a"])
    assert few["ci_method"] == "t" and np.isnan(few["boot_low"])
    assert many["ci_method"] == "bootstrap" and many["ci_low"] == many["boot_low"]
    # both intervals estimate the same thing: they agree to a fraction of their width
    width = many["t_high"] - many["t_low"]
    assert abs(many["boot_low"] - many["t_low"]) < 0.3 * width
    assert abs(many["boot_high"] - many["t_high"]) < 0.3 * width


# ------------------------------------------------------------------ runs table, search studies


def _final_runs(rng, gap: float) -> pd.DataFrame:
    rows = []
    for rank, cfg, mean in ((1, "cfgA", 80.0 + gap), (2, "cfgB", 80.0), (3, "cfgC", 75.0)):
        for seed in range(4):
            rows.append(
                dict(
                    kind="final",
                    config_id=cfg,
                    final_rank=rank,
                    seed=seed,
                    status="completed",
                    test_acc=mean + seed * 0.7 + rng.normal(0, 0.3),
                )
            )
    rows.append(dict(kind="search", config_id="cfgA", seed=0, status="completed", test_acc=99.0))
    return schema.conform(pd.DataFrame(rows))


def test_final_re_runs_best_against_runner_up():
    summary, table = stats.final_seed_statistics(
        _final_runs(np.random.default_rng(18), gap=3.0), "test_acc"
    )
    assert summary["final_rank"].tolist() == [1, 2, 3] and (summary["n"] == 4).all()
    assert table["contrast"].tolist() == ["rank 1 vs rank 2", "rank 1 vs rank 3"]
    assert bool(table["distinguishable"].iloc[0]) and table["verdict"].iloc[0] == "better"
    summary, none = stats.final_seed_statistics(schema.empty_frame(), "test_acc")
    assert summary.empty and none.empty
    _, tied = stats.final_seed_statistics(_final_runs(np.random.default_rng(18), 0.0), "test_acc")
    assert not tied["distinguishable"].iloc[0]
    assert tied["verdict"].iloc[0] == "not distinguishable with 4 seeds"


def test_tidy_reads_cells_from_the_runs_table_and_the_cells_round_trip(tmp_path):
    runs = _final_runs(np.random.default_rng(19), 1.0)
    runs.loc[runs["config_id"] == "cfgC", ["cell", "cell_label"]] = ("cell-1234abcd", "n_s=5")
    frame = stats.tidy(runs, "test_acc", kinds=["final"])
    assert set(frame["cell"]) == {"cfgA", "cfgB", "cell-1234abcd"}  # config_id where no cell
    assert (frame["outcome"] == stats.OK).all() and len(frame) == 12
    path = schema.write_parquet(runs, tmp_path / "runs.parquet")
    back = schema.read_parquet(path)
    pd.testing.assert_frame_equal(back, schema.conform(runs))
    assert back["cell_label"].dropna().unique().tolist() == ["n_s=5"]
    with pytest.raises(ValueError, match="no column 'mte_nope'"):
        stats.tidy(runs, "mte_nope")


def test_interaction_plot_draws_one_line_per_trace_level(tmp_path):
    frame, _ = _factorial(interaction=2.0, rng=np.random.default_rng(20))
    means = stats.interaction_means(frame, "z_dim", "n_s")
    assert len(means) == 6 and (means["n"] == 4).all()
    # each point's mean is the mean over seeds of that cell
    one = frame[(frame["n_s"] == 10) & (frame["z_dim"] == 100)]["value"].mean()
    assert means.set_index(["x", "trace"]).loc[(100, 10), "mean"] == pytest.approx(one)
    fig = plots.interaction(means, "z_dim", "n_s", "test_acc")
    ax = fig.axes[0]
    assert len(ax.get_lines()) >= 2 and len(ax.get_legend().get_texts()) == 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "50", "100"]
    fig.savefig(tmp_path / "interaction.png")
    assert (tmp_path / "interaction.png").stat().st_size > 1000
    assert plots.interaction(means.iloc[0:0], "z_dim", "n_s", "test_acc") is None


def test_the_report_path_from_a_design_and_a_runs_table(tmp_path):
    """What the report does: runs table (schema dtypes, parquet round trip) -> tidy frame per
    metric -> the design's contrasts -> one Holm family over both metrics -> ANOVA and the
    interaction plot over the factorial's cells (the control left out)."""
    design = make_design(
        {"beta": 250.0},
        {"beta": [0, 250], "n_s": [5, 10]},
        seeds=[0, 1, 2, 3],
        controls={"generator not trained": {"n_g": 0}},
    )
    rng = np.random.default_rng(21)
    rows = []
    for run in design.runs:
        cfg = design.config(run)
        acc = 80.0 + 2.0 * (cfg.beta > 0) + 0.3 * run.seed + rng.normal(0, 0.3)
        rows.append(
            dict(
                kind="final",
                cell=run.cell.id,
                cell_label=run.cell.label,
                trial_id=run.trial_id,
                status="completed",
                beta=cfg.beta,
                n_s=cfg.n_s,
                n_g=cfg.n_g,
                seed=cfg.seed,
                test_acc=acc,
                mte=0.5 - 0.01 * acc + rng.normal(0, 0.001),
            )
        )
    rows[0].update(status="failed", status_reason="diverged: kl became nan at iteration 7")
    runs = schema.read_parquet(schema.write_parquet(pd.DataFrame(rows), tmp_path / "r.parquet"))
    contrasts = design.contrasts()
    tables = []
    for metric, better in (("test_acc", "max"), ("mte", "min")):
        frame = stats.tidy(runs, metric, factors=["beta", "n_s"])
        tables.append(stats.compare(frame, contrasts, better=better, metric=metric, holm=False))
    table = stats.correct(pd.concat(tables, ignore_index=True))
    assert len(table) == 6 and "verdict" not in tables[0]
    beta = table[table["factor"] == "beta"].set_index("metric")
    # beta = 0 loses accuracy and raises MTE: worse on both, in each metric's own direction
    assert beta.loc["test_acc", "diff"] < 0 and beta.loc["mte", "diff"] > 0
    assert (beta["verdict"] == "worse").all()
    assert beta.loc["test_acc", "dropped_seeds"] == "0"  # seed 0 failed in a beta=0 cell
    assert beta.loc["test_acc", "ci_low"] < -2.0 + 0.5 and beta.loc["test_acc", "level"] == 0.0
    control = table[table["factor"] == "generator not trained"].iloc[0]
    assert control["verdict"] == "not distinguishable with 4 seeds" and control["mde"] > 0
    frame = stats.tidy(runs, "test_acc", factors=["beta", "n_s"])
    summary = stats.cell_summary(frame)
    assert summary["n_diverged"].sum() == 1 and len(summary) == 5
    factorial = [c.id for c in design.cells if c.control is None]
    result = stats.anova(frame, ["beta", "n_s"], cells=factorial)
    p = result.table.set_index("term")["p"]
    assert p["beta"] < 1e-3 and p["n_s"] > 0.01 and result.n_left_out == 1
    means = stats.interaction_means(frame, "n_s", "beta", cells=factorial)
    assert plots.interaction(means, "n_s", "beta", "test_acc") is not None
