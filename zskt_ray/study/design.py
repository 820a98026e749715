"""Designed ablations: from a base loop configuration, factors and seeds to cells and runs.

A *factor* is a :class:`~zskt_ray.config.DistillConfig` field with two or more levels. A design
crosses every level of every factor (``full_factorial``) or moves one factor at a time away from
its reference level while the others stay at theirs (``one_at_a_time``). Named *control* cells
(for example "generator not trained": ``n_g: 0``) are the reference cell with a few settings
overridden. Every cell runs with every seed, and seed s is the same seed in every cell, so cells
can be compared seed by seed (a paired design; section 8 of the method doc).

Pure: no Ray, Optuna, MLflow or pydantic. Bad input raises :class:`DesignError` with one line
naming the factor, level, control or seed.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import OBJECTIVE_FIELDS, DistillConfig, from_dict, objective_name, to_dict
from ..names import DESIGNS, FULL_FACTORIAL, ONE_AT_A_TIME

# Fields that say where or how a run executes, or which data it reads, rather than what the
# method does: varying them is not an ablation of the method. ``seed`` is the design's own axis.
NOT_FACTORS = ("seed", "dataset", "data_root", "download", "teacher_path", "device")


class DesignError(ValueError):
    """A one-line problem with an ablation design, naming the factor, level, control or seed."""


@dataclasses.dataclass(frozen=True)
class Factor:
    """A loop setting and its levels (typed as the field), with the level others compare to."""

    name: str
    levels: tuple[Any, ...]
    reference: Any


@dataclasses.dataclass(frozen=True)
class Cell:
    """One configuration of the design.

    ``id`` is a hash of ``settings`` alone, so it is the same in every design (and every resumed
    run) that holds this configuration; ``label`` is what a reader sees.
    """

    id: str
    label: str
    settings: Mapping[str, Any]  # factor levels (and a control's overrides), typed as the fields
    control: str | None = None  # the control's name; None for a cell of the design proper
    is_reference: bool = False  # every factor at its reference level


@dataclasses.dataclass(frozen=True)
class Run:
    """One cell with one seed."""

    cell: Cell
    seed: int

    @property
    def trial_id(self) -> str:
        return f"{self.cell.id}-seed{self.seed}"

    @property
    def overrides(self) -> dict[str, Any]:
        """The settings this run changes on the base configuration."""
        return {**self.cell.settings, "seed": self.seed}


@dataclasses.dataclass(frozen=True)
class Contrast:
    """A comparison the analysis makes: ``treatment`` cells against ``reference`` cells.

    Per seed, the value of each side is the mean over its cells; the two sides hold matching
    cells in the same order (equal in every other factor), so a full factorial's main effect
    is the difference averaged over the other factors' levels.
    """

    label: str
    factor: str  # the factor, or the control's name
    level: Any  # the factor's level, or None for a control
    reference_level: Any
    treatment: tuple[str, ...]  # cell ids
    reference: tuple[str, ...]  # cell ids


@dataclasses.dataclass(frozen=True)
class Design:
    """Cells, seeds and the comparisons of an ablation."""

    kind: str
    base: DistillConfig
    factors: tuple[Factor, ...]
    cells: tuple[Cell, ...]
    seeds: tuple[int, ...]

    @property
    def reference_cell(self) -> Cell:
        return next(c for c in self.cells if c.is_reference)

    def cell(self, cell_id: str) -> Cell:
        for c in self.cells:
            if c.id == cell_id:
                return c
        raise KeyError(f"no cell {cell_id!r} in this design")

    @property
    def runs(self) -> tuple[Run, ...]:
        """Every cell with every seed, seed by seed: a study cut short still holds whole seeds."""
        return tuple(Run(c, s) for s in self.seeds for c in self.cells)

    def config(self, run: Run) -> DistillConfig:
        """The loop configuration of ``run``: the base with the run's overrides."""
        return from_dict(DistillConfig, {**to_dict(self.base), **run.overrides})

    def contrasts(self) -> tuple[Contrast, ...]:
        """Each non-reference level of each factor against the reference level, then each
        control against the reference cell."""
        out = [c for f in self.factors for c in self._factor_contrasts(f)]
        ref = self.reference_cell
        for cell in self.cells:
            if cell.control is not None:
                out.append(
                    Contrast(
                        f"{cell.label} vs {ref.label}",
                        cell.control,
                        None,
                        None,
                        (cell.id,),
                        (ref.id,),
                    )
                )
        return tuple(out)

    def _factor_contrasts(self, factor: Factor) -> list[Contrast]:
        design_cells = [c for c in self.cells if c.control is None]
        others = [f.name for f in self.factors if f.name != factor.name]
        if self.kind == ONE_AT_A_TIME:  # the cells where every other factor is at its reference
            pool = [
                c
                for c in design_cells
                if all(c.settings[o] == self.factor(o).reference for o in others)
            ]
        else:
            pool = design_cells
        ref_cells = [c for c in pool if c.settings[factor.name] == factor.reference]
        averaged = (
            f", averaged over {', '.join(others)}" if others and self.kind == FULL_FACTORIAL else ""
        )
        out = []
        for level in factor.levels:
            if level == factor.reference:
                continue
            treat = []
            for r in ref_cells:  # the matching cell: the same in every other factor
                want = {**r.settings, factor.name: level}
                treat.append(next(c for c in pool if dict(c.settings) == want))
            label = self._level_label(factor, level) + " vs "
            label += self._level_label(factor, factor.reference)
            out.append(
                Contrast(
                    label + averaged,
                    factor.name,
                    level,
                    factor.reference,
                    tuple(c.id for c in treat),
                    tuple(c.id for c in ref_cells),
                )
            )
        return out

    def _level_label(self, factor: Factor, level: Any) -> str:
        """``name=level``; for an objective setting the method it makes with every other factor
        at its reference ("DFAD-style (adversarial L1)")."""
        if factor.name not in OBJECTIVE_FIELDS:
            return f"{factor.name}={_show(level)}"
        settings = {**{f.name: f.reference for f in self.factors}, factor.name: level}
        return objective_name(from_dict(DistillConfig, {**to_dict(self.base), **settings}))

    def factor(self, name: str) -> Factor:
        return next(f for f in self.factors if f.name == name)

    def cell_table(self) -> list[dict[str, Any]]:
        """One row per cell: ``cell``, ``cell_label``, ``control`` and each factor's value
        (a control's value of a factor is the one it runs with)."""
        rows = []
        for c in self.cells:
            row = {"cell": c.id, "cell_label": c.label, "control": c.control}
            row.update({f.name: c.settings.get(f.name) for f in self.factors})
            rows.append(row)
        return rows


