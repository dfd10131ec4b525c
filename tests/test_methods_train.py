"""Every method trains: a few compiled steps on tiny data lower its own loss
(with the BN mode its authors craft in, too); CURE and AFT start from a
natural run and CURE's revision model is checkpointed; the paper configs
carry the authors' per-method settings; bad input is one line and exit
code 2."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from rift_jax import data, models, training
from rift_jax.training import methods, objectives
from rift_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFO = data.INFO["synthetic"]


def tiny_config(method, bn_mode="train", **hp):
  c = common.base_config()
  c.data.name = "synthetic"
  c.data.val_size = 64
  c.model.name, c.model.width = "small_cnn", 4
  c.method = method
  c.optim.lr, c.optim.batch_size, c.optim.epochs = 0.05, 32, 1
  c.attack = common.pgd(0.1, 0.05, 2, bn_mode=bn_mode, bn_passes="authors")
  c.eval.batch_size, c.eval.attack = 64, common.pgd(0.1, 0.05, 2)
  if hp:
    c[method].update(hp)
  return c


@pytest.fixture(scope="module")
def tiny_data():
  raw = data.synthetic_splits(num_train=256, num_test=64, seed=0)
  return data.split_dataset(INFO, raw, val_size=64)


@pytest.fixture(scope="module")
def init_vars():
  """small_cnn width 4 variables, initialised once (a fresh copy per use)."""
  model = models.build_model(tiny_config("natural"), INFO)
  v = models.init_variables(model, jax.random.PRNGKey(0), INFO.image_shape)
  return lambda: jax.tree_util.tree_map(jnp.array, v)


@pytest.mark.parametrize("method,hp,bn_mode", [
    ("natural", {}, "train"), ("pgd_at", {}, "train"), ("trades", {}, "train"),
    ("mart", {}, "train"), ("score", {"recipe": "extra_data", "beta": 4.0,
                                      "clip_loss": 0.0}, "train"),
    ("awp", {"gamma": 0.01}, "train"),
    ("cure", {"p": 30.0}, "train"),
    # As its authors without extra data: eval-mode crafting, clipped loss.
    ("score", {}, "eval")])
def test_short_run_lowers_the_methods_loss(method, hp, bn_mode, tiny_data,
                                           init_vars):
  config = tiny_config(method, bn_mode=bn_mode, **hp)
  model = models.build_model(config, INFO)
  fns = models.ModelFns(model)
  ctx = methods.context(config, fns)
  m = methods.get(method)
  tx = training.make_optimizer(training.Optim.from_config(config.optim), 20)
  variables = init_vars()
  extra = m.init_extra(variables) if m.init_extra else None
  start = [np.array(a) for a in jax.tree_util.tree_leaves(variables["params"])]
  state = training.create_state(variables, tx, jax.random.PRNGKey(1), extra)
  step = training.make_train_step(ctx, tx, m, INFO, augment=False,
                               steps_per_epoch=4)
  x = data.to_float(tiny_data.train.images[:64])
  y = jnp.asarray(tiny_data.train.labels[:64])
  key = jax.random.PRNGKey(7)

  @jax.jit
  def method_loss(params, batch_stats, extra):
    # The method's objective with its own attack, crafted against θ.
    variables = {"params": params, "batch_stats": batch_stats}
    x_adv = m.craft(ctx, variables, x, y, key)[0] if m.craft else None
    batch = objectives.Batch(x, y, x_adv, key)
    return m.loss(ctx, params, batch_stats, batch, extra)[0]

  def loss_now(s):  # the method's loss on a fixed batch with a fixed attack key
    return float(method_loss(s.params, s.batch_stats, s.extra))

  before = loss_now(state)
  for i in range(12):
    state, metrics = step(state, x[32 * (i % 2):32 * (i % 2 + 1)],
                          y[32 * (i % 2):32 * (i % 2 + 1)])
  after = loss_now(state)
  assert np.isfinite(float(metrics["loss"]))
  assert after < 0.9 * before, (method, before, after)
  if method == "cure":   # the revision model moved towards θ, but lags it
    rev = jax.tree_util.tree_leaves(state.extra["params"])
    now = jax.tree_util.tree_leaves(state.params)
    assert any(not np.allclose(a, b) for a, b in zip(rev, start))
    assert any(not np.allclose(a, b) for a, b in zip(rev, now))


def test_init_from_and_revision_checkpoint(tiny_data, init_vars, tmp_path):
  from rift_jax.models import checkpoint
  config = tiny_config("cure")
  meta = {"model": models.model_meta(config, INFO)}
  nat = init_vars()
  nat["params"]["linear"]["bias"] = nat["params"]["linear"]["bias"] + 1.5
  # init_from accepts a variables folder and a launch/train workdir (best).
  checkpoint.save_variables(str(tmp_path / "vars"), nat, meta)
  checkpoint.save_variables(str(tmp_path / "run" / "checkpoints" / "best"), nat,
                            meta)
  from rift_jax.models import checkpoint as ckpt_lib
  model = models.build_model(config, INFO)
  for src in ("vars", "run"):
    got, _ = ckpt_lib.load_model_variables(str(tmp_path / src), model, INFO,
                                           meta["model"])
    np.testing.assert_array_equal(got["params"]["linear"]["bias"],
                                  nat["params"]["linear"]["bias"])
  # θ_rev lives in TrainState.extra and survives a checkpoint round trip.
  tx = training.make_optimizer(training.Optim.from_config(config.optim), 6)
  state = training.create_state(nat, tx, jax.random.PRNGKey(0),
                             methods.get("cure").init_extra(nat))
  ck = checkpoint.Checkpointer(str(tmp_path / "latest"))
  ck.save(1, state, meta)
  target = training.create_state(init_vars(), tx, jax.random.PRNGKey(0),
                              methods.get("cure").init_extra(init_vars()))
  back, _ = ck.restore(target)
  ck.close()
  np.testing.assert_array_equal(back.extra["params"]["linear"]["bias"],
                                nat["params"]["linear"]["bias"])
  # CURE and AFT refuse to start from random weights.
  from rift_jax.experiments import validation
  for method in ("aft", "cure"):
    with pytest.raises(UserError, match="init_from"):
      validation.validate_train(tiny_config(method))


def test_paper_configs_carry_the_authors_settings():
  from configs import methods_paper, quickstart_methods
  from rift_jax.training import schedules
  bn = {m: methods_paper.get_config(m).attack.bn_mode
        for m in methods_paper.METHODS}
  assert bn == {"natural": "train", "pgd_at": "train", "trades": "eval",
                "mart": "eval", "score": "eval", "awp": "train",
                "awp_trades": "eval", "cure": "eval", "aft": "train"}
  assert methods_paper.get_config("trades").attack.bn_passes == "authors"
  # MART: the ResNet-18 script (λ 5, lr 0.01, wd 3.5e-3, 120 epochs, ×0.1 at
  # 1-based 75/90/100) and the WideResNet script (λ 6, lr 0.1, wd 7e-4).
  r18, wrn = (methods_paper.get_config(v) for v in ("mart", "mart,wrn34_10"))
  assert (r18.mart.lam, r18.optim.lr, r18.optim.weight_decay,
          r18.optim.epochs) == (5.0, 0.01, 3.5e-3, 120)
  assert (wrn.mart.lam, wrn.optim.lr, wrn.optim.weight_decay,
          wrn.optim.epochs) == (6.0, 0.1, 7e-4, 90)
  assert methods_paper.get_config("mart,resnet34").mart.lam == 5.0
  lr = schedules.make_schedule(training.Optim.from_config(r18.optim), 10)
  assert [float(lr(10 * e)) for e in (73, 74, 89, 99)] == pytest.approx(
      [0.01, 1e-3, 1e-4, 1e-5])
  # CURE: 120 epochs at 0.1, ×0.1 once: 1-based epoch 100 is the first at 0.01.
  cure = methods_paper.get_config("cure")
  lr = schedules.make_schedule(training.Optim.from_config(cure.optim), 10)
  assert cure.optim.epochs == 120
  assert [float(lr(10 * e)) for e in (98, 99, 119)] == pytest.approx(
      [0.1, 0.01, 0.01])
  # SCORE: the no-extra-data recipe by default (β 6, clip 0.3, lr 0.05).
  score = methods_paper.get_config("score")
  assert (score.score.recipe, score.score.beta, score.score.clip_loss,
          score.optim.lr) == ("no_extra_data", 6.0, 0.3, 0.05)
  # The quickstart method table uses the same method settings.
  q = quickstart_methods.get_config("mart")
  assert (q.attack.bn_mode, q.mart.lam) == ("eval", 5.0)
  assert methods.context(q).bn_passes == "authors"


def test_bn_passes_is_validated():
  c = tiny_config("trades")
  c.attack.bn_passes = "all"
  with pytest.raises(UserError, match="attack.bn_passes='all'"):
    methods.context(c)


@pytest.mark.parametrize("override,needle", [
    ("--config.method=tradez", "method='tradez' is not allowed; choose one of"),
    ("--config.cure.p=100", "cure.p=100.0 is outside the allowed range"),
])
def test_cli_bad_input_exit_2(override, needle, tmp_path):
  args = [sys.executable, "-m", "launch.train", "--config=configs/quickstart.py",
          "--config.data.name=synthetic", "--config.data.val_size=64",
          "--config.model.name=small_cnn", "--config.model.width=4",
          f"--workdir={tmp_path}", override]
  if "cure" in override:
    args += ["--config.method=cure", f"--config.init_from={tmp_path}"]
  out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and needle in lines[0], out.stderr[-2000:]


def test_report_collects_rift_and_train_rows(tmp_path):
  import json
  from rift_jax.evaluation import report
  assert report.nrr(80.0, 40.0) == pytest.approx(2 * 80 * 40 / 120)
  rift = tmp_path / "rift_trades"
  rift.mkdir()
  (rift / "results.json").write_text(json.dumps({
      "method": "trades", "module": "layer2.1.conv2", "alpha": 0.6,
      "at": {"clean": 80.0, "adv": 40.0, "ood": 70.0},
      "rift": {"clean": 82.5, "adv": 40.1, "ood": 71.0}, "timing_s": {"a": 5}}))
  cure_dir = tmp_path / "cure"
  (cure_dir / "eval").mkdir(parents=True)
  (cure_dir / "test_results.json").write_text(json.dumps(
      {"test_clean": 85.0, "test_adv": 50.0}))
  (cure_dir / "config.json").write_text(json.dumps({"method": "cure"}))
  (cure_dir / "eval" / "eval_results.json").write_text(json.dumps(
      {"clean": 85.0, "attacks": {"pgd": {"final": 48.0},
                                  "autoattack": {"final": 45.0}}}))
  rows = [report.collect(str(d)) for d in (rift, cure_dir)]
  text = report.method_table(rows)
  assert "| trades | 80.00 | 40.00 | 70.00 | 82.50 | 40.10 | 71.00 |" in text
  # CURE: Rob = the AutoAttack-style number, NRR = 2·85·45/130 = 58.85.
  assert "| cure | cure | 85.00 | 48.00 | 45.00 | 58.85 |" in text
  assert report.collect(str(tmp_path)) is None
