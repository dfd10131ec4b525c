"""AutoAttack's sanity checks (Croce & Hein, ICML 2020; the reference
implementation's `checks.py`), as pure functions that return a warning
text or None. `autoattack.run_suite` runs them on the first batch and
reports every warning in its results (and `launch.evaluate` in
eval_report.md).

  randomness      two identical calls give different logits: a randomized
                  defense (use the 'rand' version: EOT)
  range_output    every output row lies in [0, 1] and sums to 1: the model
                  returns probabilities, and the losses need logits
  zero_gradients  examples whose input gradient is exactly zero: gradient
                  attacks cannot move them, robustness is overstated
  n_classes       the suite asks for more target classes than the model has
                  (or a DLR loss with too few classes)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# The reference's tolerance for "looks like a probability distribution".
RANGE_TOLERANCE = 1e-5


def randomness(a: np.ndarray, b: np.ndarray) -> str | None:
  """`a, b`: logits `[n, classes]` of two identical calls."""
  if np.array_equal(a, b):
    return None
  return ("the model's logits differ between two identical calls (max "
          f"difference {float(np.max(np.abs(a - b))):.3g}): it has randomness, "
          "so use evaluate.autoattack.version='rand'")


def range_output(outputs: np.ndarray, tol: float = RANGE_TOLERANCE) -> str | None:
  """`outputs` `[n, classes]`: a warning when every entry lies in [−tol,
  1 + tol] and every row sums to 1 within tol."""
  outputs = np.asarray(outputs, np.float64)
  if (outputs.max() < 1.0 + tol and outputs.min() > -tol
      and np.all(np.abs(outputs.sum(-1) - 1.0) < tol)):
    return ("the model's outputs look like probabilities (every row in [0, 1], "
            "summing to 1): the attacks' losses need logits — remove the "
            "final softmax")
  return None


def zero_gradients(grad_norms: np.ndarray) -> str | None:
  """`grad_norms` `[n]`: the L1 norm of each example's input gradient of the
  cross-entropy. A warning counts the exact zeros."""
  zeros = int(np.count_nonzero(np.asarray(grad_norms) == 0))
  if zeros == 0:
    return None
  return (f"{zeros} of {len(grad_norms)} examples have an exactly zero input "
          "gradient: gradient-based attacks cannot move them, so the robust "
          "accuracy may be overstated (gradient masking)")


def n_classes(suite: Sequence, num_classes: int) -> list[str]:
  """Warnings for attacks of `suite` (`autoattack.Attack`s) that ask for
  more than `num_classes` allows: the DLR loss needs 3 classes, its
  targeted form 4, and k targets need k + 1 classes (the attacks then use
  the `num_classes − 1` there are)."""
  out = []
  for attack in suite:
    cfg = attack.cfg
    loss = getattr(cfg, "loss", None)
    targeted = loss == "dlr_targeted" or bool(getattr(cfg, "targeted", False))
    if loss in ("dlr", "dlr_targeted") and num_classes <= 2:
      out.append(f"{attack.name}: with only {num_classes} classes the DLR loss "
                 "is not defined")
    elif loss == "dlr_targeted" and num_classes == 3:
      out.append(f"{attack.name}: with only 3 classes the targeted DLR loss is "
                 "not defined")
    elif targeted and int(cfg.num_target_classes) + 1 > num_classes:
      out.append(f"{attack.name}: {cfg.num_target_classes} target classes asked, "
                 f"only {num_classes - 1} possible; {num_classes - 1} are used")
  return out