def make_design(
    base: DistillConfig | Mapping[str, Any],
    factors: Mapping[str, Sequence[Any]],
    design: str = FULL_FACTORIAL,
    seeds: Sequence[int] = (0, 1, 2),
    controls: Mapping[str, Mapping[str, Any]] | None = None,
    references: Mapping[str, Any] | None = None,
) -> Design:
    """The cells and runs of an ablation.

    ``factors``: field -> levels. ``references``: field -> the level the others are compared
    to; by default the base configuration's value when it is a level, else the first level.
    ``controls``: name -> settings that override the reference cell.
    """
    if design not in DESIGNS:
        raise DesignError(f"design {design!r} is not one of {', '.join(DESIGNS)}")
    base_cfg = _base(base)
    if not factors and not controls:
        raise DesignError("an ablation needs at least one factor or control")
    references = dict(references or {})
    for name in references:
        if name not in factors:
            raise DesignError(f"references.{name}: not a factor of this design")
    checked = tuple(
        _factor(name, levels, base_cfg, references.get(name, _NO_REF))
        for name, levels in factors.items()
    )
    seed_tuple = _seeds(seeds)
    cells = _design_cells(design, checked, base_cfg)
    cells += _control_cells(controls or {}, cells, checked, base_cfg)
    return Design(design, base_cfg, checked, tuple(cells), seed_tuple)


_NO_REF = object()


def _base(base: DistillConfig | Mapping[str, Any]) -> DistillConfig:
    if isinstance(base, DistillConfig):
        return base
    try:
        return from_dict(DistillConfig, dict(base))
    except (KeyError, TypeError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) else str(e)
        raise DesignError(f"base: {msg}") from None


def _field_value(base: DistillConfig, settings: Mapping[str, Any], where: str) -> DistillConfig:
    """The base with ``settings``, built by the config's own checks; errors name ``where``."""
    try:
        return from_dict(DistillConfig, {**to_dict(base), **settings})
    except (KeyError, TypeError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) else str(e)
        raise DesignError(f"{where}: {msg}") from None


