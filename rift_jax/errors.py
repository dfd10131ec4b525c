"""The project's two error types, and the helpers that raise the first.

Library code raises `UserError` with one line naming the bad value and what is
allowed; `launch/` scripts turn it into that line on stderr and exit code 2.
`NonFiniteLoss` stops a training run whose loss became NaN/inf (exit code 3).
"""
from __future__ import annotations

from typing import Any, Iterable


class UserError(ValueError):
  """Bad input from a user: config, data, checkpoint or command line."""


class NonFiniteLoss(RuntimeError):
  """The training loss became NaN/inf; the last good checkpoint is kept
  (`launch/` scripts exit with code 3)."""


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
  allowed = list(allowed)
  if value not in allowed:
    raise UserError(f"{name}={value!r} is not allowed; choose one of: "
                    + ", ".join(repr(a) for a in allowed))


def check_range(name: str, value: float, low: float | None = None,
                high: float | None = None, *, low_open: bool = False,
                high_open: bool = False) -> None:
  """Raises unless low (<|<=) value (<|<=) high."""
  ok = True
  if low is not None:
    ok &= value > low if low_open else value >= low
  if high is not None:
    ok &= value < high if high_open else value <= high
  if not ok:
    lo = "-inf" if low is None else repr(low)
    hi = "inf" if high is None else repr(high)
    interval = ("(" if low_open or low is None else "[") + f"{lo}, {hi}" + (
        ")" if high_open or high is None else "]")
    raise UserError(f"{name}={value!r} is outside the allowed range {interval}")
