"""Reading a study file: UTF-8 text, YAML with every key given once, not empty.

A file that cannot be read as a study (missing, a folder, not UTF-8, broken YAML, a key given twice
in one mapping, nothing in it) is a :class:`~.errors.StudyError` naming the file and what is wrong,
before its keys are looked at. This module imports no Ray, Optuna or MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..utils import first_line
from .errors import StudyError
from .schema import StudyFile


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:
            continue  # an unhashable key: the constructor reports it
        if first != key_node.start_mark.line + 1:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {first}, again on line "
                f"{key_node.start_mark.line + 1})",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)

# Keys every study names (the rest have defaults), for the message about an empty file.
REQUIRED_KEYS = tuple(name for name, field in StudyFile.model_fields.items() if field.is_required())


def read_study_file(path: str | Path) -> Any:
    """The YAML of a study file; a :class:`StudyError` for a missing, non-UTF-8, broken or empty
    file."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(
            f"study file not found: {path}" + (" (it is a directory)" if path.is_dir() else "")
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StudyError(
            f"{path.resolve()}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "save the study file as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or first_line(e)
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise StudyError(f"{path.resolve()}: not valid YAML: {problem}{where}") from None
    if data is None:  # no text, or only comments
        raise StudyError(
            f"{path.resolve()}: the study file is empty; a study names at least "
            f"{', '.join(REQUIRED_KEYS)}"
        )
    return data