def _factor(name: str, levels: Any, base: DistillConfig, reference: Any) -> Factor:
    fields = [f.name for f in dataclasses.fields(DistillConfig)]
    if name in NOT_FACTORS:
        why = "seeds are the design's `seeds`" if name == "seed" else "not a setting of the method"
        raise DesignError(f"factor {name}: cannot be a factor ({why})")
    if name not in fields:
        close = difflib.get_close_matches(name, fields, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise DesignError(f"factor {name}: not a loop setting{hint}")
    if isinstance(levels, str | bytes) or not isinstance(levels, Sequence) or len(levels) < 2:
        raise DesignError(f"factor {name}: needs a list of at least 2 levels, got {levels!r}")
    typed = []
    for level in levels:
        value = getattr(_field_value(base, {name: level}, f"factor {name}, level {level!r}"), name)
        if value in typed:
            raise DesignError(f"factor {name}: level {_show(value)} is given twice")
        typed.append(value)
    if reference is _NO_REF:
        default = getattr(base, name)
        reference = default if default in typed else typed[0]
    else:
        ref = getattr(_field_value(base, {name: reference}, f"references.{name}"), name)
        if ref not in typed:
            shown = ", ".join(_show(v) for v in typed)
            raise DesignError(f"references.{name}: {_show(ref)} is not one of its levels [{shown}]")
        reference = ref
    return Factor(name, tuple(typed), reference)


def _seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    if isinstance(seeds, str | bytes) or not isinstance(seeds, Sequence) or not seeds:
        raise DesignError(f"seeds: needs a non-empty list of integers, got {seeds!r}")
    out: list[int] = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int):
            raise DesignError(f"seeds: {s!r} is not an integer")
        if s in out:
            raise DesignError(f"seeds: seed {s} is given twice")
        out.append(s)
    return tuple(out)


def _design_cells(kind: str, factors: tuple[Factor, ...], base: DistillConfig) -> list[Cell]:
    ref = {f.name: f.reference for f in factors}
    if kind == FULL_FACTORIAL:
        combos = [
            dict(zip(ref, values)) for values in itertools.product(*(f.levels for f in factors))
        ]
    else:
        combos = [dict(ref)]
        for f in factors:
            combos += [{**ref, f.name: v} for v in f.levels if v != f.reference]
    cells = []
    for settings in combos:
        # a combination may break a joint check
        cfg = _field_value(base, settings, f"cell {_settings_label(settings)}")
        label = _cell_label(settings, cfg)
        cells.append(Cell(cell_id(settings), label, settings, None, settings == ref))
    return cells


def _control_cells(
    controls: Mapping[str, Mapping[str, Any]],
    cells: list[Cell],
    factors: tuple[Factor, ...],
    base: DistillConfig,
) -> list[Cell]:
    ref = {f.name: f.reference for f in factors}
    # by the whole configuration a cell runs: a control that sets a value the reference cell
    # already has (e.g. adversarial_discrepancy: kl) would run the reference cell again
    seen = {_run_key(_field_value(base, c.settings, f"cell {c.label}")): c.label for c in cells}
    out = []
    for name, overrides in controls.items():
        where = f"control {name!r}"
        if not isinstance(name, str) or not name.strip():
            raise DesignError(f"controls: a control needs a name, got {name!r}")
        if not isinstance(overrides, Mapping) or not overrides:
            raise DesignError(f"{where}: needs a mapping of settings, got {overrides!r}")
        for key in overrides:
            if key in NOT_FACTORS:
                raise DesignError(f"{where}: {key} cannot be set by a control")
        cfg = _field_value(base, {**ref, **overrides}, where)
        settings = {**ref, **{k: getattr(cfg, k) for k in overrides}}
        cid, key = cell_id(settings), _run_key(cfg)
        if key in seen:
            raise DesignError(f"{where}: the same configuration as cell {seen[key]!r}")
        shown = {k: settings[k] for k in overrides}
        if any(f.name in OBJECTIVE_FIELDS for f in factors):  # named as the factor cells are
            label = f"{name}: {_cell_label(shown, cfg)}"
        else:
            label = f"{name} ({_settings_label(shown)})"
        seen[key] = label
        out.append(Cell(cid, label, settings, name, False))
    return out


def _run_key(cfg: DistillConfig) -> str:
    """What a cell runs, whatever settings spelled it: its whole configuration."""
    return json.dumps(to_dict(cfg), sort_keys=True, default=str)


def cell_id(settings: Mapping[str, Any]) -> str:
    """Stable id of a cell's settings: the same settings give the same id in any order."""
    values = {}
    for key, value in settings.items():
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 250 and 250.0 are one setting
        values[key] = list(value) if isinstance(value, tuple) else value
    digest = hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()
    return f"cell-{digest[:8]}"


def _cell_label(settings: Mapping[str, Any], cfg: DistillConfig) -> str:
    """A cell's label: its objective settings as the method they make (``objective_name``, e.g.
    "DFAD-style (adversarial L1)"), then its other settings as ``name=value``."""
    if not any(k in OBJECTIVE_FIELDS for k in settings):
        return _settings_label(settings)
    rest = _settings_label({k: v for k, v in settings.items() if k not in OBJECTIVE_FIELDS})
    return objective_name(cfg) + (f", {rest}" if rest != "base" else "")


def _settings_label(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_show(v)}" for k, v in settings.items()) or "base"


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
