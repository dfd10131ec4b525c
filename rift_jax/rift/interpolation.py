"""RiFT step 3: interpolate between θ_AT and θ_FT and pick α on validation.

    θ(α) = (1 − α)·θ_AT + α·θ_FT      over ALL variables (BN statistics too)

`rift_jax.interpolate(fns, theta_at, theta_ft, split, attack, rng)` runs the
whole step: `evaluate_alphas` measures clean and PGD accuracy for every α
(`vmap` over the α axis, `chunk` values of α at a time, to fit memory; every
α sees the same batches and the same attack random keys, so α = 0 gives
θ_AT's numbers exactly and α = 1 θ_FT's), `select_alpha` applies the paper's
rule made explicit — the highest clean accuracy among the α whose robust
accuracy is at least robust(α = 0) − tolerance (0.1 percentage points by
default) — and θ* = θ(α*).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rift_jax import data, evaluation, models, sharding
from rift_jax.errors import UserError, check_choice, check_range

DEFAULT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


def check_alphas(alphas: Sequence[float], name: str = "rift.alphas") -> np.ndarray:
  """α values as an array; each in [0, 1], 0 included (the reference)."""
  alphas = np.asarray(list(alphas), np.float32)
  if alphas.size == 0:
    raise UserError(f"{name} is empty; give at least one α in [0, 1]")
  bad = [float(a) for a in alphas if not 0.0 <= a <= 1.0]
  if bad:
    raise UserError(f"{name} contains {bad[0]!r}, outside [0, 1]")
  if 0.0 not in alphas:
    raise UserError(f"{name} must contain 0.0 (θ_AT is the robustness reference)")
  return alphas


def mix(theta_at, theta_ft, alpha):
  """θ(α) for a scalar α, leaf by leaf."""
  return jax.tree_util.tree_map(lambda a, b: (1.0 - alpha) * a + alpha * b,
                                theta_at, theta_ft)


def mix_stack(theta_at, theta_ft, alphas: jax.Array):
  """θ(α) for a vector α `[k]`: every leaf gets a leading axis of size k."""
  return jax.vmap(lambda a: mix(theta_at, theta_ft, a))(jnp.asarray(alphas))


def auto_chunk(num_alphas: int) -> int:
  """α values per vmapped evaluation when `rift.alpha_chunk=0`.

  XLA:CPU turns a convolution vmapped over different weights into a grouped
  convolution that ran ~4x slower per α than one model at a time (measured on
  the quickstart demo); GPUs/TPUs batch it well. So: 1 on CPU, all α (up to
  4 at a time, to bound memory) elsewhere.
  """
  return 1 if sharding.cpu_paths() else min(num_alphas, 4)


def evaluate_alphas(fns: models.ModelFns, theta_at, theta_ft,
                    alphas: Sequence[float], split: data.Split,
                    attack: evaluation.AttackFn | None, rng: jax.Array,
                    batch_size: int, chunk: int = 0, mesh=None,
                    progress: bool = True) -> tuple[list[dict], dict]:
  """Validation curve: ([{'alpha', 'clean', 'adv'}] in percent per α, and the
  per-example correctness {'clean', 'adv'}: bool `[num_alphas, n]`).
  Vmapped in chunks of `chunk` α; 0 = `auto_chunk`."""
  alphas = np.asarray(list(alphas), np.float32)
  check_range("rift.alpha_chunk", chunk, 0)
  chunk = chunk or auto_chunk(alphas.size)
  evaluator = evaluation.Evaluator(fns, attack, batch_size, mesh, stacked=True)
  stack = jax.jit(mix_stack)
  out, clean, adv = [], [], []
  for i in range(0, alphas.size, chunk):
    part = alphas[i:i + chunk]
    ok = evaluator.per_example(
        stack(theta_at, theta_ft, part), split, rng,
        desc=f"α {part[0]:.2f}..{part[-1]:.2f}" if progress else None)
    clean.append(ok["clean"])
    adv.append(ok["adv"])
    for j, a in enumerate(part):
      out.append({"alpha": round(float(a), 6),
                  "clean": 100.0 * float(ok["clean"][j].mean()),
                  "adv": 100.0 * float(ok["adv"][j].mean())})
  return out, {"clean": np.concatenate(clean), "adv": np.concatenate(adv)}


ALPHA_RULES = ("robust", "robust_and_ood")


def select_alpha(curve: Sequence[dict], tolerance: float = 0.1,
                 rule: str = "robust") -> dict:
  """Paper rule on validation numbers; returns the chosen entry of `curve`.

  curve: [{'alpha', 'clean', 'adv'[, 'ood']}, ...] containing α = 0 (the
  reference). 'robust' (the paper's): the highest clean accuracy among the α
  with adv(α) ≥ adv(0) − tolerance. 'robust_and_ood': also ood(α) ≥ ood(0) −
  tolerance, ood = clean accuracy on corrupted validation images
  (`rift.ood_val`), so the chosen α may not trade corruption accuracy for
  clean accuracy. Ties in clean accuracy go to the larger robust accuracy,
  then smaller α.
  """
  check_range("rift.tolerance", tolerance, 0.0)
  check_choice("rift.alpha_rule", rule, ALPHA_RULES)
  ref = [c for c in curve if c["alpha"] == 0.0]
  if not ref:
    raise UserError("rift.alphas must contain 0.0 (θ_AT is the robustness reference)")
  keys = ("adv", "ood") if rule == "robust_and_ood" else ("adv",)
  if any(k not in c for c in curve for k in keys):
    raise UserError(f"rift.alpha_rule={rule!r} needs {' and '.join(keys)} "
                    "accuracy for every α (set rift.ood_val.enabled=True)")
  ok = [c for c in curve
        if all(c[k] >= ref[0][k] - tolerance - 1e-9 for k in keys)]
  return max(ok, key=lambda c: (c["clean"], c["adv"], -c["alpha"]))


@dataclasses.dataclass
class InterpolationResult:
  theta_star: Any        # θ(α*)
  alpha: float           # α*
  curve: list[dict]      # validation [{'alpha', 'clean', 'adv'}]
  per_example: dict      # {'clean', 'adv'}: bool [num_alphas, n]


def interpolate(fns: models.ModelFns, theta_at, theta_ft, split: data.Split,
                attack: evaluation.AttackFn | None, rng: jax.Array, *,
                alphas: Sequence[float] = DEFAULT_ALPHAS, tolerance: float = 0.1,
                batch_size: int = 256, chunk: int = 0, mesh=None,
                progress: bool = True) -> InterpolationResult:
  """RiFT step 3: the α curve on `split` (validation), α* by `select_alpha`,
  and θ* = θ(α*)."""
  alphas = check_alphas(alphas)
  curve, ok = evaluate_alphas(fns, theta_at, theta_ft, alphas, split, attack,
                              rng, batch_size, chunk, mesh, progress)
  alpha = float(select_alpha(curve, tolerance)["alpha"])
  return InterpolationResult(mix(theta_at, theta_ft, alpha), alpha, curve, ok)
