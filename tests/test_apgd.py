"""APGD / AutoAttack-style evaluation: hand-worked values and exact optima."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rift_jax import attacks
from rift_jax.attacks import apgd
from rift_jax.evaluation import autoattack
from rift_jax.errors import UserError
from tests.conftest import torch_robust_accuracy


def test_dlr_hand_values_and_invariance():
  z = jnp.array([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
  y = jnp.array([0, 1])
  # y=0: −(3 − 2)/(3 − 1) = −0.5;  y=1: −(1 − 3)/(3 − 1) = 1.
  np.testing.assert_allclose(attacks.dlr(z, y), [-0.5, 1.0], rtol=1e-6)
  # Targeted, y=0 t=2: −(3 − 2)/(3 − (1 + 0)/2) = −0.4; y=1 t=0: (3 − 1)/2.5.
  np.testing.assert_allclose(attacks.dlr_targeted(z, y, jnp.array([2, 0])),
                             [-0.4, 0.8], rtol=1e-6)
  # Invariant to z -> a·z + b (a > 0).
  np.testing.assert_allclose(attacks.dlr(7 * z - 3, y), attacks.dlr(z, y),
                             rtol=1e-5)
  np.testing.assert_allclose(
      attacks.dlr_targeted(0.5 * z + 9, y, jnp.array([2, 0])), [-0.4, 0.8],
      rtol=1e-5)


def test_checkpoint_schedule_matches_paper():
  # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06):
  # 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 -> ⌈p_j · 100⌉.
  assert apgd.checkpoint_schedule(100) == (22, 41, 57, 70, 80, 87, 93, 99)
  # Few steps: integer intervals as the authors' code (2, then every step).
  assert apgd.checkpoint_schedule(10) == (2, 3, 4, 5, 6, 7, 8, 9, 10)
  assert apgd.checkpoint_schedule(50) == (11, 21, 30, 38, 45)
  assert apgd.checkpoint_schedule(1) == (1,)


def test_halving_rule():
  f = lambda n, red, last, best: bool(apgd.halve_step(
      jnp.array([n]), 22, 0.75, jnp.array([red]), jnp.array([last]),
      jnp.array([best]))[0])
  # Condition 1: loss rose in ≤ 0.75·22 = 16.5 of 22 steps -> halve.
  assert f(16, True, 0.0, 1.0)
  assert not f(17, True, 0.0, 1.0)
  # Condition 2: not halved last time and f_max did not improve -> halve.
  assert f(17, False, 1.0, 1.0)
  assert not f(17, False, 0.5, 1.0)   # improved
  assert not f(17, True, 1.0, 1.0)    # halved last time


def _linear_problem(num_classes=5, dim=12, n=200, seed=0):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(dim, num_classes)).astype(np.float32)
  b = rng.normal(size=num_classes).astype(np.float32) * 0.3
  x = rng.uniform(0.3, 0.7, (n, dim, 1, 1)).astype(np.float32)
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ w + b
  y = np.argmax(logits_fn(x), -1)  # clean-correct by construction
  return w, b, x, y, logits_fn


@pytest.mark.parametrize("norm,eps", [("linf", 0.02), ("l2", 0.05)])
def test_apgd_t_finds_exact_linear_optimum(norm, eps):
  """Linear model, ball inside the box: x is fooled iff for some class j
  (w_j − w_y)·x + b_j − b_y + ε‖w_j − w_y‖_* > 0 (dual norm: L1 for L∞, L2
  for L2). APGD-T over all targets must find exactly those examples."""
  w, b, x, y, logits_fn = _linear_problem()
  flat = x.reshape(len(x), -1)
  dual = 1 if norm == "linf" else 2
  best = np.full(len(x), -np.inf)
  for j in range(w.shape[1]):
    d = w[:, j][None] - w[:, y].T                    # [n, dim]
    m = np.sum(d * flat, 1) + b[j] - b[y] + eps * np.linalg.norm(d, dual, 1)
    best = np.where(j == y, best, np.maximum(best, m))
  clear = np.abs(best) > 1e-3   # skip examples exactly on the boundary
  assert 0.2 < np.mean(best > 0) < 0.8
  cfg = apgd.APGDConfig(epsilon=eps, num_steps=30, norm=norm,
                              loss="dlr_targeted", num_target_classes=4,
                              unroll=False)
  x_adv = jax.jit(lambda x, y, k: apgd.apgd(logits_fn, x, y, k, cfg))(
      x, y, jax.random.PRNGKey(0))
  fooled = np.argmax(logits_fn(x_adv), -1) != y
  np.testing.assert_array_equal(fooled[clear], (best > 0)[clear])
  # Inside the ε-ball and the box.
  delta = np.asarray(x_adv - x).reshape(len(x), -1)
  size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
  assert size.max() <= eps + 1e-5
  assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


def test_apgd_ce_at_least_as_strong_as_pgd_on_linear_model():
  w, b, x, y, logits_fn = _linear_problem(seed=1)
  eps = 0.05
  pgd = attacks.PGDConfig(epsilon=eps, step_size=eps / 4, num_steps=10,
                          unroll=False)
  x_pgd = attacks.pgd(logits_fn, x, y, jax.random.PRNGKey(0), pgd)
  cfg = apgd.APGDConfig(epsilon=eps, num_steps=20, unroll=False)
  x_apgd, fooled = jax.jit(lambda x, y, k: apgd.apgd_run(
      logits_fn, x, y, k, cfg))(x, y, jax.random.PRNGKey(0))
  rob = lambda xa: np.mean(np.argmax(logits_fn(xa), -1) == y)
  assert rob(x_apgd) <= rob(x_pgd)
  np.testing.assert_array_equal(np.asarray(fooled),
                                np.argmax(logits_fn(x_apgd), -1) != y)


def test_config_and_class_checks():
  with pytest.raises(UserError, match="epsilon=1.5"):
    apgd.APGDConfig(epsilon=1.5).validate()
  with pytest.raises(UserError, match="loss='cw'"):
    apgd.APGDConfig(loss="cw").validate()
  with pytest.raises(UserError, match="at least 4 classes"):
    autoattack.Attack("t", apgd.APGDConfig(loss="dlr_targeted")).runs(3)
  # Targets are the classes ranked 2nd, 3rd, ... by the clean logits.
  z = jnp.array([[0.1, 0.9, 0.5, 0.3]])
  assert int(attacks.target_classes(z, 2)[0]) == 2
  assert int(attacks.target_classes(z, 4)[0]) == 0
  runs = autoattack.Attack("t", apgd.APGDConfig(
      loss="dlr_targeted", num_target_classes=9, restarts=2)).runs(4)
  assert runs == [(0, 2), (1, 2), (2, 3), (3, 3), (4, 4), (5, 4)]


def test_apgd_in_pieces_equals_one_program(synthetic, tiny_cnn):
  """The host loop over compiled pieces of steps (`steps_per_call`, CPU's
  default) gives the same search as one program over all steps: the same
  state after 4 + 4 + 2 steps as after 10 (checkpoints fall inside and on
  the piece boundaries), and the same per-example results in `run_suite`."""
  from rift_jax import models
  model, variables = tiny_cnn
  fns = models.ModelFns(model)
  logits_fn = lambda z: fns.logits(variables, z, train=False)
  x = jnp.asarray(synthetic.test.images[:64], jnp.float32) / 255
  y = jnp.asarray(synthetic.test.labels[:64])
  cfg = apgd.APGDConfig(epsilon=0.1, num_steps=10, unroll=False)
  assert set(apgd.checkpoint_schedule(10)) >= {4, 8}
  key = jax.random.PRNGKey(3)
  whole = jax.jit(lambda: apgd.apgd_steps(
      logits_fn, x, y, apgd.apgd_init(logits_fn, x, y, key, cfg), cfg))()
  state = start = jax.jit(lambda: apgd.apgd_init(logits_fn, x, y, key, cfg))()
  step = jax.jit(lambda s, first, count: apgd.apgd_steps(
      logits_fn, x, y, s, cfg, start=first, count=count), static_argnums=2)
  for first, count in ((0, 4), (4, 4), (8, 2)):
    state = step(state, jnp.int32(first), count)
  for k in whole:
    np.testing.assert_array_equal(np.asarray(state[k]), np.asarray(whole[k]), k)
  # A non-trivial search: the best loss rose, the step size was halved.
  assert float(np.mean(whole["loss_best"] > start["loss"])) > 0.5
  assert float(np.min(whole["step"])) < float(np.max(start["step"]))

  def suite(per_call):
    attack = autoattack.Attack("apgd_t", apgd.APGDConfig(
        epsilon=0.1, num_steps=10, loss="dlr_targeted", num_target_classes=3,
        unroll=False, steps_per_call=per_call))
    return autoattack.run_suite(fns, variables, synthetic.test, [attack], 64,
                                jax.random.PRNGKey(0), progress=False)
  one, pieces = suite(0), suite(4)
  np.testing.assert_array_equal(one["per_example"]["apgd_t"],
                                pieces["per_example"]["apgd_t"])
  assert one["robust"]["apgd_t"] <= one["clean"]
  with pytest.raises(UserError, match="steps_per_call=-1"):
    apgd.APGDConfig(steps_per_call=-1).validate()


# ----------------------------------------------- cross-check vs torchattacks
EPS = 0.1  # the fixture's threat model (tests/conftest.py: robust_pair)


def _ours(fns, variables, split, attack):
  return autoattack.run_suite(fns, variables, split, [attack] if attack else [],
                              250, jax.random.PRNGKey(0), progress=False)


def test_against_torchattacks_on_a_robust_model(robust_pair):
  """Same converted weights, same 200 images: clean, PGD-10, APGD-CE, APGD-T
  agree with torchattacks within 1 pp; APGD ≤ PGD-10 (+ noise)."""
  r = robust_pair
  torch, ta, tm, fns, variables, split = (r.torch, r.ta, r.tm, r.fns,
                                          r.variables, r.split)
  torch.manual_seed(0)
  ours_clean = _ours(fns, variables, split, None)["clean"]
  x = torch.from_numpy(r.x.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    theirs_clean = 100.0 * (tm(x).argmax(1).numpy() == split.labels).mean()
  assert ours_clean == pytest.approx(theirs_clean, abs=0.21)
  # PGD-10 from the clean image (deterministic): the same maths gives the
  # same robust accuracy up to float rounding.
  pgd0 = attacks.PGDConfig(epsilon=EPS, step_size=0.025, num_steps=10,
                           init="zero", unroll=False)
  ours_pgd = _ours(fns, variables, split,
                   autoattack.Attack("pgd", pgd0))["robust"]["pgd"]
  theirs_pgd = torch_robust_accuracy(r, ta.PGD(tm, eps=EPS, alpha=0.025,
                                               steps=10, random_start=False))
  assert 10 < ours_pgd < ours_clean - 5  # robust, and the attack matters
  assert abs(ours_pgd - theirs_pgd) <= 1.0
  # APGD-CE and APGD-T (10 steps; APGD-T over 3 target classes).
  ce = apgd.APGDConfig(epsilon=EPS, num_steps=10, loss="ce", unroll=False)
  ours_ce = _ours(fns, variables, split, autoattack.Attack("ce", ce))
  theirs_ce = torch_robust_accuracy(r, ta.APGD(tm, eps=EPS, steps=10,
                                              loss="ce", seed=0))
  assert abs(ours_ce["robust"]["ce"] - theirs_ce) <= 1.0
  tgt = dataclasses.replace(ce, loss="dlr_targeted", num_target_classes=3)
  ours_t = _ours(fns, variables, split,
                 autoattack.Attack("t", tgt))["robust"]["t"]
  # torchattacks attacks n_classes − 1 targets: n_classes=4 -> 3 targets.
  theirs_t = torch_robust_accuracy(r, ta.APGDT(tm, eps=EPS, steps=10,
                                               n_classes=4, seed=0))
  assert abs(ours_t - theirs_t) <= 1.0
  # APGD at least as strong as PGD-10 (noise allowance: 1 pp = 2 images).
  assert ours_ce["robust"]["ce"] <= ours_pgd + 1.0
  assert ours_t <= ours_pgd + 1.0
  # (Restarts: tests/test_restarts.py. Here a second restart could only run
  # on the survivors of the first, so "never worse" could not fail.)
  print(f"\nclean {ours_clean:.2f}/{theirs_clean:.2f}  PGD-10 {ours_pgd:.2f}/"
        f"{theirs_pgd:.2f}  APGD-CE {ours_ce['robust']['ce']:.2f}/{theirs_ce:.2f}"
        f"  APGD-T {ours_t:.2f}/{theirs_t:.2f} (ours/torchattacks, %)")
