"""rift_jax.evaluation.stats against hand-worked values, exact enumerations and coverage.

Expected numbers are written from closed forms (binomial sums, the t
quantiles below, computed to 40 digits with mpmath), never through the code
under test.
"""
from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest

from rift_jax.evaluation import stats
from rift_jax.errors import UserError
from tests.conftest import REPO

# t_{0.975, df} to double precision (mpmath, 40 digits). The df = 2 value is
# also (2q − 1)/√(2q(1 − q)) = 0.95/√0.04875.
T975 = {1: 12.706204736174705, 2: 4.302652729749464, 4: 2.7764451051977944,
        29: 2.045229642132704}


def _pair(n01: int, n10: int, n11: int = 0, n00: int = 0):
  """Correctness vectors with the given counts of (a, b) outcomes."""
  a = [False] * n01 + [True] * n10 + [True] * n11 + [False] * n00
  b = [True] * n01 + [False] * n10 + [True] * n11 + [False] * n00
  return np.array(a), np.array(b)


# --- McNemar ------------------------------------------------------------------

def test_mcnemar_hand_values():
  # 8 vs 2 discordant: 2·(C(10,0) + C(10,1) + C(10,2))/2^10 = 2·56/1024.
  a, b = _pair(8, 2, n11=50, n00=40)
  assert stats.mcnemar(a, b) == pytest.approx(0.109375, rel=1e-12)
  assert stats.mcnemar(b, a) == stats.mcnemar(a, b)          # symmetric
  # 5 vs 0: 2·C(5,0)/2^5 = 2/32.
  assert stats.mcnemar(*_pair(5, 0, n11=7)) == pytest.approx(0.0625, rel=1e-12)
  # 1 vs 3: 2·(1 + 4)/16 = 0.625.
  assert stats.mcnemar(*_pair(1, 3)) == pytest.approx(0.625, rel=1e-12)
  # 3 vs 3: 2·P(X ≤ 3 | n = 6) = 2·42/64 > 1 → 1.
  assert stats.mcnemar(*_pair(3, 3)) == 1.0
  # No discordant pairs (also: identical vectors) → 1.
  assert stats.mcnemar(*_pair(0, 0, n11=5, n00=5)) == 1.0
  same = np.array([True, False, True])
  assert stats.mcnemar(same, same) == 1.0


def test_mcnemar_refuses_non_binary_and_2d():
  with pytest.raises(UserError):
    stats.mcnemar(np.zeros((3, 2), bool), np.ones((3, 2), bool))
  with pytest.raises(UserError):
    stats.mcnemar([0.5, 1.0], [1.0, 1.0])
  with pytest.raises(UserError):
    stats.mcnemar([True, False], [True])


# --- bootstrap ----------------------------------------------------------------

def test_bootstrap_degenerate_cases():
  rng = np.random.default_rng(0)
  a = rng.random(300) < 0.7
  assert stats.paired_bootstrap(a, a, num_resamples=500) == (0.0, 0.0, 0.0)
  # Every example has d = 1: every resample's mean is 1.
  none, every = np.zeros(200, bool), np.ones(200, bool)
  assert stats.paired_bootstrap(none, every, num_resamples=500) == (
      100.0, 100.0, 100.0)
  assert stats.paired_bootstrap(every, none, num_resamples=500) == (
      -100.0, -100.0, -100.0)


def test_bootstrap_known_delta_and_determinism():
  a = np.array([1, 1, 0, 0, 1, 0, 1, 0, 1, 1], bool)   # 6/10
  b = np.array([1, 0, 1, 1, 1, 1, 1, 0, 1, 1], bool)   # 8/10
  delta, lo, hi = stats.paired_bootstrap(a, b, num_resamples=2000, seed=3)
  assert delta == pytest.approx(20.0)
  assert lo <= delta <= hi
  assert stats.paired_bootstrap(a, b, num_resamples=2000, seed=3) == (
      delta, lo, hi)
  d = b.astype(float) - a

  def draw(seed):
    return stats._bootstrap_means(d, 50, np.random.default_rng(seed))

  assert np.array_equal(draw(3), draw(3))
  assert not np.array_equal(draw(3), draw(4))
  # 2-D: delta is the difference of the overall means.
  a2 = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], bool).T
  b2 = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 0]], bool).T
  assert stats.paired_bootstrap(a2, b2, num_resamples=100)[0] == (
      pytest.approx(100 * (8 - 7) / 12))


