"""Checks of a task's rows before any training: a bad row stops the run at startup, naming its file and line.

Two entry points, one set of rules:

* `check_data_files(task)` reads every file of `task.data.path` itself (JSON lines line by line, so a
  malformed line is reported as `train.jsonl:17`), then checks every row of every split: the text and
  label (or target) columns are there and not null, and every label exists. `tasks/preflight.py` runs it
  before the tokenizer or the weights load.
* `check_splits(splits, task)` checks the labels of already loaded splits (offline builders, hub datasets)
  the same way, with `split 'test' row 17` as the place; `tasks/train.py` runs it before building the model,
  so a test label out of range no longer fails after all the training.

Labels follow `tasks/classification.py`: ClassLabel ids, class names (the sorted names seen in train), or
integer ids in [0, task.num_labels) (else [0, largest train id]); multi-label rows hold lists of them.
Data that is legal but suspicious only warns: integral float labels (read as ids), classes that never
occur in train (their head rows never learn), empty texts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets

from tasks.config import ConfigError, TaskConfig
from tasks.data import is_split_dirs, local_files

log = logging.getLogger(__name__)

Place = str  # where a value comes from: "data/train.jsonl:17" or "split 'test' row 17"


def read_rows(file: Path) -> list[tuple[Place, dict[str, Any]]]:
    """(place, row) of every row of a local data file (.jsonl/.json/.csv/.parquet).

    Raises:
        ConfigError: an empty file, or a row that does not parse or is not an object (file and line named).
    """
    rows = _json_rows(file) if file.suffix in (".jsonl", ".json") else _table_rows(file)
    if not rows:
        raise ConfigError(f"{file}: empty file (no rows); remove it or fill it")
    return rows


def _json_rows(file: Path) -> list[tuple[Place, dict[str, Any]]]:
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json" and text.lstrip().startswith("["):  # one JSON array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{file}:{error.lineno}: malformed JSON ({error.msg}, column {error.colno})") from None
        numbered = [(f"{file} item {i}", item) for i, item in enumerate(items)]
    else:  # JSON lines (datasets reads .json files this way too)
        numbered = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((f"{file}:{number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise ConfigError(f"{file}:{number}: malformed JSON line ({error.msg}, column {error.colno})"
                                  ) from None
    for place, row in numbered:
        if not isinstance(row, dict):
            raise ConfigError(f"{place}: a row must be a JSON object of fields, got {type(row).__name__} {row!r:.60}")
    return numbered


def _table_rows(file: Path) -> list[tuple[Place, dict[str, Any]]]:
    """CSV (read by pandas, as datasets does: same types) or parquet rows; CSV places are file lines."""
    import pandas as pd

    try:
        frame = pd.read_csv(file) if file.suffix == ".csv" else pd.read_parquet(file)
    except pd.errors.EmptyDataError:
        return []
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise ConfigError(f"{file}: cannot be read as {file.suffix[1:]} ({' '.join(str(error).split())[:200]})"
                          ) from None
    frame = frame.astype(object).where(frame.notna(), None)  # NaN cells are nulls, as datasets reads them
    first = 2 if file.suffix == ".csv" else 0  # CSV: line 1 is the header
    label = "{}:{}" if file.suffix == ".csv" else "{} row {}"
    return [(label.format(file, first + i), row) for i, row in enumerate(frame.to_dict("records"))]


def check_data_files(task: TaskConfig) -> None:
    """Read and check every row of every file of `task.data.path` (see the module docstring).

    Raises:
        ConfigError: the first problem, naming the file and line (or task.data.path itself).
    """
    data = task.data
    if is_split_dirs(Path(data.path), data):  # parquet shards: checked after loading, as hub splits are
        return
    files = local_files(Path(data.path), data)
    roles = _split_names(task)
    order = sorted(files, key=lambda name: list(roles).index(name) if name in roles else len(roles))  # train first
    rows = {split: read_rows(files[split]) for split in order}
    needed = _needed_fields(task)
    for split, numbered in rows.items():
        empty = []
        for place, row in numbered:
            for parameter, name in needed.items():
                if name not in row:
                    raise ConfigError(f"{place}: no {name!r} field (task.data.{parameter}={name!r}); the row has "
                                      f"{sorted(row)[:10]}")
                if row[name] is None:
                    raise ConfigError(f"{place}: {name!r} is null (task.data.{parameter}); every row needs one")
            if not _text_of(place, row[data.text_field], data.text_field).strip():
                empty.append(place)
            if data.target_field in needed.values() and not isinstance(row[data.target_field], str):
                raise ConfigError(f"{place}: {data.target_field!r} must be a string, got "
                                  f"{type(row[data.target_field]).__name__}")
        if empty:
            log.warning("%s: %d of %d rows have an empty %r (first: %s); they are trained on as empty inputs",
                        files[split], len(empty), len(numbered), data.text_field, empty[0])
    if task.kind == "classification":
        check_labels({roles.get(name, name): [(place, row[data.label_field]) for place, row in numbered]
                      for name, numbered in rows.items()}, task)


def _split_names(task: TaskConfig) -> dict[str, str]:
    """File stem -> split role (train/validation/test) as task.data.splits maps them, train first."""
    splits = task.data.splits
    return {name: role for role, name in (("train", splits.train), ("validation", splits.validation),
                                          ("test", splits.test)) if name is not None}


def _needed_fields(task: TaskConfig) -> dict[str, str]:
    """{task.data parameter: column name} every row of this task's kind must have."""
    data = task.data
    needed = {"text_field": data.text_field}
    if task.kind == "classification":
        needed["label_field"] = data.label_field
    elif task.kind == "seq2seq":
        if not data.target_field:
            raise ConfigError(f"task.data.target_field=null: task={task.name} is seq2seq and needs the summary column")
        needed["target_field"] = data.target_field
    return needed


