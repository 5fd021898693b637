"""Value checks declared beside each config field, run once before any work starts.

A config field says what values make sense where it is declared::

    steps: int = checked(4000, ge=1)  # optimiser steps

and :func:`check_values` walks a config (a dataclass of dataclasses) and refuses the first value
out of range, with a one-line :class:`~mnemeta.errors.ConfigError` that names the key and how
to set it. Rules that hold for every field need no declaration: a float must be finite (a NaN
learning rate trains to NaN losses and reports chance accuracy, exit 0, otherwise). ``None`` of
an optional field means "as elsewhere" and is never checked.

Why here and not in the loops: a value checked where it is used fails after the data is built
or, worse, after training (``eval.episodes=0`` used to die in ``torch.cat`` at the end of a
run). Checked at load time, a bad value costs nothing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from mnemeta.errors import ConfigError

__all__ = ["Rule", "check_values", "checked"]


@dataclass(frozen=True)
class Rule:
    """The values a field accepts: bounds (inclusive ``ge``/``le``, exclusive ``gt``/``lt``)
    and, for strings, ``choices``. A tuple's bounds apply to each of its items."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused, or None when it is accepted."""
        if self.choices:
            if value not in self.choices:
                if len(self.choices) <= 2:
                    return f"is unknown; choose {' or '.join(self.choices)}"
                return f"is unknown; choose one of {', '.join(self.choices)}"
            return None
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, bool) or not isinstance(item, int | float):
                continue
            if isinstance(item, float) and not math.isfinite(item):
                return "must be a finite number"
            if self.ge is not None and item < self.ge:
                return f"must be at least {self.ge:g}"
            if self.gt is not None and item <= self.gt:
                return f"must be greater than {self.gt:g}"
            if self.le is not None and item > self.le:
                return f"must be at most {self.le:g}"
            if self.lt is not None and item >= self.lt:
                return f"must be less than {self.lt:g}"
        return None


_FINITE = Rule()  # every float, declared or not


def checked(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[str, ...] = (),
) -> Any:
    """A dataclass field with ``default`` and the :class:`Rule` its values must follow."""
    rule = Rule(ge=ge, gt=gt, le=le, lt=lt, choices=choices)
    return dataclasses.field(default=default, metadata={"rule": rule})


def check_values(config: Any, prefix: str = "") -> None:
    """Refuse the first value of ``config`` (and its nested sections) that breaks its rule.

    Raises:
        ConfigError: ``"train.steps=-5 must be at least 1; e.g. --set train.steps=4000"``.
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_values(value, f"{key}.")
            continue
        if value is None:
            continue
        rule = f.metadata.get("rule", _FINITE)
        problem = rule.problem(value)
        if problem is not None:
            default = f.default if f.default is not dataclasses.MISSING else None
            example = (
                ""
                if rule.choices
                else f"; e.g. --set {key}={'none' if default is None else _cli_value(default)} "
                "(the default)"
            )
            shown = repr(value) if isinstance(value, str) else _cli_value(value)
            raise ConfigError(f"{key}={shown} {problem}{example}")
    relations = getattr(config, "check_relations", None)
    if callable(relations):
        relations(prefix)


def _cli_value(value: Any) -> str:
    """A value as one would type it after ``--set key=``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        short = f"{value:g}"  # -1, not -1.0; 0.001, not 1e-03
        return short if float(short) == value else str(value)
    return str(value)
