"""Checks for user-given values, shared by the library settings, the converter and the Hydra schema.

Each check raises `ValueError` naming the parameter, the value it got and what is accepted, and never
rewrites the value (design D16). `name` is whatever the user typed: a keyword (`block_size`), a Hydra key
(`model.max_length`) or a flag, so the message points at the place to fix.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


def _accepted(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"in [{low}, {high}]"
    return f">= {low}" if low is not None else f"<= {high}"


def check_range(name: str, value: float, low: float | None = None, high: float | None = None, *,
                hint: str = "") -> None:
    """Raise unless low <= value <= high (either bound may be None: unbounded on that side).

    Args:
        name: the parameter as the user spells it, e.g. "task.warmup_ratio".
        value: the number to check (int or float).
        low, high: inclusive bounds.
        hint: appended to the message after "; " (what the bound means, or what to do).
    """
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}={value} is out of range: it must be {_accepted(low, high)}"
                         + (f"; {hint}" if hint else ""))


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None, *, hint: str = "") -> None:
    """Raise unless `value` is an int (bool is not) within [low, high]; see `check_range`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} must be an integer")
    check_range(name, value, low, high, hint=hint)


def check_bool(name: str, value: Any) -> None:
    """Raise unless `value` is a bool: "yes", 1 or "false" would otherwise be saved in configs as given."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False")


def check_choice(name: str, value: Any, allowed: Collection[Any]) -> None:
    """Raise unless `value` is one of `allowed`, listing them in the message."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; use one of {list(allowed)}")
