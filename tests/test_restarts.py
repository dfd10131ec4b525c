"""Restarts that matter: a hand-made model where the random start decides
whether PGD / APGD reach a fooling point, and seeds chosen so that restart 0
fails and restart 1 succeeds (or the other way round) for known examples.

The model (`_bowl`): two classes, z0 = 0 and

    z1 = A·(x₀ − C)² − b,   b = 1.5 if x₁ ≤ 0.5 else 3.0

on a 2-pixel image (x₀, x₁). Label 0 everywhere. ∂z1/∂x₁ = 0 (b is piecewise
constant), so only x₀ moves; z1 is convex in x₀ with its minimum at C, so
(sign-)gradient ascent on CE = softplus(z1) from a start x₀ < C runs to the
left edge of the ball and from x₀ > C to the right edge. With x₀ = 0.5,
ε = 0.2 (ball [0.3, 0.7]), C = 0.45, A = 40:
  b = 1.5 (x₁ = 0.2): z1(0.3) = −0.6 (robust), z1(0.7) = +1.0 (fooled);
  b = 3.0 (x₁ = 0.9): z1(0.3) = −2.1, z1(0.7) = −0.5: never fooled, the
                       right edge has the higher loss.
Clean: z1(0.5) < 0, every example is classified correctly.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rift_jax import attacks, data, models
from rift_jax.attacks import apgd
from rift_jax.evaluation import autoattack
from rift_jax.training import objectives

A, C, EPS = 40.0, 0.45, 0.2


def _bowl_logits(x, a=A):
  flat = x.reshape(x.shape[0], -1)
  b = jnp.where(flat[:, 1] > 0.5, 3.0, 1.5)
  z1 = a * (flat[:, 0] - C) ** 2 - b
  return jnp.stack([jnp.zeros_like(z1), z1], -1)


class _Bowl(nn.Module):
  """`_bowl_logits` as a Flax model (for `run_suite`), A as its one param."""

  @nn.compact
  def __call__(self, x, train=False):
    a = self.param("a", nn.initializers.constant(A), ())
    return _bowl_logits(x, a)


def _images(x1_values):
  """Batch `[n, 1, 2, 1]` with x₀ = 0.5 and the given x₁."""
  x1 = np.asarray(x1_values, np.float32)
  return jnp.asarray(np.stack([np.full_like(x1, 0.5), x1], -1)[:, None, :, None])


def _starts_right(keys, x):
  """For each key `[k]`: does PGD/APGD's uniform start put x₀ right of C?
  -> bool `[k, batch]`, and the distance |x₀ − C| (to stay off the ridge)."""
  x0 = jax.vmap(lambda k: attacks.random_init(k, x, EPS, "linf", "uniform",
                                              0.0))(keys)[:, :, 0, 0, 0]
  return np.asarray(x0 > C), np.asarray(jnp.abs(x0 - C))


def _find_seed(x, want, fold=lambda key, r: jax.random.fold_in(key, r),
               batches=None):
  """The first seed s whose restart r start sides equal want[r] (bool per
  example; None = either). `batches[r]`: the rows of x in restart r's batch."""
  seeds = jnp.arange(5000)
  ok = np.ones(seeds.size, bool)
  for r, sides in enumerate(want):
    xr = x if batches is None else x[np.asarray(batches[r])]
    keys = jax.vmap(lambda s: fold(jax.random.PRNGKey(s), r))(seeds)
    right, dist = _starts_right(keys, xr)
    for j, s in enumerate(sides):
      if s is not None:
        ok &= (right[:, j] == s) & (dist[:, j] > 0.02)
  assert ok.any(), "no seed gives the wanted starts"
  return int(np.argmax(ok))


def test_hand_model_has_one_fooling_side():
  """The premise: only the right edge fools (b = 1.5); clean is correct."""
  z = lambda x0, x1: float(_bowl_logits(jnp.array([[x0, x1]]))[0, 1])
  assert z(0.3, 0.2) == pytest.approx(-0.6, abs=1e-5)
  assert z(0.7, 0.2) == pytest.approx(1.0, abs=1e-5)
  assert z(0.7, 0.9) == pytest.approx(-0.5, abs=1e-5)
  assert z(0.5, 0.2) < 0 and z(0.5, 0.9) < 0


