"""SCORE's inner maximisation ascends the softmax squared error
‖p(x) − p(x')‖² (attacks loss 'se'), not CE and not TRADES' KL.

With two classes (tests/test_objectives.py) 'se' and 'kl' move every pixel
the same way, so a model with three classes is needed: for logits
z' = x'W + b, p' = softmax(z'), q = softmax(z) (clean, fixed), the
gradients with respect to z' are
    se:  2·J(p')·(p' − q),  J(p) = diag(p) − p pᵀ
    kl:  p' − q             (KL(q ‖ p'))
    ce:  p' − e_y
and with respect to x' they are W times these. One L∞ step from the start x0
(`attacks.random_init` with fold_in(key, 0), as PGD's restart 0) is
x1 = clip(x0 + step·sign(W g), x ± ε, [0, 1]); the three losses give three
different x1 here, worked out in numpy below.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rift_jax import attacks, models
from rift_jax.training import methods, objectives

W = np.array([[-2.6, 1.3, 1.2], [2.6, -1.5, 3.4], [-0.6, 3.1, -0.9],
              [-1.5, 0.5, 2.1]], np.float32)           # 4 pixels -> 3 classes
X = np.array([[0.5, 0.4, 0.6, 0.55]], np.float32)
Y = np.array([0], np.int32)


class _Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3, use_bias=False, name="linear")(x.reshape(x.shape[0], -1))


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _one_step(x0, loss, eps, step):
  """x1 for one sign step on `loss` from x0 (numpy, float64)."""
  x, x0 = X.astype(np.float64), np.asarray(x0, np.float64).reshape(X.shape)
  q, p = _softmax(x @ W), _softmax(x0 @ W)
  if loss == "se":
    g = 2 * (np.diag(p[0]) - np.outer(p[0], p[0])) @ (p - q)[0]
  elif loss == "kl":
    g = (p - q)[0]
  else:
    g = p[0] - np.eye(3)[Y[0]]
  grad = W.astype(np.float64) @ g
  # No component near 0, where float32 rounding could flip a sign.
  assert np.min(np.abs(grad)) > 0.01 * np.max(np.abs(grad))
  return np.clip(np.clip(x0 + step * np.sign(grad), x - eps, x + eps), 0, 1)


@pytest.mark.parametrize("recipe,init", [("no_extra_data", "normal"),
                                         ("extra_data", "uniform")])
def test_score_craft_ascends_the_softmax_squared_error(recipe, init):
  eps, step = 0.1, 0.03
  ctx = objectives.Context(
      models.ModelFns(_Linear()),
      attacks.PGDConfig(epsilon=eps, step_size=step, num_steps=1, unroll=False),
      attack_bn="eval", hparams=(("recipe", recipe),))
  v = {"params": {"linear": {"kernel": jnp.asarray(W)}}}
  key = jax.random.PRNGKey(3)
  x = jnp.asarray(X).reshape(1, 1, 4, 1)
  x0 = attacks.project(attacks.random_init(jax.random.fold_in(key, 0), x, eps,
                                           "linf", init, 0.001), x, eps, "linf")
  want = {loss: _one_step(x0, loss, eps, step) for loss in ("se", "kl", "ce")}
  # The premise: the three losses disagree on this example.
  assert not np.allclose(want["se"], want["kl"], atol=1e-4)
  assert not np.allclose(want["se"], want["ce"], atol=1e-4)
  craft = methods.get("score").craft
  got, _ = jax.jit(lambda v, x, y, k: craft(ctx, v, x, y, k))(
      v, x, jnp.asarray(Y), key)
  np.testing.assert_allclose(np.asarray(got).reshape(X.shape), want["se"],
                             atol=1e-5)
