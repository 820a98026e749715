"""Pareto fronts, hypervolume and the choice of re-runs, on hand-made trial sets.

The front is checked against a brute-force O(n^2) dominance test on random sets (fixed seeds,
integer values so that ties and duplicates occur, every mix of directions); hypervolumes against
values computed by hand; the re-run choice against its stated properties.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from zskt_ray.pareto import (
    as_values,
    choose_reruns,
    extremes,
    hypervolume,
    hypervolume_history,
    pareto_front,
    reference_point,
)


def _dominates(a: np.ndarray, b: np.ndarray, modes: tuple[str, ...]) -> bool:
    """a is at least as good as b everywhere and better somewhere (brute force, no library)."""
    better_or_equal = all((x >= y) if m == "max" else (x <= y) for x, y, m in zip(a, b, modes))
    better = any((x > y) if m == "max" else (x < y) for x, y, m in zip(a, b, modes))
    return better_or_equal and better


def _brute_front(v: np.ndarray, modes: tuple[str, ...]) -> list[int]:
    ok = [i for i in range(len(v)) if np.isfinite(v[i]).all()]
    return [i for i in ok if not any(_dominates(v[j], v[i], modes) for j in ok if j != i)]


def _random_set(seed: int, n: int, m: int, nan_rows: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 6, size=(n, m)).astype(float)  # few levels: ties and duplicates
    if nan_rows:
        v[rng.choice(n, nan_rows, replace=False), rng.integers(0, m)] = np.nan
    return v


MODE_SETS = [
    ("max", "min"),
    ("min", "max"),
    ("min", "min"),
    ("max", "max"),
    ("max", "min", "min"),
    ("min", "max", "min"),
    ("max", "min", "min", "max"),
]


@pytest.mark.parametrize("modes", MODE_SETS)
@pytest.mark.parametrize("seed", range(6))
def test_front_equals_brute_force(modes, seed):
    for n in (1, 2, 7, 40):
        v = _random_set(seed * 101 + n, n, len(modes), nan_rows=n // 7)
        assert pareto_front(v, modes).tolist() == _brute_front(v, modes), (n, v)


def test_front_with_mixed_directions_by_hand():
    # (val_acc max, val_mte min): C is dominated by B (lower accuracy, higher MTE).
    v = [[0.9, 0.3], [0.8, 0.1], [0.7, 0.2], [0.95, 0.5]]
    assert pareto_front(v, ["max", "min"]).tolist() == [0, 1, 3]
    # Flipping the MTE direction changes the front: now the highest MTE is good.
    assert pareto_front(v, ["max", "max"]).tolist() == [3]


def test_equal_rows_are_all_on_the_front():
    v = [[1.0, 2.0], [1.0, 2.0], [2.0, 3.0]]
    assert pareto_front(v, ["min", "min"]).tolist() == [0, 1]


def test_hypervolume_2d_golden():
    # In minimised coordinates A(-0.9, 0.3), B(-0.8, 0.1), ref (-0.5, 0.5): boxes 0.4 x 0.2 and
    # 0.3 x 0.4 overlapping in 0.3 x 0.2 -> 0.08 + 0.12 - 0.06 = 0.14. C (dominated) adds nothing.
    v = [[0.9, 0.3], [0.8, 0.1], [0.7, 0.2]]
    assert hypervolume(v, ["max", "min"], [0.5, 0.5]) == pytest.approx(0.14, abs=1e-12)
    assert hypervolume(v[:1], ["max", "min"], [0.5, 0.5]) == pytest.approx(0.08, abs=1e-12)
    # One point: a box 0.4 x 0.8.
    assert hypervolume([[0.9, 0.2]], ["max", "min"], [0.5, 1.0]) == pytest.approx(0.32)


def test_hypervolume_3d_golden():
    # Accuracy (max) and two minimised objectives; in minimised coordinates three boxes of volume
    # 2 that overlap pairwise in a unit cube, all three in the same one: 3*2 - 3*1 + 1 = 4.
    v = [[2.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    modes = ["max", "min", "min"]
    assert hypervolume(v, modes, [0.0, 2.0, 2.0]) == pytest.approx(4.0)
    # A dominated point and a point outside the reference box add nothing.
    more = [*v, [1.0, 1.5, 1.5], [-1.0, 0.0, 0.0]]
    assert hypervolume(more, modes, [0.0, 2.0, 2.0]) == pytest.approx(4.0)


def test_hypervolume_ignores_missing_values():
    v = [[0.9, 0.3], [np.nan, 0.0], None, [0.8, 0.1]]
    assert hypervolume(v, ["max", "min"], [0.5, 0.5]) == pytest.approx(0.14)


def test_reference_point_golden():
    # Front A(0.9, 0.3), B(0.8, 0.1): nadir (0.8, 0.3), ranges (0.1, 0.2), 10 % beyond the nadir.
    v = [[0.9, 0.3], [0.8, 0.1], [0.1, 0.9]]  # the outlier is dominated: it does not move ref
    assert reference_point(v, ["max", "min"]) == pytest.approx([0.79, 0.32])
    # A front of one point: the margin is taken of the values themselves (of 1 for a zero).
    assert reference_point([[0.9, 0.0]], ["max", "min"]) == pytest.approx([0.81, 0.1])


def test_reference_point_is_worse_than_every_front_point():
    for seed, modes in itertools.product(range(5), MODE_SETS):
        v = _random_set(seed, 30, len(modes))
        ref = reference_point(v, modes)
        for i in pareto_front(v, modes):
            for x, r, m in zip(v[i], ref, modes):
                assert (x > r) if m == "max" else (x < r)


@pytest.mark.parametrize("modes", MODE_SETS)
def test_hypervolume_history_never_decreases_and_ends_at_the_total(modes):
    for seed in range(5):
        v = np.random.default_rng(seed).normal(size=(30, len(modes)))
        v[3] = np.nan
        h = hypervolume_history(v, modes)
        assert len(h) == len(v)
        assert (np.diff(h) >= 0).all()
        assert h[-1] == pytest.approx(hypervolume(v, modes, reference_point(v, modes)))
        assert h[3] == h[2]  # a trial without values adds nothing


def test_hypervolume_history_by_hand():
    # Trial 1 adds 0.08, trial 2 makes 0.14, trial 3 is dominated, trial 4 has no values.
    v = [[0.9, 0.3], [0.8, 0.1], [0.7, 0.2], None]
    h = hypervolume_history(v, ["max", "min"], ref=[0.5, 0.5])
    assert h == pytest.approx([0.08, 0.14, 0.14, 0.14])


def test_choose_reruns_extremes_then_the_knee():
    # Minimised 2-D front (0,4), (1,1), (3,0.5), (4,0); ref (4.4, 4.4). After the two extremes the
    # knee (1,1) adds 9.0, (3,0.5) only 3.5 (worked out in the module's terms by hand).
    v = [[0.0, 4.0], [1.0, 1.0], [3.0, 0.5], [4.0, 0.0], [2.0, 2.0]]
    modes = ["min", "min"]
    assert reference_point(v, modes) == pytest.approx([4.4, 4.4])
    assert choose_reruns(v, modes, 1) == [0]
    assert choose_reruns(v, modes, 2) == [0, 3]
    assert choose_reruns(v, modes, 3) == [0, 3, 1]
    assert choose_reruns(v, modes, 10) == [0, 3, 1, 2]  # (2,2) is dominated by (1,1)


def test_choose_reruns_does_not_depend_on_units():
    for seed, modes in itertools.product(range(4), MODE_SETS[:5]):
        v = np.random.default_rng(seed).uniform(size=(25, len(modes)))
        scaled = v * np.array([100.0, 1e-3, 7.0, 1.0][: len(modes)])
        assert choose_reruns(v, modes, 5) == choose_reruns(scaled, modes, 5)


@pytest.mark.parametrize("modes", MODE_SETS)
def test_choose_reruns_properties(modes):
    for seed in range(8):
        v = _random_set(seed, 30, len(modes), nan_rows=3)
        front = set(_brute_front(v, modes))
        distinct_front = {tuple(v[i]) for i in front}
        for top_k in (1, 2, 3, 5, 50):
            chosen = choose_reruns(v, modes, top_k)
            assert len(chosen) == len(set(chosen)) <= top_k
            assert set(chosen) <= front  # non-dominated, by the brute-force test
            assert len(chosen) == min(top_k, len(distinct_front))
            assert len({tuple(v[i]) for i in chosen}) == len(chosen)  # no duplicate values
            # the extremes come first: the best value of each objective is among the re-runs
            ext = extremes(v, modes)
            assert chosen[: len(ext)] == ext[:top_k]
            if top_k >= len(ext):
                for j, m in enumerate(modes):
                    col = v[[i for i in front], j]
                    best = col.max() if m == "max" else col.min()
                    assert best in v[chosen, j]
            assert choose_reruns(v, modes, top_k) == chosen  # deterministic


def test_extremes_break_ties_on_the_other_objectives_then_trial_order():
    # Two trials share the best accuracy; the one with the lower MTE is the accuracy extreme.
    v = [[0.9, 0.4], [0.9, 0.2], [0.5, 0.1], [0.5, 0.1]]
    assert extremes(v, ["max", "min"]) == [1, 2]  # trial 3 equals trial 2: the earlier wins
    # One trial best in both: listed once.
    assert extremes([[0.9, 0.1], [0.8, 0.2]], ["max", "min"]) == [0]


def test_degenerate_inputs():
    modes = ["max", "min"]
    # one trial
    assert pareto_front([[0.5, 0.5]], modes).tolist() == [0]
    assert choose_reruns([[0.5, 0.5]], modes, 3) == [0]
    assert hypervolume_history([[0.5, 0.5]], modes) > 0
    # all equal: all on the front, one re-run
    same = [[0.5, 0.5]] * 4
    assert pareto_front(same, modes).tolist() == [0, 1, 2, 3]
    assert choose_reruns(same, modes, 3) == [0]
    # a front of one point that dominates the rest
    v = [[0.5, 0.5], [0.9, 0.1], [0.6, 0.3]]
    assert pareto_front(v, modes).tolist() == [1]
    assert choose_reruns(v, modes, 3) == [1]
    # NaN values and trials without values take no part
    v = [[np.nan, 0.0], None, [0.6, np.inf], [0.5, 0.5]]
    assert pareto_front(v, modes).tolist() == [3]
    assert choose_reruns(v, modes, 2) == [3]
    # nothing usable at all
    empty = [None, [np.nan, np.nan]]
    assert pareto_front(empty, modes).tolist() == []
    assert choose_reruns(empty, modes, 2) == []
    assert hypervolume(empty, modes, [0.0, 1.0]) == 0.0
    assert hypervolume_history(empty, modes).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="no trial has finite values"):
        reference_point(empty, modes)
    assert pareto_front([], modes).tolist() == []


def test_bad_arguments_are_refused():
    v = [[0.5, 0.5]]
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        pareto_front(v, ["max", "maximize"])
    with pytest.raises(ValueError, match="rows have 2 objectives, expected 1"):
        pareto_front(v, ["max"])
    with pytest.raises(ValueError, match="sequence"):
        pareto_front(v, "max")
    with pytest.raises(ValueError, match="top_k"):
        choose_reruns(v, ["max", "min"], 0)
    with pytest.raises(ValueError, match="reference point"):
        hypervolume(v, ["max", "min"], [0.0])
    with pytest.raises(ValueError, match="different numbers of objectives"):
        as_values([[1.0, 2.0], [1.0]])
    with pytest.raises(ValueError, match="margin"):
        reference_point(v, ["max", "min"], margin=0.0)


def test_choose_reruns_equal_gains_go_to_the_earlier_trial():
    # A front symmetric about the diagonal: (1,2) and (2,1) add the same volume after the extremes.
    v = [[0.0, 4.0], [4.0, 0.0], [1.0, 2.0], [2.0, 1.0]]
    assert choose_reruns(v, ["min", "min"], 3) == [0, 1, 2]
    assert choose_reruns(v[:2] + v[2:][::-1], ["min", "min"], 3) == [0, 1, 2]
