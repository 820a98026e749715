"""How a study's mistakes are told: one line ``FILE: key: message`` each, all of them at once.

:class:`Problems` collects the lines while a study is checked and raises them together as one
:class:`StudyError`; :func:`validate` checks a study mapping against the declared schema
(:mod:`.schema`) and words each of pydantic's errors like the rest of the project (``expected an
integer, got 'ten'``, ``unknown key serach (did you mean search?)``).

This module imports no Ray, Optuna or MLflow.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

import pydantic

from ..names import SECTION_ABLATION
from . import schema
from .schema import MANAGED_FIELDS, StudyFile


class StudyError(ValueError):
    """Problems with a study: one line each, naming the file and the key."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class Problems:
    """Collects one-line problems ``LABEL: key: message``; raises them all at the end."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.lines: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.lines.append(f"{self.label}: {key}: {message}" if key else f"{self.label}: {message}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise StudyError(list(dict.fromkeys(self.lines)))


def validate(data: Any, problems: Problems) -> StudyFile:
    """The study mapping against the declared schema; every schema error is reported."""
    if not isinstance(data, Mapping):
        problems.add("", f"expected a mapping of study keys, got {type(data).__name__}")
        problems.raise_if_any()
    # A section given as nothing (``search:``) reads as empty, so that a missing required key
    # inside it is named (``missing key student.arch``) rather than the whole section.
    data = {
        **{k: {} for k in schema.SECTIONS if data.get(k) is None},
        **{k: v for k, v in data.items() if v is not None or k not in schema.SECTIONS},
    }
    if SECTION_ABLATION in data and data[SECTION_ABLATION] is None:  # an ablation, still empty
        data[SECTION_ABLATION] = {}
    try:
        return StudyFile.model_validate(data)
    except pydantic.ValidationError as e:
        for error in e.errors():
            problems.add(*describe(error))
    problems.raise_if_any()
    raise AssertionError("unreachable")  # pragma: no cover


# ------------------------------------------------------------------ pydantic's errors, reworded


_TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true/false",
    "bool_parsing": "true/false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_BOUND_WORDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}
_PARAM_MODELS = {
    "int": schema.IntParam,
    "float": schema.FloatParam,
    "categorical": schema.CategoricalParam,
}


def _dotted(loc: tuple[Any, ...]) -> str:
    """``('search', 'space', 'n_s', 'int', 'low')`` -> ``search.space.n_s.low``."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if i == 3 and loc[1] == "space" and part in _PARAM_MODELS:
            continue  # the discriminated union's branch, not a key of the file
        if isinstance(part, int):
            parts[-1] = f"{parts[-1]}[{part}]" if parts else f"[{part}]"
        else:
            parts.append(str(part))
    return ".".join(parts)


def _optional_model(annotation: Any) -> Any:
    """``Section | None`` -> ``Section`` (an optional section, such as ``ablation``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _model_at(loc: tuple[Any, ...]) -> Any:
    """The section model at key path ``loc`` (None where the file holds a free mapping)."""
    model: Any = StudyFile
    for part in loc:
        if model is None:
            return None
        if part in _PARAM_MODELS and model is dict:
            model = _PARAM_MODELS[part]
            continue
        if model is dict:
            continue  # a searched parameter's name
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = _optional_model(field.annotation)
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)
            else dict
        )
    return model if isinstance(model, type) and model is not dict else None


def _unknown_key(loc: tuple[Any, ...], key: str) -> tuple[str, str]:
    """An unknown key: what sets it instead, or the closest known key."""
    section, name = _model_at(loc[:-1]), loc[-1]
    if section is schema.LoopSection and name in MANAGED_FIELDS:
        return key, (
            "set by the study's top-level keys (dataset, data_root, download, teacher, "
            "student, resources), not in loop"
        )
    if section is schema.LoopSection and name == "seed":
        return key, "use the study's top-level seed (search) and final.seeds (re-runs)"
    if name in getattr(section, "managed", ()):
        return key, "set by the study, not here"
    known = list(section.model_fields) if section is not None else []
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    if known:
        hint += f" (known: {', '.join(known)})" if not close else ""
    return "", f"unknown key {key}{hint}"


def describe(error: Mapping[str, Any]) -> tuple[str, str]:
    """``(key, message)`` of a pydantic error, worded like the rest of the project."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    key = _dotted(loc)
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return _unknown_key(loc, key)
    if kind == "missing":
        return "", f"missing key {key}"
    if kind in _TYPE_WORDS:
        return key, f"expected {_TYPE_WORDS[kind]}, got {_show(value)}"
    if kind == "finite_number":
        return key, f"must be a finite number, got {_show(value)}"
    if kind in _BOUND_WORDS:
        name, sign = _BOUND_WORDS[kind]
        return key, f"must be {sign} {ctx.get(name)}, got {_show(value)}"
    if kind == "literal_error":
        return key, f"must be {ctx.get('expected')}, got {_show(value)}"
    if kind == "union_tag_invalid":
        return f"{key}.type", f"must be 'int', 'float' or 'categorical', got {ctx.get('tag')!r}"
    if kind == "union_tag_not_found":
        return f"{key}.type", "missing: 'int', 'float' or 'categorical'"
    message = str(error.get("msg", ""))
    return key, message.removeprefix("Value error, ")


def _show(value: Any) -> str:
    text = repr(value)
    if isinstance(value, Mapping | list):
        return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
    if isinstance(value, str):
        return text[:80] + ("..." if len(text) > 80 else "")
    return text
