"""RiFT steps 1–3: MRC, masked fine-tuning, interpolation, the pipeline."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rift_jax import evaluate, finetune, interpolate, models, mrc, pipeline
from rift_jax.errors import UserError
from tests.configs import tiny


class TwoLayer(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    h = nn.Dense(3, use_bias=False, name="fc1")(x.reshape(x.shape[0], -1))
    return nn.Dense(2, use_bias=False, name="fc2")(h)


def _two_layer():
  w1 = np.array([[0.5, -1.0, 0.2], [1.5, 0.3, -0.7]], np.float32)   # [in 2, out 3]
  w2 = np.array([[1.0, -0.5], [0.2, 0.8], [-1.2, 0.4]], np.float32)  # [in 3, out 2]
  variables = {"params": {"fc1": {"kernel": jnp.asarray(w1)},
                          "fc2": {"kernel": jnp.asarray(w2)}}}
  x = np.array([[1.0, 2.0], [-0.5, 1.0]], np.float32)
  y = np.array([0, 1], np.int32)
  return TwoLayer(), variables, w1, w2, x, y


def test_ascent_step_matches_hand_computed_gradient():
  model, variables, w1, w2, x, y = _two_layer()
  apply_fn = lambda v, xx: model.apply(v, xx)
  # By hand: h = x W1, p = softmax(h W2), ∂mean CE/∂W2 = hᵀ (p − onehot(y)) / B.
  h = x @ w1
  z = h @ w2
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  g2 = h.T @ (p - np.eye(2)[y]) / 2
  mask = mrc._scalar_mask(variables["params"], "fc2")
  zeros = jax.tree_util.tree_map(jnp.zeros_like, variables["params"])
  w = jnp.ones(2)
  delta = mrc.ascent_step(apply_fn, variables, zeros, mask, x, y, w,
                          learning_rate=0.5, epsilon=10.0, project=False)
  np.testing.assert_allclose(delta["fc2"]["kernel"], 0.5 * g2, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(delta["fc1"]["kernel"], 0.0)  # only fc2 moves
  # Projected: Δ scaled onto the sphere of radius ε‖W2‖ when it is outside.
  eps = 0.01
  proj = mrc.ascent_step(apply_fn, variables, zeros, mask, x, y, w,
                         learning_rate=0.5, epsilon=eps, project=True)
  expect = 0.5 * g2 * min(1.0, eps * np.linalg.norm(w2) / np.linalg.norm(0.5 * g2))
  np.testing.assert_allclose(proj["fc2"]["kernel"], expect, rtol=1e-5)


def test_constraint_holds_after_every_step():
  model, variables, w1, w2, x, y = _two_layer()
  apply_fn = lambda v, xx: model.apply(v, xx)
  mask = mrc._scalar_mask(variables["params"], "fc1")
  delta = jax.tree_util.tree_map(jnp.zeros_like, variables["params"])
  for _ in range(5):
    delta = mrc.ascent_step(apply_fn, variables, delta, mask, x, y, jnp.ones(2),
                            learning_rate=100.0, epsilon=0.1, project=True)
    d, wn = mrc.masked_norms(variables["params"], delta, mask)
    assert float(d) <= 0.1 * float(wn) * (1 + 1e-5)
  assert float(d) == pytest.approx(0.1 * float(wn), rel=1e-5)  # it reaches the sphere


@pytest.fixture(scope="module")
def fixed_set(tiny_cnn, synthetic):
  model, variables = tiny_cnn
  from rift_jax import attacks
  apply_fn = lambda v, x: model.apply(v, x, train=False)
  x, y = mrc.fixed_adversarial_set(apply_fn, variables, synthetic.val.take(np.arange(96)),
                                   attacks.PGDConfig(0.03, 0.01, 3),
                                   jax.random.PRNGKey(0), 32)
  return apply_fn, variables, x, y


@pytest.mark.parametrize("projection", ["per_pass", "per_step"])
def test_mrc_sequential_and_vmap_agree_and_respect_the_ball(fixed_set, projection):
  apply_fn, variables, x, y = fixed_set
  seen = []
  kw = dict(epsilon=0.1, num_passes=3, batch_size=40, projection=projection)
  seq = mrc.module_robust_criticality(
      apply_fn, variables, x, y, mode="sequential",
      on_step=lambda m, p, r: seen.append(r), **kw)
  vec = mrc.module_robust_criticality(apply_fn, variables, x, y, mode="vmap",
                                      vmap_chunk=3, **kw)
  assert list(seq) == list(models.perturbable_modules(variables["params"]))
  # The base point is θ itself on the fixed set, as computed directly.
  direct = float(100.0 * np.mean(np.argmax(np.asarray(apply_fn(variables, x)), -1) == y))
  for r in seq.values():
    assert r.base_acc == pytest.approx(direct, abs=1e-4)
  assert max(seen) <= 0.1 * (1 + 1e-5)
  for name in seq:
    a, b = seq[name], vec[name]
    assert a.mrc >= 0.0
    np.testing.assert_allclose(a.mrc, b.mrc, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.loss_per_pass, b.loss_per_pass, rtol=1e-5)
    assert a.relative_norm <= 0.1 * (1 + 1e-5)
  # Ascent raised the robust loss for some module.
  assert max(r.mrc for r in seq.values()) > 0.0
  assert mrc.least_critical(seq, 2)[0] == min(seq, key=lambda n: seq[n].mrc)


def test_finetune_changes_only_the_chosen_kernel(tiny_cnn, synthetic):
  model, variables = tiny_cnn
  fns = models.ModelFns(model)
  optim = finetune.default_optim()
  optim.epochs, optim.batch_size, optim.lr = 2, 64, 0.05
  for update_stats in (True, False):
    res = finetune.finetune(fns, variables, synthetic, ["conv2"], optim,
                            update_batch_stats=update_stats, eval_batch_size=64,
                            progress=False)
    before = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    after = jax.tree_util.tree_leaves(res.variables["params"])
    for (path, a), b in zip(before, after):
      name = models.path_to_name([str(getattr(k, "key", k)) for k in path])
      if name == "conv2.kernel":
        assert not np.array_equal(np.asarray(a), np.asarray(b))
      else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
    stats_same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree_util.tree_leaves(variables["batch_stats"]),
        jax.tree_util.tree_leaves(res.variables["batch_stats"])))
    assert stats_same == (not update_stats)
    assert res.best_epoch in (1, 2) and len(res.history) == 3


def test_interpolation_endpoints_and_vmap_agree(tiny_cnn, synthetic):
  model, theta_at = tiny_cnn
  fns = models.ModelFns(model)
  theta_ft = jax.tree_util.tree_map(
      lambda a: a + 0.05 * jax.random.normal(jax.random.PRNGKey(3), a.shape), theta_at)
  from rift_jax import attacks
  attack = evaluate.pgd_attack_fn(attacks.PGDConfig(0.03, 0.01, 2))
  rng = jax.random.PRNGKey(5)
  split = synthetic.val
  alphas = [0.0, 0.5, 1.0]
  vm = interpolate.evaluate_alphas(fns, theta_at, theta_ft, alphas, split, attack,
                                   rng, 64, chunk=3, progress=False)
  loop = interpolate.evaluate_alphas(fns, theta_at, theta_ft, alphas, split, attack,
                                     rng, 64, chunk=1, progress=False)
  for a, b in zip(vm, loop):
    assert a["clean"] == pytest.approx(b["clean"]) and a["adv"] == pytest.approx(b["adv"])
  ev = evaluate.Evaluator(fns, attack, 64)
  at, ft = ev(theta_at, split, rng), ev(theta_ft, split, rng)
  assert (vm[0]["clean"], vm[0]["adv"]) == pytest.approx((at["clean"], at["adv"]))
  assert (vm[2]["clean"], vm[2]["adv"]) == pytest.approx((ft["clean"], ft["adv"]))
  exact0 = interpolate.interpolate(theta_at, theta_ft, 0.0)
  for a, b in zip(jax.tree_util.tree_leaves(exact0), jax.tree_util.tree_leaves(theta_at)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_select_alpha_on_hand_made_curves():
  curve = [{"alpha": a, "clean": c, "adv": r} for a, c, r in
           [(0.0, 80.0, 50.0), (0.3, 82.0, 50.0), (0.6, 84.0, 49.95), (0.9, 86.0, 49.8)]]
  assert interpolate.select_alpha(curve, 0.1)["alpha"] == 0.6
  assert interpolate.select_alpha(curve, 0.3)["alpha"] == 0.9
  assert interpolate.select_alpha(curve, 0.0)["alpha"] == 0.3
  with pytest.raises(UserError, match="tolerance=-1"):
    interpolate.select_alpha(curve, -1)
  with pytest.raises(UserError, match="empty"):
    interpolate.check_alphas([])
  with pytest.raises(UserError, match=r"1\.5.*outside \[0, 1\]"):
    interpolate.check_alphas([0.0, 1.5])


def test_launch_rift_end_to_end_resume_and_ablations(tmp_path):
  from tests.conftest import run_cli
  wd = str(tmp_path / "rift")
  proc = run_cli("launch.rift", "--config=tests/configs/tiny.py", f"--workdir={wd}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "AT+RiFT clean" in proc.stdout
  with open(os.path.join(wd, "results.json")) as f:
    saved = json.load(f)
  for part in ("at", "rift"):
    assert set(saved[part]) == {"clean", "adv", "ood"}
    assert 0 <= saved[part]["adv"] <= saved[part]["clean"] <= 100
  assert saved["module"] == min(saved["mrc"], key=lambda n: saved["mrc"][n]["mrc"])
  assert saved["alpha"] in [c["alpha"] for c in saved["interpolation"]]
  assert set(saved["timing_s"]) >= {"train_at", "fixed_set", "mrc", "finetune",
                                    "interpolate", "test"}
  assert saved["config"]["model"]["name"] == "small_cnn"
  for f in ("report.md", "mrc.png", "interpolation.png", "fixed_set.npz"):
    assert os.path.exists(os.path.join(wd, f))
  # α = 0 on validation is θ_AT: the chosen α keeps robust accuracy within 0.1 pp.
  ref = saved["interpolation"][0]
  chosen = [c for c in saved["interpolation"] if c["alpha"] == saved["alpha"]][0]
  assert chosen["adv"] >= ref["adv"] - 0.1 - 1e-9
  stamps = {f: os.path.getmtime(os.path.join(wd, f))
            for f in ("fixed_set.npz", "mrc.json", "timing.json", "results.json")}
  cfg = tiny.get_config()
  again = pipeline.run(cfg, wd)  # every stage is found finished and skipped
  assert again["rift"] == saved["rift"]
  assert stamps == {f: os.path.getmtime(os.path.join(wd, f)) for f in stamps}
  # Ablations (paper Table 3) on the same θ_AT: one flag, a table in report.md.
  cfg.unlock()
  cfg.rift.at_checkpoint = os.path.join(wd, "at")
  cfg.rift.ablations = ("last",)
  cfg.rift.ood.enabled = False
  abl = pipeline.run(cfg, str(tmp_path / "abl"))
  assert abl["ablations"]["last"]["modules"] == ["linear"]
  assert abl["at"]["clean"] == pytest.approx(saved["at"]["clean"])
  with open(tmp_path / "abl" / "report.md") as f:
    assert "## Ablations" in f.read()
