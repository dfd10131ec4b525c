"""PGD: hand-worked values on a linear model, the ε-ball (restarts:
tests/test_restarts.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rift_jax import attacks


def _linear_logits(a):
  """Two classes: z1 = a·x, z0 = 0. For label 0, CE = log(1 + e^{a·x}) and
  ∂CE/∂x = σ(a·x)·a, so every L-inf step moves x by step·sign(a)."""
  a = jnp.asarray(a, jnp.float32)

  def logits_fn(x):
    z1 = x.reshape(x.shape[0], -1) @ a
    return jnp.stack([jnp.zeros_like(z1), z1], -1)
  return logits_fn


@pytest.mark.parametrize("num_steps,expected", [
    (2, [0.58, 0.42, 0.58, 0.5]),   # 2 × 0.04 inside the ball
    (3, [0.60, 0.40, 0.60, 0.5]),   # 3 × 0.04 = 0.12 clipped to ε = 0.1
])
def test_linf_pgd_linear_model_hand_worked(num_steps, expected):
  x = jnp.full((1, 1, 4, 1), 0.5)
  cfg = attacks.PGDConfig(epsilon=0.1, step_size=0.04, num_steps=num_steps,
                          init="zero", unroll=False)
  x_adv = attacks.pgd(_linear_logits([1.0, -2.0, 0.5, 0.0]), x,
                      jnp.array([0]), jax.random.PRNGKey(0), cfg)
  np.testing.assert_allclose(np.ravel(x_adv), expected, atol=1e-6)


def test_linf_pgd_respects_the_box():
  x = jnp.full((1, 1, 2, 1), 0.97)
  cfg = attacks.PGDConfig(epsilon=0.1, step_size=0.05, num_steps=3, init="zero")
  x_adv = attacks.pgd(_linear_logits([1.0, -1.0]), x, jnp.array([0]),
                      jax.random.PRNGKey(0), cfg)
  np.testing.assert_allclose(np.ravel(x_adv), [1.0, 0.87], atol=1e-6)


def test_l2_pgd_linear_model_hand_worked():
  # Direction a/‖a‖ = (0.6, 0.8); 3 steps of 0.05 = 0.15, projected to ε = 0.1.
  x = jnp.full((1, 1, 2, 1), 0.5)
  logits_fn = _linear_logits([3.0, 4.0])
  one = attacks.pgd(logits_fn, x, jnp.array([0]), jax.random.PRNGKey(0),
                    attacks.PGDConfig(0.1, 0.05, 1, norm="l2", init="zero"))
  np.testing.assert_allclose(np.ravel(one), [0.53, 0.54], atol=1e-6)
  three = attacks.pgd(logits_fn, x, jnp.array([0]), jax.random.PRNGKey(0),
                      attacks.PGDConfig(0.1, 0.05, 3, norm="l2", init="zero"))
  np.testing.assert_allclose(np.ravel(three), [0.56, 0.58], atol=1e-6)


def test_margin_and_kl_losses_hand_worked():
  logits = jnp.array([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]])
  np.testing.assert_allclose(attacks.margin(logits, jnp.array([0, 0])), [-1.0, 3.0])
  p = jnp.log(jnp.array([[0.5, 0.5]]))
  q = jnp.log(jnp.array([[0.25, 0.75]]))
  # KL(p‖q) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75)
  np.testing.assert_allclose(attacks.kl_divergence(q, p),
                             [0.5 * np.log(2) + 0.5 * np.log(2 / 3)], rtol=1e-6)
  np.testing.assert_allclose(attacks.cross_entropy(p, jnp.array([1])), [np.log(2)],
                             rtol=1e-6)


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_pgd_stays_in_ball_and_raises_loss(tiny_cnn, synthetic, norm, eps):
  model, variables = tiny_cnn
  logits_fn = lambda x: model.apply(variables, x, train=False)
  x = jnp.asarray(synthetic.test.images[:64] / 255.0, jnp.float32)
  y = jnp.asarray(synthetic.test.labels[:64])
  cfg = attacks.PGDConfig(eps, eps / 4, 5, norm=norm)
  x_adv = jax.jit(lambda x, y: attacks.pgd(logits_fn, x, y, jax.random.PRNGKey(1),
                                           cfg))(x, y)
  d = np.asarray(x_adv - x).reshape(64, -1)
  if norm == "linf":
    assert np.abs(d).max() <= eps + 1e-6
  else:
    assert np.linalg.norm(d, axis=1).max() <= eps + 1e-5
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  ce = lambda xx: float(jnp.mean(attacks.cross_entropy(logits_fn(xx), y)))
  assert ce(x_adv) > ce(x) + 1e-3


# Restarts: tests/test_restarts.py (a hand-made model where restart 0 misses
# what restart 1 finds).


def test_bad_attack_config_is_one_clear_error():
  from rift_jax.errors import UserError
  with pytest.raises(UserError, match=r"attack.epsilon=0.0"):
    attacks.PGDConfig(epsilon=0.0).validate()
  with pytest.raises(UserError, match=r"attack.num_steps=0"):
    attacks.PGDConfig(num_steps=0).validate()
  with pytest.raises(UserError, match=r"attack.norm='l3'.*'linf'"):
    attacks.PGDConfig(norm="l3").validate()


def test_softmax_squared_error_hand_worked():
  # p = (0.5, 0.5), q = (0.25, 0.75): ‖p − q‖² = 2 × 0.25² = 0.125
  p = jnp.log(jnp.array([[0.5, 0.5]]))
  q = jnp.log(jnp.array([[0.25, 0.75]]))
  np.testing.assert_allclose(attacks.softmax_squared_error(q, p), [0.125], rtol=1e-6)
