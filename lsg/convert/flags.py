"""Command-line flags generated from a settings dataclass, so a new field gets its flag without a second list.

Each field `some_name` becomes `--some-name` with the field's type and default; a bool becomes the pair
`--some-name/--no-some-name`; `metadata={"choices": ...}` on the field restricts the values; the help text
is the field's entry in the class docstring's `Args:` section (the docstring is the one place it is written).
"""

from __future__ import annotations

import argparse
import inspect
import re
import types
import typing
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")
_ENTRY = re.compile(r"^(\w+): (.*)$")


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its description in the `Args:` section of `cls`'s docstring (continuation lines joined)."""
    docs: dict[str, str] = {}
    lines = iter((inspect.getdoc(cls) or "").splitlines())
    for line in lines:
        if line.strip() == "Args:":
            break
    current = None
    for line in lines:
        if not line.strip():
            break
        entry = _ENTRY.match(line.strip()) if line.startswith("    ") and not line.startswith("     ") else None
        if entry:
            current = entry.group(1)
            docs[current] = entry.group(2)
        elif current is not None:
            docs[current] += " " + line.strip()
    return docs


def _value_type(hint: Any) -> type:
    """The type a flag parses to: `int` for `int`, `str` for `str | None`."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return hint


def add_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """Add one flag per field of the dataclass `cls` to `parser`, in an argument group named `title`.

    Raises:
        ValueError: a field has no entry in the docstring's `Args:` section (its flag would have no help).
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = parser.add_argument_group(title)
    for field in fields(cls):
        if field.name not in docs:
            raise ValueError(f"{cls.__name__}.{field.name} has no entry in the docstring's Args: section")
        options: dict[str, Any] = {"default": field.default, "help": docs[field.name].replace("%", "%%")}
        value_type = _value_type(hints[field.name])
        if value_type is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = value_type
        if "choices" in field.metadata:
            options["choices"] = field.metadata["choices"]
        group.add_argument("--" + field.name.replace("_", "-"), **options)


def from_flags(cls: type[T], args: argparse.Namespace) -> T:
    """Build (and so validate) the dataclass `cls` from the parsed flags that `add_flags` added."""
    return cls(**{field.name: getattr(args, field.name) for field in fields(cls)})
