"""The complete AutoAttack: versions, the suite against torchattacks', and
the checks AutoAttack runs (randomness, gradient masking)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rift_jax import data, models
from rift_jax.attacks import apgd, fab, square
from rift_jax.evaluation import autoattack
from rift_jax.errors import UserError
from tests.conftest import torch_robust_accuracy


def test_versions_are_the_references():
  std = autoattack.autoattack_suite("standard", 8 / 255)
  assert [a.name for a in std] == ["apgd_ce", "apgd_t", "fab_t", "square"]
  assert all(a.cfg.restarts == 1 for a in std)
  assert std[1].cfg.num_target_classes == 9 and std[2].cfg.targeted
  assert std[2].cfg.num_target_classes == 9 and std[3].cfg.num_queries == 5000
  assert std[0].cfg.num_steps == std[2].cfg.num_steps == 100
  plus = autoattack.autoattack_suite("plus", 8 / 255)
  assert [(a.name, a.cfg.restarts) for a in plus] == [
      ("apgd_ce", 5), ("apgd_dlr", 5), ("fab", 5), ("square", 1), ("apgd_t", 1),
      ("fab_t", 1)]
  assert not plus[2].cfg.targeted
  rand = autoattack.autoattack_suite("rand", 8 / 255)
  assert [(a.name, a.cfg.eot_iter) for a in rand] == [("apgd_ce", 20),
                                                      ("apgd_dlr", 20)]
  sub = autoattack.autoattack_suite("standard", 0.5, "l2",
                                    names=["square", "apgd_ce"])
  assert [a.name for a in sub] == ["apgd_ce", "square"]   # the version's order
  with pytest.raises(UserError, match="attacks entry='fab'"):
    autoattack.autoattack_suite("standard", names=["fab"])
  with pytest.raises(UserError, match="version='strong'"):
    autoattack.autoattack_suite("strong")
  # FAB-T's runs: every target, restart 0 from the clean image.
  runs = autoattack.Attack("f", fab.FABConfig(targeted=True, num_target_classes=3,
                                              restarts=2)).runs(10)
  assert runs == [(0, 2), (1, 2), (2, 3), (3, 3), (4, 4), (5, 4)]


@pytest.mark.slow
def test_suite_agrees_with_torchattacks_autoattack(robust_pair):
  """APGD-CE → APGD-T → FAB-T → Square on the survivors, ours and
  torchattacks' (MultiAttack of the same four attacks, each on the images
  the previous ones left robust), same 200 images and ε, reduced budgets on
  both sides: robust accuracy after the whole suite within 1 pp.
  `pytest -m slow` (about 2 minutes; each attack's own torchattacks
  cross-check runs in `make test`)."""
  r = robust_pair
  eps = 0.1
  ours_suite = [
      autoattack.Attack("apgd_ce", apgd.APGDConfig(
          epsilon=eps, num_steps=10, loss="ce", unroll=False)),
      autoattack.Attack("apgd_t", apgd.APGDConfig(
          epsilon=eps, num_steps=10, loss="dlr_targeted", num_target_classes=3,
          unroll=False)),
      autoattack.Attack("fab_t", fab.FABConfig(
          epsilon=eps, num_steps=10, targeted=True, num_target_classes=3)),
      autoattack.Attack("square", square.SquareConfig(
          epsilon=eps, num_queries=100, rescale_schedule=True))]
  ours = autoattack.run_suite(r.fns, r.variables, r.split, ours_suite, 250,
                              jax.random.PRNGKey(0), progress=False)
  ta, tm = r.ta, r.tm
  r.torch.manual_seed(0)
  theirs = torch_robust_accuracy(r, ta.MultiAttack([
      ta.APGD(tm, eps=eps, steps=10, loss="ce", seed=0),
      ta.APGDT(tm, eps=eps, steps=10, n_classes=4, seed=0),
      ta.FAB(tm, eps=eps, steps=10, n_classes=4, multi_targeted=True, seed=0),
      ta.Square(tm, eps=eps, n_queries=100, seed=0)]))
  robust = list(ours["robust"].values())
  assert robust == sorted(robust, reverse=True)   # each attack only removes
  assert 5 < robust[-1] < ours["clean"] - 5
  assert abs(robust[-1] - theirs) <= 1.0, (ours["robust"], theirs)
  assert set(ours["seconds"]) == {"apgd_ce", "apgd_t", "fab_t", "square"}
  assert ours["warnings"] == []


class _Quantised(nn.Module):
  """A linear classifier on 4-level quantised pixels: its input gradient is
  zero almost everywhere (gradient masking), its decisions are not robust."""

  @nn.compact
  def __call__(self, x, train=False):
    q = jnp.round(x * 3.0) / 3.0
    return nn.Dense(4, name="linear")(q.reshape(q.shape[0], -1))


def test_square_exposes_gradient_masking():
  info = data.INFO["synthetic"]
  raw = data.synthetic_splits(num_train=8, num_test=64, seed=0)
  model = _Quantised()
  fns = models.ModelFns(model)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *info.image_shape)))
  # Train the linear head on the quantised data in closed form (least squares)
  # so it is accurate; then white-box attacks see zero gradients.
  x = data.to_float(raw["test"].images).reshape(64, -1)
  q = np.round(x * 3.0) / 3.0
  target = np.eye(4)[raw["test"].labels] * 10.0
  w, *_ = np.linalg.lstsq(np.c_[q, np.ones(64)], target, rcond=None)
  v = {"params": {"linear": {"kernel": jnp.asarray(w[:-1], jnp.float32),
                             "bias": jnp.asarray(w[-1], jnp.float32)}}}
  suite = [autoattack.Attack("apgd_ce", apgd.APGDConfig(
               epsilon=0.3, num_steps=5, unroll=False)),
           autoattack.Attack("square", square.SquareConfig(
               epsilon=0.3, num_queries=300))]
  out = autoattack.run_suite(fns, v, raw["test"], suite, 32,
                             jax.random.PRNGKey(0), progress=False)
  # Zero gradients: APGD barely moves (only its random start can flip a
  # rounded pixel); the black-box Square breaks what it left standing.
  assert out["robust"]["apgd_ce"] >= out["clean"] - 5
  assert out["square_broke_pp"] > 10
  assert any("gradient masking" in w for w in out["warnings"])


def test_randomness_is_reported(monkeypatch, tiny_cnn, synthetic):
  model, variables = tiny_cnn
  fns = models.ModelFns(model)
  calls = iter(range(100))
  real = autoattack._compiled_logits(fns)
  noisy = lambda v, x, y: np.asarray(real(v, x, y)) + 1e-3 * next(calls)
  monkeypatch.setattr(autoattack, "_compiled_logits", lambda f: noisy)
  out = autoattack.run_suite(fns, variables, synthetic.val, [], 64,
                             jax.random.PRNGKey(0), progress=False)
  assert any("version='rand'" in w for w in out["warnings"])
