"""Paired significance tests and seed summaries for accuracy comparisons.

Pure numpy (and the standard library); importing this module imports neither
JAX nor TensorFlow, and scipy only lazily, when `seed_summary` asks for a t
quantile and scipy happens to be installed.

Two models A and B are compared on the same n examples through boolean
correctness vectors `a, b: [n]` (True = classified correctly). Everything
works on the per-example difference

    d_i = b_i − a_i  ∈ {−1, 0, +1},        Δ = mean(d) = acc(B) − acc(A).

The same functions accept `a, b: [n, k]`: k outcomes per example (for the
OOD comparison, one image under k = corruptions × severities), and then the
per-example statistic is the row mean, d_i = mean_j(b_ij − a_ij), so Δ is the
difference of the mean corruption accuracies and the resampling unit is still
the image (the k outcomes of one image are never split up).

  paired_bootstrap    Δ in percentage points with a percentile bootstrap CI
  mcnemar             exact two-sided McNemar p (1-D correctness only)
  paired_permutation  two-sided sign-flip permutation p of mean(d)
  seed_summary        mean, sample std and t-interval over seeds
  verdict, describe   one-word verdict and a one-line summary
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
# McNemar: exact big-integer arithmetic up to this many discordant pairs.
_EXACT_BINOMIAL_MAX_N = 20_000


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
      `[n, k]`, bool or numbers in [0, 1]; same shape.

  Returns:
    `[n]`: b − a for 1-D inputs; the row mean mean_j(b_ij − a_ij) for 2-D.
  """
  a = np.asarray(a)
  b = np.asarray(b)
  if a.shape != b.shape:
    raise UserError(f"a and b must have the same shape, got {a.shape} and "
                    f"{b.shape}")
  if a.ndim not in (1, 2) or a.shape[0] == 0 or a.size == 0:
    raise UserError(f"a and b must be non-empty [n] or [n, k] arrays, got "
                    f"shape {a.shape}")
  a = a.astype(np.float64)
  b = b.astype(np.float64)
  for name, x in (("a", a), ("b", b)):
    if not np.all((x >= 0) & (x <= 1)):  # also rejects NaN
      raise UserError(f"{name} must hold correctness values in [0, 1] "
                      "(bool or fractions, not percentages)")
  d = b - a
  # Row sums of {−1, 0, 1} are exact integers, so equal numerators give
  # bit-identical d_i (which the counts-based resampling relies on).
  return d if d.ndim == 1 else d.sum(axis=1) / d.shape[1]


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

  With d_i = b_i − a_i (or the row mean of b − a for `[n, k]` inputs, see
  the module docstring), Δ = 100·mean(d) percentage points. Each resample
  draws n example indices with replacement — the same indices for A and B,
  which keeps the pairing — and records 100·mean(d[idx]); the interval is
  the ((1 − level)/2, (1 + level)/2) quantiles of the `num_resamples`
  resampled means (linear interpolation). Deterministic for a seed.

  Args:
    a, b: `[n]` bool correctness of models A and B on the same examples, or
      `[n, k]` (k outcomes per example; the per-example statistic is the row
      mean and examples, not single outcomes, are resampled).
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


def _binom_half_cdf_exact(m: int, n: int) -> float:
  """P(X ≤ m), X ~ Binomial(n, 1/2), as Σ_{i≤m} C(n, i) / 2^n in integers."""
  term, total = 1, 1
  for i in range(1, m + 1):
    term = term * (n - i + 1) // i
    total += term
  # int / int is correctly rounded in Python, even for huge operands.
  return total / (1 << n)


_STIRLING = (1 / 12, 1 / 360, 1 / 1260, 1 / 1680, 1 / 1188)


