"""RiFT steps 1–3: MRC, masked fine-tuning, interpolation, the pipeline."""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rift_jax import evaluation, models
from rift_jax.experiments import pipeline
from rift_jax.rift import criticality, finetuning, interpolation
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
  fns = models.ModelFns(model)
  # By hand: h = x W1, p = softmax(h W2), ∂mean CE/∂W2 = hᵀ (p − onehot(y)) / B.
  h = x @ w1
  z = h @ w2
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  g2 = h.T @ (p - np.eye(2)[y]) / 2
  mask = criticality._scalar_mask(variables["params"], "fc2")
  zeros = jax.tree_util.tree_map(jnp.zeros_like, variables["params"])
  w = jnp.ones(2)
  delta = criticality.weight_ascent_step(fns, variables, zeros, mask, x, y, w,
                          learning_rate=0.5, epsilon=10.0, project=False)
  np.testing.assert_allclose(delta["fc2"]["kernel"], 0.5 * g2, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(delta["fc1"]["kernel"], 0.0)  # only fc2 moves
  # Projected: Δ scaled onto the sphere of radius ε‖W2‖ when it is outside.
  eps = 0.01
  proj = criticality.weight_ascent_step(fns, variables, zeros, mask, x, y, w,
                         learning_rate=0.5, epsilon=eps, project=True)
  expect = 0.5 * g2 * min(1.0, eps * np.linalg.norm(w2) / np.linalg.norm(0.5 * g2))
  np.testing.assert_allclose(proj["fc2"]["kernel"], expect, rtol=1e-5)


def test_constraint_holds_after_every_step():
  model, variables, w1, w2, x, y = _two_layer()
  fns = models.ModelFns(model)
  mask = criticality._scalar_mask(variables["params"], "fc1")
  delta = jax.tree_util.tree_map(jnp.zeros_like, variables["params"])
  for _ in range(5):
    delta = criticality.weight_ascent_step(fns, variables, delta, mask, x, y, jnp.ones(2),
                            learning_rate=100.0, epsilon=0.1, project=True)
    d, wn = criticality.masked_norms(variables["params"], delta, mask)
    assert float(d) <= 0.1 * float(wn) * (1 + 1e-5)
  assert float(d) == pytest.approx(0.1 * float(wn), rel=1e-5)  # it reaches the sphere


@pytest.fixture(scope="module")
def fixed_set(tiny_cnn, synthetic):
  model, variables = tiny_cnn
  from rift_jax import attacks
  fns = models.ModelFns(model)
  x, y = criticality.fixed_adversarial_set(
      fns, variables, synthetic.val.take(np.arange(96)),
      attacks.PGDConfig(0.03, 0.01, 3), jax.random.PRNGKey(0), 32)
  return fns, variables, x, y


@pytest.mark.parametrize("projection", ["per_pass", "per_step"])
def test_mrc_sequential_and_vmap_agree_and_respect_the_ball(fixed_set, projection):
  fns, variables, x, y = fixed_set
  seen = []
  kw = dict(epsilon=0.1, num_passes=3, batch_size=40, projection=projection)
  seq = criticality.mrc(fns, variables, x, y, mode="sequential",
                        on_step=lambda m, p, r: seen.append(r), **kw)
  vec = criticality.mrc(fns, variables, x, y, mode="vmap", route="mask",
                        vmap_chunk=3, **kw)
  assert list(seq) == list(models.perturbable_modules(variables["params"]))
  # The base point is θ itself on the fixed set, as computed directly.
  direct = float(100.0 * np.mean(np.argmax(np.asarray(fns.logits(variables, x)), -1) == y))
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
  assert criticality.least_critical(seq, 2)[0] == min(seq, key=lambda n: seq[n].mrc)


def test_finetune_changes_only_the_chosen_kernel(tiny_cnn, synthetic):
  model, variables = tiny_cnn
  fns = models.ModelFns(model)
  optim = dataclasses.replace(finetuning.default_optim(), epochs=2,
                              batch_size=64, lr=0.05)
  for update_stats in (True, False):
    res = finetuning.finetune(fns, variables, synthetic, ["conv2"], optim,
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


def test_finetune_killed_after_an_epoch_resumes_to_the_same_numbers(
    tiny_cnn, synthetic, tmp_path):
  model, variables = tiny_cnn
  fns = models.ModelFns(model)
  optim = dataclasses.replace(finetuning.default_optim(), epochs=3,
                              batch_size=64, lr=0.05)
  kw = dict(eval_batch_size=64, progress=False, seed=3)
  whole = finetuning.finetune(fns, variables, synthetic, ["conv2"], optim, **kw)
  ckpt = str(tmp_path / "ft")
  part = finetuning.finetune(fns, variables, synthetic, ["conv2"], optim,
                             checkpoint_dir=ckpt, stop_after_epoch=1, **kw)
  assert len(part.history) == 2                     # epoch 0 and epoch 1
  resumed = finetuning.finetune(fns, variables, synthetic, ["conv2"], optim,
                                checkpoint_dir=ckpt, **kw)
  assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
  assert [h["val_clean"] for h in resumed.history] == [
      h["val_clean"] for h in whole.history]
  assert resumed.best_epoch == whole.best_epoch
  for a, b in zip(jax.tree_util.tree_leaves(resumed.variables),
                  jax.tree_util.tree_leaves(whole.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_interpolation_endpoints_and_vmap_agree(tiny_cnn, synthetic):
  model, theta_at = tiny_cnn
  fns = models.ModelFns(model)
  theta_ft = jax.tree_util.tree_map(
      lambda a: a + 0.05 * jax.random.normal(jax.random.PRNGKey(3), a.shape), theta_at)
  from rift_jax import attacks
  attack = evaluation.pgd_attack_fn(attacks.PGDConfig(0.03, 0.01, 2))
  rng = jax.random.PRNGKey(5)
  split = synthetic.val
  alphas = [0.0, 0.5, 1.0]
  vm, vm_ok = interpolation.evaluate_alphas(fns, theta_at, theta_ft, alphas, split,
                                            attack, rng, 64, chunk=3, progress=False)
  loop, loop_ok = interpolation.evaluate_alphas(fns, theta_at, theta_ft, alphas,
                                                split, attack, rng, 64, chunk=1,
                                                progress=False)
  np.testing.assert_array_equal(vm_ok["adv"], loop_ok["adv"])
  for a, b in zip(vm, loop):
    assert a["clean"] == pytest.approx(b["clean"]) and a["adv"] == pytest.approx(b["adv"])
  ev = evaluation.Evaluator(fns, attack, 64)
  at, ft = ev(theta_at, split, rng), ev(theta_ft, split, rng)
  assert (vm[0]["clean"], vm[0]["adv"]) == pytest.approx((at["clean"], at["adv"]))
  assert (vm[2]["clean"], vm[2]["adv"]) == pytest.approx((ft["clean"], ft["adv"]))
  np.testing.assert_array_equal(vm_ok["clean"][0], at["per_example"]["clean"])
  exact0 = interpolation.mix(theta_at, theta_ft, 0.0)
  for a, b in zip(jax.tree_util.tree_leaves(exact0), jax.tree_util.tree_leaves(theta_at)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_select_alpha_on_hand_made_curves():
  curve = [{"alpha": a, "clean": c, "adv": r} for a, c, r in
           [(0.0, 80.0, 50.0), (0.3, 82.0, 50.0), (0.6, 84.0, 49.95), (0.9, 86.0, 49.8)]]
  assert interpolation.select_alpha(curve, 0.1)["alpha"] == 0.6
  assert interpolation.select_alpha(curve, 0.3)["alpha"] == 0.9
  assert interpolation.select_alpha(curve, 0.0)["alpha"] == 0.3
  # robust_and_ood: OOD on corrupted validation images may not fall either.
  for c, o in zip(curve, (70.0, 70.05, 69.8, 71.0)):
    c["ood"] = o
  assert interpolation.select_alpha(curve, 0.1, "robust_and_ood")["alpha"] == 0.3
  assert interpolation.select_alpha(curve, 0.3, "robust_and_ood")["alpha"] == 0.9
  with pytest.raises(UserError, match="rift.ood_val.enabled"):
    interpolation.select_alpha([{k: v for k, v in c.items() if k != "ood"}
                                for c in curve], 0.1, "robust_and_ood")
  with pytest.raises(UserError, match="tolerance=-1"):
    interpolation.select_alpha(curve, -1)
  with pytest.raises(UserError, match="empty"):
    interpolation.check_alphas([])
  with pytest.raises(UserError, match=r"1\.5.*outside \[0, 1\]"):
    interpolation.check_alphas([0.0, 1.5])
  with pytest.raises(UserError, match="must contain 0.0"):
    interpolation.check_alphas([0.5, 1.0])


def test_launch_rift_end_to_end_resume_and_ablations(tmp_path, monkeypatch):
  from tests.conftest import run_cli
  wd = str(tmp_path / "rift")
  # The CLI run takes the code paths chosen for GPU/TPU (rolled attack
  # loops, XLA's convolution gradients, α vmapped), so every `make test`
  # exercises what accelerator users run; the in-process runs below take
  # the CPU paths on the same θ_AT.
  proc = run_cli("launch.rift", "--config=tests/configs/tiny.py", f"--workdir={wd}",
                 env={"RIFT_JAX_ACCELERATOR_PATHS": "1"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "AT+RiFT" in proc.stdout and "Δ" in proc.stdout
  with open(os.path.join(wd, "results.json")) as f:
    saved = json.load(f)
  for part in ("at", "rift"):
    assert set(saved[part]) == {"clean", "adv", "ood"}
    assert 0 <= saved[part]["adv"] <= saved[part]["clean"] <= 100
  # The lowest-MRC module among the candidates (3×3 convolutions after the
  # stem by default), which every module was scored to rank.
  assert saved["candidates"] and set(saved["candidates"]) < set(saved["mrc"])
  assert saved["module"] == min(saved["candidates"],
                                key=lambda n: saved["mrc"][n]["mrc"])
  assert all(v["steps"] == v["steps_per_pass"] * 2 for v in saved["mrc"].values())
  assert saved["alpha"] in [c["alpha"] for c in saved["interpolation"]]
  assert set(saved["timing_s"]) >= {"train_at", "fixed_set", "mrc", "finetune",
                                    "interpolate", "test"}
  assert saved["config"]["model"]["name"] == "small_cnn"
  # Every Δ comes with its paired interval, p-value and verdict.
  for k in ("clean", "adv", "ood"):
    p = saved["paired"][k]
    assert p["ci95"][0] <= p["delta"] <= p["ci95"][1]
    assert p["verdict"] in ("significant", "within noise")
  for f in ("report.md", "mrc.png", "interpolation.png", "fixed_set.npz",
            "records.npz"):
    assert os.path.exists(os.path.join(wd, f))
  # α = 0 on validation is θ_AT: the chosen α keeps robust accuracy within 0.1 pp.
  ref = saved["interpolation"][0]
  chosen = [c for c in saved["interpolation"] if c["alpha"] == saved["alpha"]][0]
  assert chosen["adv"] >= ref["adv"] - 0.1 - 1e-9
  # The per-example records reproduce the reported numbers and the paired Δ.
  from rift_jax.evaluation import records
  rec = records.load(os.path.join(wd, "records.npz"))
  assert 100 * rec["at/clean"].mean() == pytest.approx(saved["at"]["clean"])
  assert 100 * rec["rift/adv"].mean() == pytest.approx(saved["rift"]["adv"])
  assert saved["paired"]["clean"]["delta"] == pytest.approx(
      100 * (rec["rift/clean"].mean() - rec["at/clean"].mean()))
  assert not np.any(rec["at/adv"] & ~rec["at/clean"])  # robust ⇒ clean-correct
  with open(os.path.join(wd, "report.md")) as f:
    text = f.read()
  assert "95 % paired CI" in text and ("within noise at n = " in text
                                       or "significant" in text)
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
  # An export that fails loses nothing: results.json and report.md are
  # written before it, and the re-run only adds the export.
  from rift_jax.models import convert

  def broken_export(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(convert, "export_like", broken_export)
  abl_dir = tmp_path / "abl"
  with pytest.raises(OSError, match="disk full"):
    pipeline.run(cfg, str(abl_dir))
  assert (abl_dir / "results.json").exists() and (abl_dir / "report.md").exists()
  assert not (abl_dir / "theta_star.safetensors").exists()
  written = os.path.getmtime(abl_dir / "results.json")
  monkeypatch.undo()
  abl = pipeline.run(cfg, str(abl_dir))
  assert (abl_dir / "theta_star.safetensors").exists()
  assert os.path.getmtime(abl_dir / "results.json") == written
  assert abl["ablations"]["last"]["modules"] == ["linear"]
  assert abl["at"]["clean"] == pytest.approx(saved["at"]["clean"])
  with open(tmp_path / "abl" / "report.md") as f:
    assert "## Ablations" in f.read()


def test_accelerator_paths_switch(monkeypatch):
  """RIFT_JAX_ACCELERATOR_PATHS=1 makes every 'auto' choice on a CPU the one
  made for GPU/TPU."""
  from rift_jax import attacks, sharding
  from rift_jax.models import conv
  monkeypatch.delenv(sharding.ACCELERATOR_PATHS_ENV, raising=False)
  assert sharding.cpu_paths()
  assert (attacks.resolve_unroll("auto"), attacks.resolve_per_call("auto"),
          conv.resolve_impl("auto"), interpolation.auto_chunk(11)) == (
              True, attacks.CPU_STEPS_PER_CALL, "phase", 1)
  monkeypatch.setenv(sharding.ACCELERATOR_PATHS_ENV, "1")
  assert not sharding.cpu_paths()
  assert (attacks.resolve_unroll("auto"), attacks.resolve_per_call("auto"),
          conv.resolve_impl("auto"), interpolation.auto_chunk(11)) == (
              False, 0, "xla", 4)
