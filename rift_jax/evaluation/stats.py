"""Paired significance tests and seed summaries for accuracy comparisons.

numpy, with scipy (imported when a function needs it) for the binomial and
Student-t distributions; importing this module imports neither JAX,
TensorFlow nor scipy.

Two models A and B are compared on the same n examples through boolean
correctness vectors `a, b: [n]` (True = classified correctly). Everything
works on the per-example difference

    d_i = b_i − a_i  ∈ {−1, 0, +1},        Δ = mean(d) = acc(B) − acc(A).

The same functions accept `a, b: [..., n]`: the LAST axis indexes the
examples (the resampling unit) and every leading axis holds more outcomes of
the same example — the seeds of a study (`[seeds, n]`: every seed's models
are tested on the same images), or the corruptions × severities of one image
(`[cells, n]`), or both (`[seeds, cells, n]`). The per-example statistic is
then the mean over the leading axes, d_i = mean(b[..., i] − a[..., i]), so Δ
is the pooled difference and an example's outcomes are never split up (a
cluster bootstrap over images; treating the rows as independent examples
would shrink the interval by about √rows when they are correlated).

  paired_bootstrap    Δ in percentage points with a percentile bootstrap CI
  mcnemar             exact two-sided McNemar p (1-D correctness only)
  paired_permutation  two-sided sign-flip permutation p of mean(d)
  seed_summary        mean, sample std and t-interval over seeds
  holm                Holm's step-down adjustment of a family of p-values
  noninferior         is a drop ruled out beyond a margin?
  verdict, describe, format_p   words and numbers for reports
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from rift_jax.errors import UserError

# Bound on the elements of one resampling block (≈ 32 MB of float64).
_BLOCK_ELEMENTS = 4_000_000
# Counts-based resampling is used when d has at most this many distinct
# values (or up to n // 8); otherwise example indices / signs are drawn.
_MIN_COUNT_VALUES = 16


def _check_level(level: float) -> None:
  if not 0.0 < level < 1.0:
    raise UserError(f"level={level!r} must lie in (0, 1)")


def _check_resamples(num_resamples: int) -> None:
  if int(num_resamples) != num_resamples or num_resamples < 1:
    raise UserError(f"num_resamples={num_resamples!r} must be an integer >= 1")


def paired_differences(a, b) -> np.ndarray:
  """Per-example differences d_i = stat(b_i) − stat(a_i), float64 `[n]`.

  Args:
    a, b: correctness of models A and B on the same examples, `[n]` or
      `[..., n]` (leading axes: more outcomes of each example, e.g. seeds),
      bool or numbers in [0, 1]; same shape.

  Returns:
    `[n]`: b − a for 1-D inputs; else the mean over the leading axes,
    mean(b[..., i] − a[..., i]).
  """
  a = np.asarray(a)
  b = np.asarray(b)
  if a.shape != b.shape:
    raise UserError(f"a and b must have the same shape, got {a.shape} and "
                    f"{b.shape}")
  if a.ndim < 1 or a.size == 0:
    raise UserError(f"a and b must be non-empty [n] or [..., n] arrays, got "
                    f"shape {a.shape}")
  a = a.astype(np.float64)
  b = b.astype(np.float64)
  for name, x in (("a", a), ("b", b)):
    if not np.all((x >= 0) & (x <= 1)):  # also rejects NaN
      raise UserError(f"{name} must hold correctness values in [0, 1] "
                      "(bool or fractions, not percentages)")
  d = (b - a).reshape(-1, a.shape[-1])
  # Column sums of {−1, 0, 1} are exact integers, so equal numerators give
  # bit-identical d_i (which the counts-based resampling relies on).
  return d[0] if d.shape[0] == 1 else d.sum(axis=0) / d.shape[0]


def _blocks(total: int, per_item: int) -> Iterator[int]:
  """Yields block sizes summing to `total`, each ≤ _BLOCK_ELEMENTS/per_item."""
  size = max(1, _BLOCK_ELEMENTS // max(1, per_item))
  done = 0
  while done < total:
    step = min(size, total - done)
    yield step
    done += step


def _use_counts(num_values: int, n: int) -> bool:
  return num_values <= max(_MIN_COUNT_VALUES, n // 8)


def _bootstrap_means(d: np.ndarray, num_resamples: int,
                     rng: np.random.Generator) -> np.ndarray:
  """`[num_resamples]` means of d over n indices drawn with replacement.

  A resample's mean depends only on how often each distinct value v_j of d
  was drawn, and those counts are Multinomial(n, c_j / n) (c_j = how often
  v_j occurs in d). With few distinct values (1-D correctness: at most 3)
  the counts are drawn directly, which costs O(#values) instead of O(n) per
  resample; otherwise indices are drawn in blocks. Both sample the same
  distribution.
  """
  n = d.shape[0]
  values, counts = np.unique(d, return_counts=True)
  out = []
  if _use_counts(values.size, n):
    pvals = counts / n
    for size in _blocks(num_resamples, values.size):
      draws = rng.multinomial(n, pvals, size=size)          # [size, U]
      out.append(draws @ values / n)
  else:
    for size in _blocks(num_resamples, n):
      idx = rng.integers(0, n, size=(size, n))              # [size, n]
      out.append(d[idx].mean(axis=1))
  return np.concatenate(out)


def paired_bootstrap(a, b, num_resamples: int = 10000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
  """Accuracy difference B − A with a paired percentile bootstrap interval.

  With d_i = b_i − a_i (or the mean over the leading axes of b − a for
  `[..., n]` inputs, see the module docstring), Δ = 100·mean(d) percentage
  points. Each resample draws n example indices with replacement — the same
  indices for A and B, which keeps the pairing, and for every seed / cell of
  an example, which keeps the cluster — and records 100·mean(d[idx]); the
  interval is the ((1 − level)/2, (1 + level)/2) quantiles of the
  `num_resamples` resampled means (linear interpolation). Deterministic for
  a seed.

  Args:
    a, b: `[n]` bool correctness of models A and B on the same examples, or
      `[..., n]` (e.g. `[seeds, n]`: the last axis is resampled, each
      example's outcomes over the leading axes stay together).
    num_resamples: number of bootstrap resamples.
    seed: seed of the numpy Generator.
    level: confidence level of the interval.

  Returns:
    (delta, lo, hi) in percentage points.
  """
  _check_resamples(num_resamples)
  _check_level(level)
  d = paired_differences(a, b)
  means = _bootstrap_means(d, int(num_resamples), np.random.default_rng(seed))
  lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
  return float(100 * d.mean()), float(100 * lo), float(100 * hi)


def mcnemar(a, b) -> float:
  """Exact two-sided McNemar test of paired correctness.

  With n01 = #(a wrong, b right), n10 = #(a right, b wrong) and
  n = n01 + n10 discordant pairs, under H0 (A and B equally accurate)
  n01 ~ Binomial(n, 1/2), and

      p = min(1, 2·P(X ≤ min(n01, n10))),  X ~ Binomial(n, 1/2);
      p = 1 when n = 0.

  Args:
    a, b: `[n]` bool (or 0/1) correctness of models A and B on the same
      examples. Inputs with leading axes (seeds, corruption cells) are
      refused: their per-example differences are not binary; use
      `paired_permutation`, which keeps examples as the unit.

  Returns:
    The two-sided p-value.
  """
  from scipy import stats as scipy_stats
  a = np.asarray(a)
  b = np.asarray(b)
  if a.ndim != 1 or b.ndim != 1:
    raise UserError("mcnemar takes 1-D correctness vectors; for [..., n] "
                    "outcomes (seeds, corruptions) use paired_permutation")
  d = paired_differences(a, b)
  if not np.all((a == 0) | (a == 1)) or not np.all((b == 0) | (b == 1)):
    raise UserError("mcnemar needs binary correctness (bool or 0/1)")
  n01 = int(np.count_nonzero(d > 0))
  n10 = int(np.count_nonzero(d < 0))
  n = n01 + n10
  if n == 0:
    return 1.0
  return min(1.0, 2.0 * float(scipy_stats.binom.cdf(min(n01, n10), n, 0.5)))


def _sign_flip_sums(d: np.ndarray, num_resamples: int,
                    rng: np.random.Generator) -> np.ndarray:
  """`[num_resamples]` sums Σ s_i·d_i with independent uniform signs s_i = ±1.

  Zeros contribute nothing; the c_j copies of a distinct magnitude v_j > 0
  contribute v_j·(2·X_j − c_j) with X_j ~ Binomial(c_j, 1/2), which is drawn
  directly when there are few distinct magnitudes (1-D correctness: only
  v = 1); otherwise signs are drawn per example in blocks. Same distribution.
  """
  n = d.shape[0]
  mags, counts = np.unique(np.abs(d[d != 0]), return_counts=True)
  if mags.size == 0:
    return np.zeros(num_resamples)
  out = []
  if _use_counts(mags.size, n):
    for size in _blocks(num_resamples, mags.size):
      heads = rng.binomial(counts, 0.5, size=(size, mags.size))  # [size, U]
      out.append((2 * heads - counts) @ mags)
  else:
    for size in _blocks(num_resamples, n):
      signs = 2.0 * rng.integers(0, 2, size=(size, n)) - 1.0     # [size, n]
      out.append(signs @ d)
  return np.concatenate(out)


def paired_permutation(a, b, num_resamples: int = 10000,
                       seed: int = 0) -> float:
  """Two-sided paired sign-flip permutation test of mean(b − a).

  Under H0 the labels A/B of each example are exchangeable, so each d_i is
  as likely as −d_i. With T = |mean(d)| observed and T_r = |mean(s·d)| for
  `num_resamples` random sign vectors s ∈ {−1, +1}^n,

      p = (1 + #{r : T_r ≥ T}) / (1 + num_resamples)

  (never 0; identical vectors give p = 1). T_r ≥ T is tested on sums with a
  tolerance of 1e-9·Σ|d_i| so that exact ties are not lost to rounding.

  Args:
    a, b: `[n]` bool correctness of models A and B on the same examples, or
      `[..., n]` with the mean over the leading axes as per-example
      statistic (the OOD p-value, seeds pooled: images are the unit, all
      their outcomes flip together).
    num_resamples: number of random sign vectors.
    seed: seed of the numpy Generator.

  Returns:
    The two-sided p-value.
  """
  _check_resamples(num_resamples)
  d = paired_differences(a, b)
  sums = _sign_flip_sums(d, int(num_resamples), np.random.default_rng(seed))
  observed = abs(float(d.sum()))
  tolerance = 1e-9 * float(np.abs(d).sum())
  hits = int(np.count_nonzero(np.abs(sums) >= observed - tolerance))
  return (1 + hits) / (1 + int(num_resamples))


def p_floor(num_resamples: int) -> float:
  """The smallest p `paired_permutation` can return: 1/(1 + R)."""
  return 1.0 / (1 + int(num_resamples))


def t_ppf(q: float, df: float) -> float:
  """Student-t quantile (scipy.stats.t.ppf)."""
  from scipy import stats as scipy_stats
  return float(scipy_stats.t.ppf(q, df))


def seed_summary(values, level: float = 0.95
                 ) -> tuple[float, float, float, float]:
  """Mean over seeds with the sample std and a Student-t interval.

      mean = Σ v_i / n,  std = √(Σ (v_i − mean)² / (n − 1)),
      lo, hi = mean ∓ t_{(1+level)/2, n−1} · std / √n.

  Args:
    values: `[n]` one number per seed (e.g. accuracies in %).
    level: confidence level of the interval.

  Returns:
    (mean, std, lo, hi); with a single seed (n = 1) std and the interval are
    undefined and returned as NaN: (mean, nan, nan, nan).
  """
  _check_level(level)
  v = np.asarray(values, dtype=np.float64)
  if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
    raise UserError(f"values must be a non-empty finite [n] array, got {v!r}")
  n = v.size
  mean = float(v.mean())
  if n == 1:
    return mean, math.nan, math.nan, math.nan
  std = float(v.std(ddof=1))
  half = t_ppf((1 + level) / 2, n - 1) * std / math.sqrt(n)
  return mean, std, mean - half, mean + half


def verdict(lo: float, hi: float, p: float | None = None,
            alpha: float = 0.05) -> str:
  """'significant' if [lo, hi] excludes 0 (and p < alpha when p is given).

  Otherwise — including an interval touching 0 and NaN bounds — the
  difference is 'within noise'.
  """
  excludes_zero = lo > 0 or hi < 0
  if excludes_zero and (p is None or p < alpha):
    return "significant"
  return "within noise"


def _signed(x: float) -> str:
  """'+1.20' / '−0.10' with a true minus sign; −0.00 prints as +0.00."""
  text = f"{round(x, 2) + 0.0:+.2f}"
  return text.replace("-", "\u2212")


def format_p(p: float, floor: float | None = None) -> str:
  """'p = 0.012'; 'p < 0.001' below 0.001; a Monte-Carlo p at its floor
  1/(1 + R) (`floor`, no resample reached the observed statistic) as
  'p < 1/R', e.g. 'p < 1e-4' for R = 10,000: never 'p = 0.0001', which
  would claim a precision the test does not have."""
  if floor is not None and p <= floor * (1 + 1e-9):
    r = round((1 - floor) / floor)        # R, the number of resamples
    k = round(math.log10(r)) if r > 0 else 0
    if r == 10 ** k:
      return f"p < 1e-{k}"                 # p = 1/(R + 1) < 1/R
    return f"p ≤ 1/{r + 1:,}"
  if p < 0.001:
    return "p < 0.001"
  return f"p = {p:.2g}"


def holm(pvalues) -> np.ndarray:
  """Holm's step-down adjustment for a family of m tests (Holm 1979).

  With the p-values sorted ascending, p_(1) ≤ … ≤ p_(m),

      p̃_(i) = min(1, max_{j ≤ i} (m − j + 1)·p_(j)),

  returned in the input order. Rejecting p̃ < α controls the family-wise
  error rate at α under any dependence between the tests.
  """
  p = np.asarray(pvalues, dtype=np.float64)
  if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
    raise UserError(f"holm needs a 1-D array of p-values in [0, 1], got {p!r}")
  m = p.size
  order = np.argsort(p, kind="stable")
  scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
  adjusted = np.empty(m)
  adjusted[order] = np.maximum.accumulate(scaled)
  return adjusted


def noninferior(lo: float, margin: float) -> bool:
  """True when a difference's interval rules out a drop of `margin` or more:
  its lower bound lies above −margin (same units, e.g. pp). "B keeps A's
  accuracy" may be claimed only then; an interval that merely contains 0
  shows nothing."""
  if not margin >= 0:
    raise UserError(f"margin={margin!r} must be >= 0")
  return bool(lo > -margin)


def describe(delta: float, lo: float, hi: float, n: int,
             p: float | None = None, alpha: float = 0.05) -> str:
  """One line such as '+1.20 pp [+0.30, +2.10], p = 0.012, significant'.

  A difference within noise also names the sample size, which bounds what
  could have been resolved: '−0.10 pp [−0.90, +0.70], p = 0.85, within noise
  at n = 1,000'. p is printed with two significant digits ('p < 0.001'
  below 0.001) and left out when None; the verdict is `verdict(lo, hi, p,
  alpha)`.
  """
  parts = [f"{_signed(delta)} pp [{_signed(lo)}, {_signed(hi)}]"]
  if p is not None:
    parts.append(format_p(p))
  word = verdict(lo, hi, p, alpha)
  parts.append(word if word == "significant" else f"{word} at n = {n:,}")
  return ", ".join(parts)
