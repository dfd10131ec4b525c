"""The MRC driver against closed forms (criticality.mrc, both routes).

Model: z = x W + b, two classes, label 0, only the kernel W (3×2) perturbed.
Fixed set: x_i = s_i·u with u a unit vector, so the logit margin of example
i, m_i = z_i1 − z_i0, depends on Δ only through w = (uΔ)·(−1, 1):

    margin_i(Δ) = m_i + s_i·w,   L(Δ) = mean_i softplus(m_i + s_i·w).

The gradient ∂L/∂Δ = G(w)·uᵀ(−1, 1) with G(w) = mean_i s_i·σ(m_i + s_i·w),
so every ascent iterate stays Δ = (w/2)·uᵀ(−1, 1), ‖Δ‖_F = |w|/√2, and one
SGD step of size lr is w ← w + 2·lr·G(w), projected to |w| ≤ √2·ε‖W‖_F.
Hence, with one batch per pass:
  - the true maximum over the ball is at w* = √2·ε‖W‖_F (L is convex and
    increasing in w): MRC* = mean softplus(m_i + s_i w*) − mean softplus(m_i);
  - the loss after pass p is mean softplus(m_i + s_i w_p) with the 1-D
    recurrence above.
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from rift_jax import models
from rift_jax.rift import criticality

W = np.array([[1.0, 0.8], [0.5, 0.6], [0.3, -0.4]], np.float32)  # ‖W‖² = 2.5
B = np.array([0.0, -0.1], np.float32)
U = np.array([0.6, 0.8, 0.0], np.float32)
S = np.array([1.0, 0.3], np.float32)
EPS = 0.1


class _Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(2, name="linear")(x.reshape(x.shape[0], -1))


def _setup():
  variables = {"params": {"linear": {"kernel": jnp.asarray(W),
                                     "bias": jnp.asarray(B)}}}
  x = (S[:, None] * U[None])[:, None, :, None]          # [2, 1, 3, 1]
  y = np.zeros(2, np.int32)
  m = S * float(U @ (W[:, 1] - W[:, 0])) + (B[1] - B[0])  # base margins
  return models.ModelFns(_Linear()), variables, x, y, m


softplus = lambda v: np.logaddexp(0.0, v)
sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))


def test_premise():
  _, _, _, _, m = _setup()
  w_star = np.sqrt(2.0) * EPS * np.linalg.norm(W)
  np.testing.assert_allclose(m, [-0.14, -0.112], atol=1e-6)   # both correct
  # At the maximum the first example flips and the second does not.
  assert m[0] + S[0] * w_star > 0.05 and m[1] + S[1] * w_star < -0.03


@pytest.mark.parametrize("route,projection", [("static", "per_pass"),
                                              ("mask", "per_step")])
def test_mrc_reaches_the_closed_form_maximum(route, projection):
  """lr = 1: the first step already leaves the ball, so every pass sits at
  w*: MRC = MRC*, accuracy drop = 50 pp (one of two examples flips),
  ‖Δ‖/‖W‖ = ε. Batch 4 > 2 examples: the padding rows must not count."""
  fns, variables, x, y, m = _setup()
  w_star = np.sqrt(2.0) * EPS * np.linalg.norm(W)
  base = np.mean(softplus(m))
  best = np.mean(softplus(m + S * w_star))
  r = criticality.mrc(fns, variables, x, y, epsilon=EPS, learning_rate=1.0,
                      num_passes=3, batch_size=4, projection=projection,
                      route=route)["linear"]
  assert r.base_loss == pytest.approx(base, rel=1e-5)
  assert r.base_acc == pytest.approx(100.0)
  np.testing.assert_allclose(r.loss_per_pass, [best] * 3, rtol=1e-5)
  assert r.mrc == pytest.approx(best - base, rel=1e-4)
  assert r.adv_acc_drop == pytest.approx(50.0)
  assert r.relative_norm == pytest.approx(EPS, rel=1e-5)


@pytest.mark.parametrize("route,projection", [("static", "per_pass"),
                                              ("mask", "per_step")])
def test_mrc_follows_the_ascent_recurrence(route, projection):
  """lr = 0.1: the iterates stay inside the ball for 3 passes; each pass's
  loss follows w_p = w_{p−1} + 2·lr·G(w_{p−1}), and MRC, the accuracy drop
  and ‖Δ‖/‖W‖ are read at the pass with the largest loss increase."""
  fns, variables, x, y, m = _setup()
  lr, w, losses, accs, rels = 0.1, 0.0, [], [], []
  w_max = np.sqrt(2.0) * EPS * np.linalg.norm(W)
  for _ in range(3):
    w = min(w + 2 * lr * np.mean(S * sigmoid(m + S * w)), w_max)
    losses.append(np.mean(softplus(m + S * w)))
    accs.append(100.0 * np.mean(m + S * w < 0))
    rels.append(w / np.sqrt(2.0) / np.linalg.norm(W))
  assert rels[-1] < EPS * 0.99          # inside the ball: no projection yet
  base = np.mean(softplus(m))
  r = criticality.mrc(fns, variables, x, y, epsilon=EPS, learning_rate=lr,
                      num_passes=3, batch_size=4, projection=projection,
                      route=route)["linear"]
  np.testing.assert_allclose(r.loss_per_pass, losses, rtol=1e-5)
  p = int(np.argmax(np.asarray(losses) - base))
  assert r.mrc == pytest.approx(max(np.asarray(r.loss_per_pass) - r.base_loss),
                                rel=1e-6)
  assert r.mrc == pytest.approx(losses[p] - base, rel=1e-4) and r.mrc >= 0
  assert r.adv_acc_drop == pytest.approx(100.0 - accs[p])
  assert r.relative_norm == pytest.approx(rels[p], rel=1e-4)
  assert r.relative_norm <= EPS


@pytest.mark.parametrize("route", ["static", "mask"])
@pytest.mark.parametrize("projection", ["per_pass", "per_step"])
def test_mrc_is_zero_when_no_pass_raises_the_loss(route, projection):
  """Two copies of x = u, labels 0 and 1, batch 1 (two batches per pass),
  lr = 100: L(w) = ½[softplus(m + w) + softplus(−m − w)] is convex with its
  minimum at w = −m = 0.14, inside the ball |w| ≤ w* = 0.2236.
    per_pass: batch 1 throws w far up, batch 2 then hardly moves it
      (σ(−m − w) ≈ 0), the pass ends projected at +w*, where the loss is
      BELOW L(0): no pass raises the loss, so MRC = 0 with zero drop and norm
      (Δ = 0 is feasible), although ‖Δ‖/‖W‖ = ε at every pass.
    per_step: each step is projected, batch 2 ends every pass at −w*:
      MRC = L(−w*) − L(0) > 0, accuracy unchanged (both predict class 0),
      ‖Δ‖/‖W‖ = ε."""
  fns, variables, _, _, _ = _setup()
  x = np.repeat(U[None, None, :, None], 2, 0)
  y = np.array([0, 1], np.int32)
  m = float(U @ (W[:, 1] - W[:, 0]) + (B[1] - B[0]))
  w_star = np.sqrt(2.0) * EPS * np.linalg.norm(W)
  loss = lambda w: 0.5 * (softplus(m + w) + softplus(-m - w))
  end = w_star if projection == "per_pass" else -w_star
  r = criticality.mrc(fns, variables, x, y, epsilon=EPS, learning_rate=100.0,
                      num_passes=3, batch_size=1, projection=projection,
                      route=route)["linear"]
  assert r.base_loss == pytest.approx(loss(0.0), rel=1e-5)
  assert r.base_acc == pytest.approx(50.0)
  np.testing.assert_allclose(r.loss_per_pass, [loss(end)] * 3, rtol=1e-5)
  if projection == "per_pass":
    assert loss(end) < loss(0.0) - 1e-3
    assert (r.mrc, r.adv_acc_drop, r.relative_norm) == (0.0, 0.0, 0.0)
  else:
    assert r.mrc == pytest.approx(loss(end) - loss(0.0), rel=1e-4)
    assert r.mrc > 1e-3
    assert r.adv_acc_drop == pytest.approx(0.0)
    assert r.relative_norm == pytest.approx(EPS, rel=1e-5)