@pytest.mark.parametrize("counts", [True, False])
def test_bootstrap_resample_distribution(monkeypatch, counts):
  """Both sampling routes: resampled means have mean(d) and sd σ(d)/√n."""
  monkeypatch.setattr(stats, "_use_counts", lambda *_: counts)
  rng = np.random.default_rng(1)
  d = rng.choice([-1.0, 0.0, 1.0, 0.5], p=[0.1, 0.6, 0.2, 0.1], size=400)
  means = stats._bootstrap_means(d, 20000, np.random.default_rng(0))
  assert means.shape == (20000,)
  se = d.std() / math.sqrt(d.size)
  assert means.mean() == pytest.approx(d.mean(), abs=4 * se / math.sqrt(20000))
  assert means.std() == pytest.approx(se, rel=0.03)


def _correlated_pairs(rng, n):
  """(a, b) with P(1,1) = .6, P(0,0) = .2, P(0,1) = .12, P(1,0) = .08."""
  cell = rng.choice(4, p=[0.6, 0.2, 0.12, 0.08], size=n)
  return np.isin(cell, (0, 3)), np.isin(cell, (0, 2))


@pytest.mark.parametrize("counts", [True, False])
def test_bootstrap_coverage(monkeypatch, counts):
  """95 % intervals cover the true +4 pp in roughly 95 % of simulated draws."""
  monkeypatch.setattr(stats, "_use_counts", lambda *_: counts)
  rng = np.random.default_rng(2024)
  draws = 400 if counts else 150
  covered = 0
  for seed in range(draws):
    a, b = _correlated_pairs(rng, 500)
    _, lo, hi = stats.paired_bootstrap(a, b, num_resamples=1000, seed=seed)
    covered += lo <= 4.0 <= hi
  assert 0.90 <= covered / draws <= 0.99, covered / draws


def test_bootstrap_coverage_2d():
  """[k, n]: per-image random effects; true difference of means +3 pp."""
  rng = np.random.default_rng(7)
  covered, draws, k = 0, 200, 6
  for seed in range(draws):
    base = rng.uniform(0.2, 0.9, size=(1, 300))         # image difficulty
    a = rng.random((k, 300)) < base
    b = rng.random((k, 300)) < base + 0.03
    _, lo, hi = stats.paired_bootstrap(a, b, num_resamples=1000, seed=seed)
    covered += lo <= 3.0 <= hi
  assert 0.90 <= covered / draws <= 0.99, covered / draws


def test_bootstrap_2d_resamples_images_not_outcomes():
  rng = np.random.default_rng(5)
  a1 = rng.random(400) < 0.6
  b1 = rng.random(400) < 0.65
  k = 5
  a2, b2 = np.repeat(a1[None], k, 0), np.repeat(b1[None], k, 0)
  # Perfectly correlated outcomes within an image: same d, same interval.
  assert stats.paired_bootstrap(a2, b2, num_resamples=1000) == (
      stats.paired_bootstrap(a1, b1, num_resamples=1000))
  # Treating the n·k outcomes as independent would be ~√k times narrower.
  _, lo2, hi2 = stats.paired_bootstrap(a2, b2, num_resamples=1000)
  _, lof, hif = stats.paired_bootstrap(a2.ravel(), b2.ravel(),
                                       num_resamples=1000)
  assert (hi2 - lo2) > 1.8 * (hif - lof)