def _stirlerr(k: int) -> float:
  """log k! − ((k + ½)·log k − k + ½·log 2π), the Stirling remainder."""
  if k <= 15:
    return (math.lgamma(k + 1.0) - (k + 0.5) * math.log(k) + k
            - 0.5 * math.log(2 * math.pi))
  s0, s1, s2, s3, s4 = _STIRLING
  kk = float(k) * k
  if k > 500:
    return (s0 - s1 / kk) / k
  if k > 80:
    return (s0 - (s1 - s2 / kk) / kk) / k
  if k > 35:
    return (s0 - (s1 - (s2 - s3 / kk) / kk) / kk) / k
  return (s0 - (s1 - (s2 - (s3 - s4 / kk) / kk) / kk) / kk) / k


def _bd0(x: float, mu: float) -> float:
  """x·log(x/μ) + μ − x, without cancellation when x ≈ μ."""
  if abs(x - mu) < 0.1 * (x + mu):
    v = (x - mu) / (x + mu)
    s = (x - mu) * v
    term = 2 * x * v
    for j in range(1, 1000):
      term *= v * v
      s_next = s + term / (2 * j + 1)
      if s_next == s:
        break
      s = s_next
    return s
  return x * math.log(x / mu) + mu - x


def _log_binom_half_pmf(i: int, n: int) -> float:
  """log P(X = i), X ~ Binomial(n, ½), by Loader's saddle-point formula."""
  if i == 0 or i == n:
    return -n * math.log(2.0)
  return (_stirlerr(n) - _stirlerr(i) - _stirlerr(n - i)
          - _bd0(i, n / 2) - _bd0(n - i, n / 2)
          + 0.5 * math.log(n / (2 * math.pi * i * (n - i))))


def _binom_half_cdf_log(m: int, n: int) -> float:
  """P(X ≤ m), X ~ Binomial(n, 1/2), for m ≤ n/2, in floating point.

  P = P(X = m) · Σ_{i≤m} C(n, i)/C(n, m); the ratios are built downwards,
  r_{i−1} = r_i · i/(n − i + 1) ≤ 1, and the sum stops once they are
  negligible. P(X = m) comes from Loader's saddle-point formula (Stirling
  remainders and a cancellation-free deviance), so the relative error stays
  near machine precision (times |log P|) even for n in the millions.
  """
  ratio, total = 1.0, 1.0
  for i in range(m, 0, -1):
    ratio *= i / (n - i + 1)
    total += ratio
    if ratio < 1e-17 * total:
      break
  return math.exp(_log_binom_half_pmf(m, n) + math.log(total))


def mcnemar(a, b) -> float:
  """Exact two-sided McNemar test of paired correctness.

  With n01 = #(a wrong, b right), n10 = #(a right, b wrong) and
  n = n01 + n10 discordant pairs, under H0 (A and B equally accurate)
  n01 ~ Binomial(n, 1/2), and

      p = min(1, 2·P(X ≤ min(n01, n10))),  X ~ Binomial(n, 1/2);
      p = 1 when n = 0.

  Computed exactly with integers up to n = 20,000 and above that from a
  saddle-point log pmf and a downward ratio sum (relative error ~1e-13 at
  n = 10^7); no scipy needed.

  Args:
    a, b: `[n]` bool (or 0/1) correctness of models A and B on the same
      examples. 2-D inputs are refused: for k outcomes per example use
      `paired_permutation`, which keeps examples as the unit.

  Returns:
    The two-sided p-value.
  """
  a = np.asarray(a)
  b = np.asarray(b)
  if a.ndim != 1 or b.ndim != 1:
    raise UserError("mcnemar takes 1-D correctness vectors; for [n, k] "
                    "outcomes use paired_permutation")
  d = paired_differences(a, b)
  if not np.all((a == 0) | (a == 1)) or not np.all((b == 0) | (b == 1)):
    raise UserError("mcnemar needs binary correctness (bool or 0/1)")
  n01 = int(np.count_nonzero(d > 0))
  n10 = int(np.count_nonzero(d < 0))
  n = n01 + n10
  if n == 0:
    return 1.0
  m = min(n01, n10)
  if n <= _EXACT_BINOMIAL_MAX_N:
    cdf = _binom_half_cdf_exact(m, n)
  else:
    cdf = _binom_half_cdf_log(m, n)
  return min(1.0, 2.0 * cdf)


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
      `[n, k]` with the row mean as per-example statistic (the OOD p-value:
      images are the unit, their k corruption outcomes flip together).
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


