"""Durations and budgets as users write them: ``30s``, ``2m``, ``500ms``; ``3`` or ``25%``."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from ``30s``, ``2m``, ``1.5h``, ``500ms`` or a plain number of seconds.

    >>> parse_duration("2m"), parse_duration(5), parse_duration("250ms")
    (120.0, 5.0, 0.25)
    """
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or text like '30s', not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            if value.strip().startswith("-"):
                raise ValueError(f"duration {value!r} is negative; durations must be 0 or more")
            raise ValueError(f"duration {value!r} is not understood; write it like 30s, 2m, 500ms or 1h")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"a duration must be a number or text like '30s', got {type(value).__name__}")
    if seconds < 0 or math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"duration {value!r} is negative or not finite; durations must be 0 or more")
    return seconds


_BUDGET = re.compile(r"^\s*(\d+)\s*(%)?\s*$")


@dataclass(frozen=True)
class Budget:
    """A number of hosts given as a count (``3``) or a share of the fleet (``25%``)."""

    value: int
    percent: bool

    @classmethod
    def parse(cls, raw: object) -> Budget:
        if isinstance(raw, Budget):
            return raw
        if isinstance(raw, bool):
            raise ValueError("a host count must be a whole number or a percentage like '25%'")
        if isinstance(raw, int):
            if raw < 0:
                raise ValueError(f"host count {raw} is negative; use 0 or more")
            return cls(raw, False)
        if isinstance(raw, str):
            match = _BUDGET.match(raw)
            if match is None:
                raise ValueError(
                    f"{raw!r} is not a host count; write a whole number (3) or a percentage (25%)"
                )
            value = int(match.group(1))
            percent = match.group(2) is not None
            if percent and value > 100:
                raise ValueError(f"{raw!r} is over 100%; a share of the fleet is at most 100%")
            return cls(value, percent)
        raise ValueError(f"a host count must be a number or a percentage, got {type(raw).__name__}")

    def resolve(self, total: int, *, round_up: bool) -> int:
        """Hosts out of ``total``; percentages round up or down, counts are capped at total.

        Like Kubernetes' fence-post helper, batch sizes round up and
        unavailability budgets round down:

        >>> Budget.parse("25%").resolve(10, round_up=True)    # batch: ceil(2.5)
        3
        >>> Budget.parse("25%").resolve(10, round_up=False)   # max unavailable: floor(2.5)
        2
        >>> Budget.parse(5).resolve(3, round_up=False)        # never more than the fleet
        3
        """
        if not self.percent:
            return min(self.value, total)
        exact = self.value * total / 100
        return min(total, math.ceil(exact) if round_up else math.floor(exact))

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)