def _text_of(place: Place, value: Any, name: str) -> str:
    """The text of a row (a list of paragraphs is joined, as tasks/classification.py does)."""
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return "\n".join(value)
    if not isinstance(value, str):
        raise ConfigError(f"{place}: {name!r} must be a string or a list of strings, got {type(value).__name__} "
                          f"{value!r:.60}")
    return value


def check_splits(splits: datasets.DatasetDict, task: TaskConfig) -> None:
    """The columns and (classification) labels of loaded splits; see `check_labels`.

    Raises:
        ConfigError: a missing column (naming the split and the task.data parameter) or a bad label.
    """
    for split, rows in splits.items():
        for parameter, name in _needed_fields(task).items():
            if name not in rows.column_names:
                raise ConfigError(f"split {split!r} has no {name!r} column (task.data.{parameter}={name!r}); "
                                  f"its columns: {rows.column_names}")
    if task.kind != "classification":
        return
    feature = splits["train"].features[task.data.label_field]
    inner = getattr(feature, "feature", feature)
    names = list(inner.names) if isinstance(inner, datasets.ClassLabel) else None
    check_labels({split: [(f"split {split!r} row {i}", value) for i, value in enumerate(rows[task.data.label_field])]
                  for split, rows in splits.items()}, task, class_names=names)


def check_labels(labels: dict[str, list[tuple[Place, Any]]], task: TaskConfig,
                 class_names: list[str] | None = None) -> None:
    """Every label of every split is one the model has an output for.

    Args:
        labels: {split: [(place, label value)]}; "train" defines the classes unless `class_names` does.
        task: task.multi_label, task.num_labels and task.data.label_field are read.
        class_names: the names of a ClassLabel column (its ids are then in [0, len)).

    Raises:
        ConfigError: a list label on a single-label task (or the reverse), a label that is not an id or a
            name, a non-integral float, ids and names mixed, or a label outside the classes.
    """
    field = task.data.label_field
    flat: dict[str, list[tuple[Place, Any]]] = {}
    floats = []
    for split, values in labels.items():
        flat[split] = []
        for place, value in values:
            if task.multi_label != isinstance(value, list | tuple):
                raise ConfigError(
                    f"{place}: {field}={value!r:.60} is a list, but task.multi_label=false takes one label per row"
                    if not task.multi_label else
                    f"{place}: {field}={value!r:.60} is not a list, but task.multi_label=true takes a list of labels")
            for item in (value if task.multi_label else [value]):
                if isinstance(item, float) and item.is_integer():
                    floats.append(place)
                    item = int(item)
                if isinstance(item, bool) or not isinstance(item, int | str):
                    raise ConfigError(f"{place}: {field}={item!r:.60} must be an integer class id or a class name")
                flat[split].append((place, item))
    if floats:
        log.warning("%d labels are floats (first: %s); they are read as the class ids they equal", len(floats),
                    floats[0])
    everything = [pair for pairs in flat.values() for pair in pairs]
    if {type(item) for _, item in everything} == {int, str}:
        place, item = next(pair for pair in everything if type(pair[1]) is not type(everything[0][1]))
        raise ConfigError(f"{place}: {field}={item!r} mixes class names and integer ids ({everything[0][0]} has "
                          f"{everything[0][1]!r}); use one kind")
    train = [item for _, item in flat.get("train", [])]
    _check_membership(flat, _classes(train, task, class_names), task)


def _classes(train: list[Any], task: TaskConfig, class_names: list[str] | None) -> list[Any]:
    """The classes the model will have outputs for, as tasks.classification.label_names derives them."""
    if class_names is not None:
        return list(range(len(class_names)))
    if train and isinstance(train[0], str):
        names = sorted(set(train))
        if task.num_labels is not None and task.num_labels != len(names):
            raise ConfigError(f"task.num_labels={task.num_labels} but the training labels have {len(names)} names: "
                              f"{names[:20]}")
        return names
    count = task.num_labels or (max(train, default=-1) + 1)
    return list(range(count))


def _check_membership(flat: dict[str, Iterable[tuple[Place, Any]]], classes: list[Any], task: TaskConfig) -> None:
    known = set(classes)
    by_ids = not classes or isinstance(classes[0], int)
    if by_ids:
        accepted = (f"in [0, {len(classes) - 1}]" + (f" (task.num_labels={task.num_labels})" if task.num_labels
                                                      else " (the largest training id; task.num_labels=null)"))
    else:
        accepted = f"one of the {len(classes)} names in the training split: {classes[:10]}"
    for values in flat.values():
        for place, item in values:
            if item not in known:
                raise ConfigError(f"{place}: {task.data.label_field}={item!r} is out of range: it must be {accepted}")
    seen = {item for _, item in flat.get("train", [])}
    unused = [c for c in classes if c not in seen]
    if unused and seen:
        log.warning("classes %s never occur in the training split: their outputs get no training signal",
                    unused[:20])