def _betainc_cf(a: float, b: float, x: float) -> float:
  """Continued fraction of I_x(a, b) (modified Lentz), for x < (a+1)/(a+b+2)."""
  tiny = 1e-300
  c, dd = 1.0, 1.0 - (a + b) * x / (a + 1.0)
  dd = 1.0 / (dd if abs(dd) > tiny else tiny)
  h = dd
  for m in range(1, 10_000):
    m2 = 2 * m
    for num in (m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
                -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0))):
      dd = 1.0 + num * dd
      dd = 1.0 / (dd if abs(dd) > tiny else tiny)
      c = 1.0 + num / c
      c = c if abs(c) > tiny else tiny
      h *= dd * c
    if abs(dd * c - 1.0) < 1e-16:
      break
  return h


def _betainc(a: float, b: float, x: float) -> float:
  """Regularised incomplete beta I_x(a, b) for a, b > 0, 0 ≤ x ≤ 1."""
  if x <= 0.0:
    return 0.0
  if x >= 1.0:
    return 1.0
  log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
               + a * math.log(x) + b * math.log1p(-x))
  if x < (a + 1.0) / (a + b + 2.0):
    return math.exp(log_front) * _betainc_cf(a, b, x) / a
  return 1.0 - math.exp(log_front) * _betainc_cf(b, a, 1.0 - x) / b


def _bisect_increasing(f, target: float) -> float:
  """u ∈ (0, 1) with f(u) = target for increasing f, down to adjacent floats."""
  lo, hi = 0.0, 1.0
  while True:
    mid = 0.5 * (lo + hi)
    if mid <= lo or mid >= hi:
      return mid
    if f(mid) < target:
      lo = mid
    else:
      hi = mid


def _t_ppf_fallback(q: float, df: float) -> float:
  """Quantile of Student's t with df degrees of freedom, without scipy.

  For t > 0, with x = df/(df + t²) and y = 1 − x = t²/(df + t²),

      P(T > t)     = ½·I_x(df/2, ½)      (tail form),
      P(0 < T < t) = ½·I_y(½, df/2)      (central form),

  I the regularised incomplete beta (continued fraction). For q > ½ the
  form whose right-hand side is not close to 1 is solved for x or y by
  bisection down to adjacent floats, and t = √(df·y/x); q < ½ follows by
  symmetry. Agrees with scipy to 1e-10 relative or better for df 1..1000
  and 0.55 ≤ q ≤ 0.99999 (tests/test_stats.py checks 1e-9).
  """
  if not 0.0 < q < 1.0 or not df > 0:
    raise UserError(f"t quantile needs 0 < q < 1 and df > 0, got q={q!r}, "
                    f"df={df!r}")
  if q == 0.5:
    return 0.0
  if q < 0.5:
    return -_t_ppf_fallback(1.0 - q, df)
  if q < 0.75:
    y = _bisect_increasing(lambda u: _betainc(0.5, 0.5 * df, u), 2 * q - 1)
    x = 1.0 - y
  else:
    # I_x(df/2, ½) increases in x while t falls, so solve in x.
    x = _bisect_increasing(lambda u: _betainc(0.5 * df, 0.5, u),
                           2 * (1 - q))
    y = 1.0 - x
  return math.sqrt(df * y / x)


def t_ppf(q: float, df: float) -> float:
  """Student-t quantile: scipy.stats.t.ppf when scipy imports, else own."""
  try:
    from scipy import stats as scipy_stats
  except ImportError:
    return _t_ppf_fallback(q, df)
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


def _format_p(p: float) -> str:
  if p < 0.001:
    return "p < 0.001"
  return f"p = {p:.2g}"


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
    parts.append(_format_p(p))
  word = verdict(lo, hi, p, alpha)
  parts.append(word if word == "significant" else f"{word} at n = {n:,}")
  return ", ".join(parts)
