"""Argument checks shared by the stages: one wording for one mistake."""

from __future__ import annotations

from typing import TypeGuard

import numpy as np


def _is_int(value: object) -> TypeGuard[int | np.integer]:
    """An integer (Python or numpy) that is not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def positive_int(name: str, value: object, hint: str = "") -> int:
    """``value`` as an ``int`` when it is an integer >= 1 (numpy integers too, bools refused).

    Raises:
        ValueError: ``"{name} must be a positive integer, got {value!r}{hint}"``.
    """
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}{hint}")
    return int(value)


def int_at_least(name: str, value: object, minimum: int) -> int:
    """``value`` as an ``int`` when it is an integer >= ``minimum`` (numpy integers too, bools refused).

    Raises:
        ValueError: ``"{name} must be an integer >= {minimum}, got {value!r}"``.
    """
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