def test_pgd_restarts_find_what_restart_zero_misses():
  """Example A: restart 0 starts right (fools), restart 1 left. B: restart 0
  left, restart 1 right (fools). C (never fooled): restart 0 left, restart 1
  right (higher loss). A single run fools only A; two restarts must fool A and
  B and keep, per example, the fooling restart / the higher-loss one — which
  restart was kept is read off x₁, which PGD never moves from its start."""
  x = _images([0.2, 0.2, 0.9])
  y = jnp.zeros(3, jnp.int32)
  seed = _find_seed(x, [(True, False, False), (False, True, True)])
  key = jax.random.PRNGKey(seed)
  starts = [attacks.random_init(jax.random.fold_in(key, r), x, EPS, "linf",
                                "uniform", 0.0) for r in range(2)]
  cfg = attacks.PGDConfig(epsilon=EPS, step_size=0.1, num_steps=5, unroll=False)
  fooled = lambda xa: np.asarray(jnp.argmax(_bowl_logits(xa), -1) != y)

  pgd = lambda cfg: jax.jit(lambda x, y, k: attacks.pgd(_bowl_logits, x, y, k,
                                                        cfg))(x, y, key)
  one = pgd(cfg)
  np.testing.assert_allclose(np.asarray(one)[:, 0, 0, 0], [0.7, 0.3, 0.3], atol=1e-6)
  np.testing.assert_array_equal(fooled(one), [True, False, False])

  two = pgd(dataclasses.replace(cfg, restarts=2))
  np.testing.assert_array_equal(fooled(two), [True, True, False])
  np.testing.assert_allclose(np.asarray(two)[:, 0, 0, 0], [0.7, 0.7, 0.7], atol=1e-6)
  kept = [0, 1, 1]   # A: the fooling restart 0; B: the fooling 1; C: higher loss
  for i, r in enumerate(kept):
    np.testing.assert_array_equal(np.asarray(two)[i, 0, 1, 0],
                                  np.asarray(starts[r])[i, 0, 1, 0])

  # The train-mode attack that updates BN statistics has the same restarts.
  ctx = objectives.Context(fns=models.ModelFns(_Bowl()), attack=dataclasses.replace(
      cfg, restarts=2), attack_bn="train", bn_passes="authors")
  v = {"params": {"a": jnp.asarray(A)}}
  x_adv, _ = jax.jit(lambda v, x, y, k: objectives.craft_ce(ctx, v, x, y, k))(
      v, x, y, key)
  np.testing.assert_array_equal(np.asarray(x_adv), np.asarray(two))


def test_apgd_restarts_in_graph():
  """`apgd.apgd` with restarts=2: A fooled by restart 0 only, B by
  restart 1 only; one restart leaves B robust, two break both."""
  x = _images([0.2, 0.2])
  y = jnp.zeros(2, jnp.int32)
  seed = _find_seed(x, [(True, False), (False, True)])
  key = jax.random.PRNGKey(seed)
  fooled = {}
  for r in (1, 2):
    cfg = apgd.APGDConfig(epsilon=EPS, num_steps=5, restarts=r,
                                unroll=False)
    xa = jax.jit(lambda x, y, k: apgd.apgd(_bowl_logits, x, y, k, cfg))(
        x, y, key)
    fooled[r] = np.asarray(jnp.argmax(_bowl_logits(xa), -1) != y)
  np.testing.assert_array_equal(fooled[1], [True, False])
  np.testing.assert_array_equal(fooled[2], [True, True])


def test_run_suite_apgd_restarts_break_a_survivor():
  """`run_suite` runs restart 1 only on restart 0's survivors, gathered into
  a new batch, with key fold_in(fold_in(fold_in(rng, attack), run), batch).
  Seeds: restart 0 starts A right (fooled) and B left; restart 1 (batch
  [B, B-padding]) starts B right. restarts=1: B robust; restarts=2: broken."""
  images = np.zeros((2, 1, 2, 1), np.uint8)
  images[:, 0, 0, 0] = 128            # x₀ = 0.502
  images[:, 0, 1, 0] = 51             # x₁ = 0.2 (b = 1.5)
  split = data.Split(images, np.zeros(2, np.int32))
  x = jnp.asarray(data.to_float(images))
  fold = lambda key, r: jax.random.fold_in(
      jax.random.fold_in(jax.random.fold_in(key, 0), r), 0)
  seed = _find_seed(x, [(True, False), (True, None)], fold=fold,
                    batches=[[0, 1], [1, 1]])
  model = _Bowl()
  fns = models.ModelFns(model)
  v = {"params": {"a": jnp.asarray(A)}}
  out = {}
  for r in (1, 2):
    cfg = apgd.APGDConfig(epsilon=EPS, num_steps=5, restarts=r,
                                unroll=False)
    out[r] = autoattack.run_suite(fns, v, split,
                                  [autoattack.Attack("apgd_ce", cfg)], 2,
                                  jax.random.PRNGKey(seed), progress=False)
  for r in (1, 2):
    np.testing.assert_array_equal(out[r]["per_example"]["clean"], [True, True])
  np.testing.assert_array_equal(out[1]["per_example"]["apgd_ce"], [False, True])
  np.testing.assert_array_equal(out[2]["per_example"]["apgd_ce"], [False, False])
  assert (out[1]["robust"]["apgd_ce"], out[2]["robust"]["apgd_ce"]) == (50.0, 0.0)
