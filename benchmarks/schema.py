"""Every key a benchmark phase writes, with its kind and meaning: the one
place the result format is defined.

A phase's `Record` refuses a key that is not here, and `problems(result)`
lists what a finished result lacks or holds of the wrong kind (the tests
check the phases' outputs with it). Keys marked `when` are written only
with an option (the test of `when` reads the result itself).

Kinds: 's' seconds (finite, ≥ 0), 'x' a positive finite number (speed-ups,
rates, FLOPs), 'f' any finite number (differences), 'pct' a percentage
(0-100), 'mb' MiB (> 0), 'seconds' a list of 's', 'int', 'str', 'bool',
'list', 'dict'.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Key:
  kind: str
  meaning: str
  when: Callable[[dict], bool] | None = None


def _rolled(r: dict) -> bool:
  return bool(r.get("base_config", {}).get("rolled"))


def _rerun(r: dict) -> bool:
  return bool(r.get("autoattack_config", {}).get("compiled_rerun", True))


def _mask(r: dict) -> bool:
  return "mask" in r.get("mrc_config", {}).get("routes", ())


K = Key

# Written by every phase (merged when several phases run).
COMMON = {
    "phases": K("list", "the phases in this result"),
    "versions": K("dict", "jax, torch, torchattacks and Python versions"),
    "threads": K("dict", "CPU count, torch threads, JAX devices, XLA_FLAGS"),
    "peak_rss_mb": K("mb", "peak resident memory of the process (max over phases)"),
}

BASE = {
    "base_config": K("dict", "model, width, batch, image shape, PGD steps, ε, step, reps, rolled"),
    "conv_impl": K("str", "input-gradient rule of the JAX convolutions (resolved --conv_impl)"),
    "matmul_size": K("int", "n of the n×n float32 matmul that measures peak FLOP/s"),
    "matmul_gflops_per_s": K("x", "that matmul's GFLOP/s per wall second (best of reps)"),
    "matmul_gflops_per_cpu_s": K("x", "that matmul's GFLOP/s per process CPU second"),
    "pgd_compile_s": K("s", "JAX PGD attack: lower + compile seconds"),
    "jax_pgd_unroll": K("str", "loop form of the timed JAX attack (unroll='auto' resolved)"),
    "jax_pgd_s_per_batch": K("s", "JAX PGD attack, seconds per batch (best of reps)"),
    "jax_pgd_s_all": K("seconds", "JAX PGD attack, every timed run"),
    "jax_pgd_cpu_s_per_batch": K("s", "JAX PGD attack, least CPU seconds of a run"),
    "jax_pgd_img_per_s": K("x", "JAX PGD attack, images per second"),
    "pgd_flops_per_batch": K("x", "FLOPs of the compiled attack (XLA cost analysis)"),
    "pgd_achieved_gflops_per_s": K("x", "those FLOPs over the attack's best seconds, in GFLOP/s"),
    "pgd_flops_fraction_of_peak": K("x", "achieved FLOP/s over the matmul's FLOP/s (wall time)"),
    "pgd_flops_fraction_of_peak_cpu_time": K("x", "the same ratio in CPU time"),
    "jax_pgd_rolled_s_per_batch": K("s", "JAX PGD attack as a rolled fori_loop, seconds", _rolled),
    "jax_pgd_rolled_s_all": K("seconds", "rolled attack, every timed run", _rolled),
    "unrolled_speedup_vs_rolled": K("x", "rolled seconds / unrolled seconds", _rolled),
    "at_step_trace_lower_s": K("s", "JAX PGD-AT step: trace + lower seconds"),
    "at_step_xla_compile_s": K("s", "JAX PGD-AT step: XLA compile seconds"),
    "at_step_compile_s": K("s", "JAX PGD-AT step: trace + lower + compile seconds"),
    "jax_at_step_s": K("s", "JAX PGD-AT step, seconds (best of reps)"),
    "jax_at_step_s_all": K("seconds", "JAX PGD-AT step, every timed run"),
    "jax_at_step_cpu_s": K("s", "JAX PGD-AT step, least CPU seconds of a run"),
    "jax_at_img_per_s": K("x", "JAX PGD-AT step, images per second"),
    "peak_rss_mb_before_torch": K("mb", "peak memory after the JAX measurements (twin built)"),
    "logits_max_abs_diff_jax_vs_torch": K("f",
      "largest absolute logit difference, JAX vs the PyTorch twin, same weights and batch"),
    "torch_pgd_s_per_batch": K("s", "torchattacks.PGD, seconds per batch (best of reps)"),
    "torch_pgd_s_all": K("seconds", "torchattacks.PGD, every timed run"),
    "torch_pgd_cpu_s_per_batch": K("s", "torchattacks.PGD, least CPU seconds of a run"),
    "torch_pgd_img_per_s": K("x", "torchattacks.PGD, images per second"),
    "pgd_speedup_vs_torch": K("x", "PGD seconds: PyTorch / JAX"),
    "pgd_speedup_vs_torch_cpu_time": K("x", "PGD CPU seconds: PyTorch / JAX"),
    "torch_at_step_s": K("s", "PyTorch PGD-AT step (torchattacks + SGD), seconds (best of reps)"),
    "torch_at_step_s_all": K("seconds", "PyTorch PGD-AT step, every timed run"),
    "torch_at_step_cpu_s": K("s", "PyTorch PGD-AT step, least CPU seconds of a run"),
    "torch_at_img_per_s": K("x", "PyTorch PGD-AT step, images per second"),
    "at_step_speedup_vs_torch": K("x", "PGD-AT step seconds: PyTorch / JAX"),
    "at_step_speedup_vs_torch_cpu_time": K("x", "PGD-AT step CPU seconds: PyTorch / JAX"),
    "interpolation_seconds_per_alpha": K("s",
      "θ(α) + clean and PGD evaluation of one batch, compiled (best of reps)"),
    "interpolation_s_all": K("seconds", "interpolation, every timed run"),
    "interpolation_setting": K("str", "what the interpolation time covers"),
    "peak_rss_mb_base": K("mb", "peak memory of the base phase"),
}

MRC = {
    "mrc_config": K("dict",
      "model, width, weights, fixed set, batch, passes, ε, lr, modules, reps, routes"),
    "mrc_modules": K("list", "the modules timed, in order (the *_all lists follow it)"),
    "mrc_logits_max_abs_diff_jax_vs_torch": K("f",
      "largest absolute logit difference on the fixed set's first batch, JAX vs PyTorch"),
    "mrc_seconds_per_module": K("s",
      "ours (static route), seconds per module after compilation, mean"),
    "mrc_seconds_per_module_all": K("seconds", "ours (static route) per module, after compilation"),
    "mrc_cpu_s_per_module_all": K("seconds", "ours (static route) per module, CPU seconds"),
    "mrc_with_compile_seconds_per_module": K("s",
      "ours (static route), first scoring of a module (with compile), mean"),
    "mrc_with_compile_seconds_per_module_all": K("seconds",
      "ours (static route) per module, with compile"),
    "mrc_compile_s_per_module": K("s",
      "JAX compile seconds (jax.monitoring spans) in a module's first scoring, mean"),
    "mrc_compile_s_all": K("seconds", "those compile seconds per module"),
    "mrc_torch_seconds_per_module": K("s",
      "the authors' PyTorch loop, seconds per module (best of reps), mean"),
    "mrc_torch_seconds_per_module_all": K("seconds", "the authors' loop per module"),
    "mrc_torch_cpu_s_per_module_all": K("seconds", "the authors' loop per module, CPU seconds"),
    "mrc_speedup_vs_torch": K("x", "mean seconds per module: PyTorch / ours after compilation"),
    "mrc_speedup_vs_torch_all": K("list", "that ratio per module"),
    "mrc_speedup_vs_torch_with_compile": K("x",
      "mean seconds per module: PyTorch / ours with compile"),
    "mrc_speedup_vs_torch_cpu_time": K("x", "mean CPU seconds per module: PyTorch / ours"),
    "mrc_values": K("dict", "MRC per module: static, torch (and mask)"),
    "mrc_base_loss": K("dict", "loss of θ on the fixed set: ours, torch"),
    "mrc_max_rel_diff_vs_torch": K("f",
      "max relative MRC difference, ours (every route) vs PyTorch"),
    "mrc_loss_max_rel_diff_vs_torch": K("f",
      "max relative difference of the per-pass losses, static vs PyTorch"),
    "mrc_mask_seconds_per_module": K("s",
      "ours (mask route), seconds per module after compilation, mean", _mask),
    "mrc_mask_seconds_per_module_all": K("seconds", "ours (mask route) per module", _mask),
    "mrc_mask_cpu_s_per_module_all": K("seconds",
      "ours (mask route) per module, CPU seconds", _mask),
    "mrc_mask_compile_s": K("s",
      "mask route: JAX compile seconds (one program for every module)", _mask),
    "mrc_mask_with_compile_seconds_per_module_all": K("seconds",
      "ours (mask route) per module, first scoring", _mask),
    "mrc_mask_speedup_vs_torch": K("x", "mean seconds per module: PyTorch / mask route", _mask),
    "mrc_speedup_vs_mask": K("x", "mean seconds per module: mask route / static route", _mask),
    "mrc_speedup_vs_mask_all": K("list", "that ratio per module", _mask),
    "mrc_static_vs_mask_max_rel_diff": K("f",
      "max relative MRC difference, static vs mask route", _mask),
    "mrc_setting": K("str", "what the MRC times cover"),
    "peak_rss_mb_mrc": K("mb", "peak memory of the mrc phase"),
}

AUTOATTACK = {
    "autoattack_config": K("dict",
      "model, weights, images, batch, ε, budgets, loop form, the torchattacks call"),
    "autoattack_logits_max_abs_diff_jax_vs_torch": K("f",
      "largest absolute logit difference on the first clean batch, JAX vs PyTorch"),
    "autoattack_seconds": K("s", "ours, the whole suite after compilation (second run)", _rerun),
    "autoattack_seconds_per_attack": K("dict", "ours after compilation, seconds per attack", _rerun),
    "autoattack_img_per_s": K("x", "ours after compilation, images per second", _rerun),
    "autoattack_first_run_seconds": K("s", "ours, first run (compiles every attack)"),
    "autoattack_first_run_seconds_per_attack": K("dict", "ours, first run, seconds per attack"),
    "autoattack_img_per_s_with_compile": K("x", "ours with compile, images per second"),
    "autoattack_compile_s": K("s", "JAX compile seconds (jax.monitoring spans) in the first run"),
    "autoattack_compile_s_per_attack": K("dict",
      "per attack: first-run minus second-run seconds (compilation and first calls)",
      _rerun),
    "autoattack_torch_seconds": K("s", "torchattacks.AutoAttack, whole suite"),
    "autoattack_torch_seconds_per_attack": K("dict", "torchattacks, seconds per attack"),
    "autoattack_torch_img_per_s": K("x", "torchattacks, images per second"),
    "autoattack_speedup_vs_torch": K("x", "suite seconds: torchattacks / ours after compilation", _rerun),
    "autoattack_speedup_vs_torch_with_compile": K("x",
      "suite seconds: torchattacks / ours first run"),
    "autoattack_speedup_vs_torch_per_attack": K("dict",
      "per attack: torchattacks seconds / ours after compilation", _rerun),
    "autoattack_speedup_vs_torch_per_attack_with_compile": K("dict",
      "per attack: torchattacks seconds / ours first run"),
    "autoattack_clean_acc": K("pct", "clean accuracy (%)"),
    "autoattack_robust_acc_after_each": K("dict",
      "ours: robust accuracy (%) after each attack and all before it"),
    "autoattack_torch_robust_acc_after_each": K("dict",
      "torchattacks: robust accuracy (%) after each attack and all before it"),
    "autoattack_robust_acc": K("pct", "ours: robust accuracy (%) after the suite"),
    "autoattack_torch_robust_acc": K("pct",
      "torchattacks: clean-correct and still correct after the suite (%)"),
    "autoattack_robust_acc_diff_pp": K("f", "ours − torchattacks robust accuracy (pp)"),
    "autoattack_runs_agree": K("bool", "our two runs gave the same robust accuracies", _rerun),
    "autoattack_warnings": K("list",
      "AutoAttack's checks on our side (rift_jax.evaluation.checks)"),
    "autoattack_setting": K("str", "what the AutoAttack times cover"),
    "peak_rss_mb_autoattack": K("mb", "peak memory of the autoattack phase"),
}

PHASES = {"base": BASE, "mrc": MRC, "autoattack": AUTOATTACK}
ALL = {**COMMON, **BASE, **MRC, **AUTOATTACK}


@dataclasses.dataclass(frozen=True)
class Table:
  """A Markdown table with a row per entry of `rows` (a list key, or a dict
  key's keys); `columns`: (header, key, sub-key or None) — a column's key
  holds a list aligned with the rows or a dict by row; `total`: header ->
  scalar key of a last row 'all'."""
  title: str
  rows: str
  columns: tuple[tuple[str, str, str | None], ...]
  total: tuple[tuple[str, str], ...] = ()


# Side-by-side tables in each phase's Markdown (after its key table).
TABLES = {
    "mrc": (Table(
        "Seconds per module (ours after compilation; compile: JAX spans)",
        "mrc_modules",
        (("ours, static", "mrc_seconds_per_module_all", None),
         ("ours compile", "mrc_compile_s_all", None),
         ("ours, mask", "mrc_mask_seconds_per_module_all", None),
         ("PyTorch (authors' loop)", "mrc_torch_seconds_per_module_all", None),
         ("speed-up", "mrc_speedup_vs_torch_all", None),
         ("MRC ours", "mrc_values", "static"),
         ("MRC PyTorch", "mrc_values", "torch")),
        (("ours, static", "mrc_seconds_per_module"),
         ("ours compile", "mrc_compile_s_per_module"),
         ("ours, mask", "mrc_mask_seconds_per_module"),
         ("PyTorch (authors' loop)", "mrc_torch_seconds_per_module"),
         ("speed-up", "mrc_speedup_vs_torch"))),),
    "autoattack": (Table(
        "Per attack (seconds; robust accuracy % after the attack and all before it)",
        "autoattack_first_run_seconds_per_attack",
        (("ours s (compiled)", "autoattack_seconds_per_attack", None),
         ("ours compile s", "autoattack_compile_s_per_attack", None),
         ("torchattacks s", "autoattack_torch_seconds_per_attack", None),
         ("speed-up", "autoattack_speedup_vs_torch_per_attack", None),
         ("robust % ours", "autoattack_robust_acc_after_each", None),
         ("robust % torchattacks", "autoattack_torch_robust_acc_after_each", None),
         ("ours s (first run)", "autoattack_first_run_seconds_per_attack", None),
         ("speed-up with compile",
          "autoattack_speedup_vs_torch_per_attack_with_compile", None)),
        (("ours s (compiled)", "autoattack_seconds"),
         ("ours compile s", "autoattack_compile_s"),
         ("torchattacks s", "autoattack_torch_seconds"),
         ("speed-up", "autoattack_speedup_vs_torch"),
         ("robust % ours", "autoattack_robust_acc"),
         ("robust % torchattacks", "autoattack_torch_robust_acc"),
         ("ours s (first run)", "autoattack_first_run_seconds"),
         ("speed-up with compile", "autoattack_speedup_vs_torch_with_compile"))),),
}


def _finite(v: Any) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v))


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "s": lambda v: _finite(v) and v >= 0,
    "x": lambda v: _finite(v) and v > 0,
    "f": _finite,
    "pct": lambda v: _finite(v) and 0 <= v <= 100,
    "mb": lambda v: _finite(v) and v > 0,
    "seconds": lambda v: isinstance(v, list) and all(_finite(t) and t >= 0 for t in v),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
}


def expected(result: dict) -> dict[str, Key]:
  """The keys `result` must hold: the common ones and those of its phases
  (keys with `when` only where their option is on)."""
  keys = dict(COMMON)
  for phase in result.get("phases", []):
    keys.update({k: v for k, v in PHASES.get(phase, {}).items()
                 if v.when is None or v.when(result)})
  return keys


def problems(result: dict) -> list[str]:
  """What is wrong with a finished result: unknown phases or keys, missing
  keys, values not of their kind. Empty when it fits the schema."""
  out = [f"unknown phase {p!r}" for p in result.get("phases", [])
         if p not in PHASES]
  out += [f"undeclared key {k!r}" for k in result if k not in ALL]
  for name, key in expected(result).items():
    if name not in result:
      out.append(f"missing key {name!r}")
    elif not _CHECKS[key.kind](result[name]):
      out.append(f"{name}={result[name]!r} is not of kind {key.kind!r}")
  return out
