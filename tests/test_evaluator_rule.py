"""The Evaluator's rule (as AutoAttack counts): an example is robust only if
it is classified correctly on the clean image AND on the attacked one — a
clean mistake that the attack happens to "repair" is not a robust success."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rift_jax import data, evaluation, models


class _MeanPixel(nn.Module):
  """A linear model on 4 pixels; `_variables` makes it threshold mean(x)."""

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(2, name="linear")(x.reshape(x.shape[0], -1))


def _variables(sign):
  """sign +1: class 1 iff mean(x) > 0.5; sign −1: class 1 iff mean(x) < 0.5."""
  kernel = np.zeros((4, 2), np.float32)
  kernel[:, 1] = sign * 0.25
  bias = np.array([0.0, -sign * 0.5], np.float32)
  return {"params": {"linear": {"kernel": jnp.asarray(kernel),
                                "bias": jnp.asarray(bias)}}}


def _fixed_point_attack(logits_fn, x, y, rng):
  """Ignores the model: every image becomes the constant 0.2 image."""
  del logits_fn, y, rng
  return jnp.full_like(x, 0.2)


# A: x = 0.8, y = 0 — clean wrong (class 1), attacked right (class 0).
# B: x = 0.2, y = 0 — right on both.
# C: x = 0.8, y = 1 — clean right, attacked wrong.
SPLIT = data.Split(np.array([0.8, 0.2, 0.8], np.float32)[:, None, None, None]
                   * np.ones((1, 1, 4, 1), np.float32),
                   np.array([0, 0, 1], np.int32))


def test_a_repaired_clean_mistake_is_not_robust():
  fns = models.ModelFns(_MeanPixel())
  ev = evaluation.Evaluator(fns, _fixed_point_attack, batch_size=4)
  out = ev(_variables(+1), SPLIT, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(out["per_example"]["clean"], [False, True, True])
  # The attacked point is classified correctly for A and B; only B counts.
  np.testing.assert_array_equal(out["per_example"]["adv"], [False, True, False])
  assert (out["clean"], out["adv"]) == pytest.approx((200 / 3, 100 / 3))
  # No attack: 'adv' is 'clean'.
  plain = evaluation.Evaluator(fns, None, batch_size=4)(_variables(+1), SPLIT,
                                                     jax.random.PRNGKey(0))
  np.testing.assert_array_equal(plain["per_example"]["adv"], [False, True, True])


def test_the_rule_holds_for_stacked_models():
  """vmapped over models (as the α curve): model 2 (sign −1) predicts class
  1 on the attacked 0.2 image and class 0 on 0.8: A clean right, attacked
  wrong; B clean wrong (0.2 -> class 1), attacked wrong; C clean wrong,
  attacked right -> not robust."""
  fns = models.ModelFns(_MeanPixel())
  stack = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]),
                                 _variables(+1), _variables(-1))
  ev = evaluation.Evaluator(fns, _fixed_point_attack, batch_size=4, stacked=True)
  ok = ev.per_example(stack, SPLIT, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(ok["clean"], [[False, True, True],
                                              [True, False, False]])
  np.testing.assert_array_equal(ok["adv"], [[False, True, False],
                                            [False, False, False]])