def test_pooled_seeds_resample_images_not_rows():
  """A study's seeds test on the same images: pooled, the interval must
  resample images with every seed's result kept together. One seed's
  vectors stacked twice hold no more information than the seed alone: the
  same interval; rows treated as independent would shrink it by ~√2."""
  rng = np.random.default_rng(11)
  a1 = rng.random(2000) < 0.80
  b1 = np.where(rng.random(2000) < 0.1, ~a1, a1)
  one = stats.paired_bootstrap(a1, b1, num_resamples=4000, seed=1)
  stacked = stats.paired_bootstrap(np.stack([a1, a1]), np.stack([b1, b1]),
                                   num_resamples=4000, seed=1)
  assert stacked == pytest.approx(one, abs=1e-9)
  _, lo_rows, hi_rows = stats.paired_bootstrap(
      np.concatenate([a1, a1]), np.concatenate([b1, b1]), num_resamples=4000,
      seed=1)
  ratio = (one[2] - one[1]) / (hi_rows - lo_rows)
  assert ratio == pytest.approx(math.sqrt(2), rel=0.08)
  # The pooled permutation test likewise: stacking adds no evidence.
  assert stats.paired_permutation(np.stack([a1, a1]), np.stack([b1, b1]),
                                  num_resamples=4000, seed=2) == (
      stats.paired_permutation(a1, b1, num_resamples=4000, seed=2))
  # [seeds, cells, n] (OOD pooled over seeds): the per-image mean over both.
  a3 = rng.random((2, 3, 50)) < 0.5
  b3 = rng.random((2, 3, 50)) < 0.6
  d = stats.paired_differences(a3, b3)
  assert d.shape == (50,)
  assert np.allclose(d, (b3.astype(float) - a3).mean(axis=(0, 1)))


def test_bootstrap_input_checks():
  with pytest.raises(UserError):
    stats.paired_bootstrap([True, False], [True])
  with pytest.raises(UserError):
    stats.paired_bootstrap([60.0, 70.0], [65.0, 70.0])   # percentages
  with pytest.raises(UserError):
    stats.paired_bootstrap([], [])
  with pytest.raises(UserError):
    stats.paired_bootstrap([True], [False], level=95)
  with pytest.raises(UserError):
    stats.paired_bootstrap([True], [False], num_resamples=0)


# --- permutation --------------------------------------------------------------

def test_permutation_identical_and_strong():
  rng = np.random.default_rng(0)
  a = rng.random(200) < 0.5
  assert stats.paired_permutation(a, a, num_resamples=999) == 1.0
  a, b = _pair(30, 0, n11=100, n00=70)       # B right on 30 more, never worse
  # Only the 2 of 2^30 sign vectors with all signs equal reach |sum| = 30.
  assert stats.paired_permutation(a, b, num_resamples=999) <= 2 / 1000
  assert stats.paired_permutation(b, a, num_resamples=999) <= 2 / 1000
  # Minimum attainable p is 1/(1 + R).
  assert stats.paired_permutation(a, b, num_resamples=999) >= 1 / 1000


@pytest.mark.parametrize("counts", [True, False])
def test_permutation_matches_exact_mcnemar(monkeypatch, counts):
  """For binary d the sign-flip test's exact p is McNemar's p."""
  monkeypatch.setattr(stats, "_use_counts", lambda *_: counts)
  a, b = _pair(8, 2, n11=30, n00=20)
  p = stats.paired_permutation(a, b, num_resamples=20000, seed=1)
  # Monte Carlo sd √(.11·.89/20000) ≈ .0022.
  assert p == pytest.approx(0.109375, abs=0.009)


@pytest.mark.parametrize("counts", [True, False])
def test_permutation_2d_matches_enumeration(monkeypatch, counts):
  """[k, n] column means: compare with all 2^10 sign vectors over 10 images."""
  monkeypatch.setattr(stats, "_use_counts", lambda *_: counts)
  rng = np.random.default_rng(3)
  a = rng.random((4, 10)) < 0.4
  b = rng.random((4, 10)) < 0.7
  d = (b.astype(int) - a.astype(int)).sum(0)               # integer, exact
  flips = np.array(list(itertools.product((-1, 1), repeat=10)))
  exact = np.mean(np.abs(flips @ d) >= abs(d.sum()))
  assert 0.005 < exact < 0.5
  p = stats.paired_permutation(a, b, num_resamples=20000, seed=2)
  sd = math.sqrt(exact * (1 - exact) / 20000)
  assert p == pytest.approx(exact, abs=4 * sd)


# --- seed summary -------------------------------------------------------------

def _check_123():
  mean, std, lo, hi = stats.seed_summary([1.0, 2.0, 3.0])
  assert (mean, std) == (2.0, 1.0)
  half = T975[2] / math.sqrt(3)
  assert lo == pytest.approx(2 - half, rel=1e-12)
  assert hi == pytest.approx(2 + half, rel=1e-12)


def test_seed_summary_hand_values():
  _check_123()
  for df, t in T975.items():
    assert stats.t_ppf(0.975, df) == pytest.approx(t, rel=1e-12)


