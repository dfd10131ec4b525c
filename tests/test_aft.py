"""A whole AFT run (`training.train_and_evaluate`, method 'aft'): it starts from
the natural run named by `init_from` (its best checkpoint), and trains and
records the 'slow_start_fast_decay' learning rate, checked against the
closed form of rift_jax/training/schedules.py:

  W = warmup_epochs·spe, T = epochs·spe, s = start_lr_factor, e = 0:
  lr(t) = lr·(s + (1 − s)·t/W)              t < W
  lr(t) = lr·(1 − (t − W)/(T − W))          W ≤ t ≤ T   (linear fall)

metrics.jsonl records the lr of each epoch's last step, t = epoch·spe − 1.
"""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import common
from rift_jax import data, models, training
from rift_jax.training import loop as training_loop
from rift_jax.training import schedules

SPE = 4          # 128 training images / batch 32


def _config(method, init_from="", **optim):
  c = common.base_config()
  c.init_from = init_from
  c.data.name, c.data.val_size, c.data.train_size = "synthetic", 64, 128
  c.model.name, c.model.width = "small_cnn", 4
  c.method = method
  c.optim.lr, c.optim.batch_size, c.optim.epochs = 0.05, 32, 1
  # Rolled attack loops: they compile faster than the CPU default (unrolled).
  rolled = lambda **kw: ml_collections.ConfigDict(
      {**common.pgd(0.1, 0.05, 2, **kw).to_dict(), "unroll": False})
  c.attack = rolled(bn_mode="train", bn_passes="authors")
  c.eval.batch_size, c.eval.attack = 64, rolled()
  c.optim.update(optim)
  return c


def test_aft_starts_from_the_natural_run_with_slow_start_fast_decay(
    tmp_path, monkeypatch):
  nat_dir = str(tmp_path / "natural")
  natural = training.train_and_evaluate(_config("natural"), nat_dir)

  seen = {}
  real_create, real_opt = training.create_state, training.make_optimizer

  def create_state(variables, tx, rng, extra=None):
    seen["init"] = jax.device_get(variables)
    return real_create(variables, tx, rng, extra)

  def make_optimizer(optim, steps_per_epoch, mask=None):
    seen["optim"] = (optim, steps_per_epoch)
    return real_opt(optim, steps_per_epoch, mask)

  monkeypatch.setattr(training_loop, "create_state", create_state)
  monkeypatch.setattr(training_loop, "make_optimizer", make_optimizer)
  cfg = _config("aft", epochs=3, schedule="slow_start_fast_decay",
                warmup_epochs=1.5, start_lr_factor=0.1, decay_shape="linear",
                end_lr_factor=0.0, init_from=nat_dir)
  aft_dir = str(tmp_path / "aft")
  training.train_and_evaluate(cfg, aft_dir)

  # The initial variables are the natural run's best checkpoint ...
  got = jax.tree_util.tree_leaves_with_path(seen["init"])
  want = jax.tree_util.tree_leaves(jax.device_get(natural.variables))
  assert len(got) == len(want)
  for (path, a), b in zip(got, want):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
  # ... and not the random init the run would have used otherwise.
  info = data.INFO["synthetic"]
  k_init = jax.random.split(jax.random.PRNGKey(int(cfg.seed)), 3)[0]
  fresh = models.init_variables(models.build_model(cfg, info), k_init,
                                info.image_shape)
  assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
      jax.tree_util.tree_leaves(fresh["params"]),
      jax.tree_util.tree_leaves(seen["init"]["params"])))

  # The schedule: 0.1·lr rising over 1.5 epochs (W = 6 steps), then falling
  # linearly to 0 at T = 12: end of epoch 1 (t = 3) 0.05·(0.1 + 0.9·3/6),
  # epoch 2 (t = 7) 0.05·(1 − 1/6), epoch 3 (t = 11) 0.05·(1 − 5/6).
  want_lr = [0.05 * 0.55, 0.05 * 5 / 6, 0.05 / 6]
  with open(os.path.join(aft_dir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["epoch"] for r in records] == [1, 2, 3]
  assert [r["lr"] for r in records] == pytest.approx(want_lr, rel=1e-5)
  # The optimiser was built on the same schedule: slow start, fast decay.
  optim, spe = seen["optim"]
  assert spe == SPE
  lr = schedules.make_schedule(optim, spe)
  assert [float(lr(t)) for t in (0, 3, 6, 7, 11)] == pytest.approx(
      [0.005, 0.0275, 0.05, 0.05 * 5 / 6, 0.05 / 6], rel=1e-5)