def test_seed_summary_single_and_bad():
  mean, std, lo, hi = stats.seed_summary([71.5])
  assert mean == 71.5 and math.isnan(std) and math.isnan(lo) and math.isnan(hi)
  # Five seeds, t_{0.975,4}: half-width = t·std/√5.
  values = [80.0, 81.0, 82.0, 83.0, 84.0]
  mean, std, lo, hi = stats.seed_summary(values)
  assert mean == 82.0 and std == pytest.approx(math.sqrt(2.5))
  assert hi - mean == pytest.approx(T975[4] * math.sqrt(2.5 / 5), rel=1e-12)
  with pytest.raises(UserError):
    stats.seed_summary([])
  with pytest.raises(UserError):
    stats.seed_summary([1.0, float("nan")])


# --- verdict and describe -----------------------------------------------------

def test_verdict():
  assert stats.verdict(0.3, 2.1) == "significant"
  assert stats.verdict(-2.1, -0.3) == "significant"
  assert stats.verdict(-0.9, 0.7) == "within noise"
  assert stats.verdict(0.0, 1.0) == "within noise"      # touches 0
  assert stats.verdict(0.0, 0.0) == "within noise"
  assert stats.verdict(0.3, 2.1, p=0.012) == "significant"
  assert stats.verdict(0.3, 2.1, p=0.2) == "within noise"
  assert stats.verdict(0.3, 2.1, p=0.05) == "within noise"
  assert stats.verdict(0.3, 2.1, p=0.02, alpha=0.01) == "within noise"
  assert stats.verdict(math.nan, math.nan) == "within noise"


def test_describe():
  assert stats.describe(1.2, 0.3, 2.1, 10000, p=0.012) == (
      "+1.20 pp [+0.30, +2.10], p = 0.012, significant")
  assert stats.describe(-0.1, -0.9, 0.7, 1000, p=0.85) == (
      "\u22120.10 pp [\u22120.90, +0.70], p = 0.85, within noise at n = 1,000")
  assert stats.describe(-2.5, -3.75, -1.25, 500) == (
      "\u22122.50 pp [\u22123.75, \u22121.25], significant")
  assert stats.describe(4.0, 2.0, 6.0, 10000, p=1e-6) == (
      "+4.00 pp [+2.00, +6.00], p < 0.001, significant")
  assert stats.describe(-0.001, -0.9, 0.7, 12345, p=1.0) == (
      "+0.00 pp [\u22120.90, +0.70], p = 1, within noise at n = 12,345")


def test_format_p_at_the_monte_carlo_floor():
  # No resample reached the observed statistic: p = 1/(R + 1) is a bound.
  assert stats.format_p(1 / 10001, stats.p_floor(10000)) == "p < 1e-4"
  assert stats.format_p(1 / 1000, stats.p_floor(999)) == "p ≤ 1/1,000"
  assert stats.format_p(3 / 10001, stats.p_floor(10000)) == "p < 0.001"
  assert stats.format_p(0.0123, stats.p_floor(10000)) == "p = 0.012"
  assert stats.format_p(1e-6) == "p < 0.001"     # an exact p: no floor


def test_holm_hand_values():
  # Sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06,
  # 0.04 → running max 0.02, 0.03, 0.06, 0.06; back in input order.
  assert np.allclose(stats.holm([0.01, 0.04, 0.03, 0.005]),
                     [0.03, 0.06, 0.06, 0.02])
  assert np.allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])   # capped at 1
  assert np.allclose(stats.holm([0.02]), [0.02])           # a family of one
  with pytest.raises(UserError):
    stats.holm([0.1, 1.5])


def test_noninferior():
  assert stats.noninferior(-0.3, 0.5)           # a drop of 0.5 pp is ruled out
  assert not stats.noninferior(-0.7, 0.5)       # the interval reaches −0.7
  assert not stats.noninferior(-0.5, 0.5)       # touching the margin: not shown
  assert stats.noninferior(0.2, 0.0)
  with pytest.raises(UserError):
    stats.noninferior(0.0, -1.0)


# --- import hygiene -----------------------------------------------------------

def test_import_pulls_in_no_jax_tensorflow_or_scipy():
  code = ("import sys, rift_jax.evaluation.stats; "
          "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
          "('jax', 'flax', 'tensorflow', 'scipy')); "
          "assert not bad, bad")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
