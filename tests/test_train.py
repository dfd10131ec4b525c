"""Training: the step lowers the loss, kill-and-resume is exact, a non-finite
loss stops with the last good checkpoint intact."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rift_jax import attacks, models, training
from rift_jax.models import checkpoint
from rift_jax.training import objectives, schedules
from rift_jax.errors import NonFiniteLoss
from tests.configs import tiny


def _config(**over):
  c = tiny.get_config()
  c.unlock()
  for k, v in over.items():
    node = c
    *path, leaf = k.split(".")
    for p in path:
      node = node[p]
    node[leaf] = v
  return c.lock()


def test_train_step_lowers_the_loss_on_a_fixed_batch(tiny_cnn, synthetic):
  model, variables = tiny_cnn
  optim = training.Optim(lr=0.05, momentum=0.9, weight_decay=5e-4, epochs=1,
                         schedule="constant")
  tx = training.make_optimizer(optim, 10)
  ctx = objectives.Context(models.ModelFns(model),
                           attacks.PGDConfig(0.03, 0.01, 2, unroll=False))
  step = training.make_train_step(ctx, tx, objectives.pgd_at, synthetic.info,
                               augment=False)
  state = training.create_state(jax.tree_util.tree_map(jnp.copy, variables), tx,
                             jax.random.PRNGKey(0))
  x = jnp.asarray(synthetic.train.images[:64] / 255.0, jnp.float32)
  y = jnp.asarray(synthetic.train.labels[:64])
  losses = []
  for _ in range(15):
    state, m = step(state, x, y)
    losses.append(float(m["loss"]))
  assert losses[-1] < 0.7 * losses[0], losses
  assert int(state.step) == 15


def test_kill_and_resume_gives_the_same_parameters(tmp_path, synthetic):
  cfg = _config(**{"optim.epochs": 3})
  full = training.train_and_evaluate(cfg, str(tmp_path / "full"), dataset=synthetic)
  part = str(tmp_path / "part")
  training.train_and_evaluate(cfg, part, dataset=synthetic, stop_after_epoch=1)
  resumed = training.train_and_evaluate(cfg, part, dataset=synthetic)
  # The history covers every epoch, also the one before the kill, with the
  # uninterrupted run's validation numbers.
  assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
  assert [h["val_clean"] for h in resumed.history] == [
      h["val_clean"] for h in full.history]
  ckpt = lambda d: checkpoint.Checkpointer(os.path.join(d, "checkpoints", "latest"))
  target = jax.device_get(full.variables)
  a = ckpt(str(tmp_path / "full")).restore(
      training.create_state(target, training.make_optimizer(
          training.Optim.from_config(cfg.optim), 1),
                         jax.random.PRNGKey(0)))[0]
  b = ckpt(part).restore(a)[0]
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The metrics file has each epoch once.
  with open(os.path.join(part, "metrics.jsonl")) as f:
    assert [int(l.split('"epoch": ')[1].split(",")[0]) for l in f] == [1, 2, 3]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, synthetic):
  wd = str(tmp_path / "run")
  training.train_and_evaluate(_config(**{"optim.epochs": 2}), wd, dataset=synthetic,
                           stop_after_epoch=1)
  latest = os.path.join(wd, "checkpoints", "latest")
  before = sorted(os.listdir(latest))
  bad = _config(**{"optim.epochs": 2, "optim.lr": 1e30})
  with pytest.raises(NonFiniteLoss, match="last good checkpoint is kept"):
    training.train_and_evaluate(bad, wd, dataset=synthetic)
  assert sorted(os.listdir(latest)) == before
  meta = checkpoint.Checkpointer(latest).read_meta()
  assert meta["epoch"] == 1


def test_checkpoint_of_another_model_is_refused(tmp_path, synthetic):
  wd = str(tmp_path / "run")
  training.train_and_evaluate(_config(**{"optim.epochs": 1}), wd, dataset=synthetic)
  from rift_jax.errors import UserError
  with pytest.raises(UserError, match=r"another model: width=4 \(config asks 8\)"):
    training.train_and_evaluate(_config(**{"optim.epochs": 2, "model.width": 8}), wd,
                             dataset=synthetic)


def test_piecewise_schedule_matches_the_paper_recipe():
  optim = training.Optim(lr=0.1, epochs=110, schedule="piecewise",
                         lr_decay_epochs=(100, 105), lr_decay_factor=0.1)
  s = schedules.make_schedule(optim, steps_per_epoch=10)
  np.testing.assert_allclose([s(0), s(999), s(1000), s(1049), s(1050), s(1099)],
                             [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_optim_settings_are_read_once_with_one_line_errors():
  from rift_jax.errors import UserError
  block = {"lr": "0.05", "epochs": 3.0, "lr_decay_epochs": [2], "batch_size": 64}
  o = training.Optim.from_config(block)
  assert (o.lr, o.epochs, o.lr_decay_epochs, o.batch_size) == (0.05, 3, (2,), 64)
  assert o.momentum == training.Optim().momentum      # absent: the default
  for bad, needle in (({"lrr": 0.1}, "optim.lrr is not an optimiser setting"),
                      ({"lr": "fast"}, "optim.lr='fast' is not a float"),
                      ({"lr": 0.0}, "optim.lr=0.0"),
                      ({"schedule": "step"}, "optim.schedule='step'"),
                      ({"schedule": "slow_start_fast_decay",
                        "decay_shape": "exponential"}, "end_lr_factor=0.0")):
    with pytest.raises(UserError, match=needle) as e:
      training.Optim.from_config(bad)
    assert "\n" not in str(e.value)
  assert training.Optim.from_config({"lr": 0.0}, allow_zero_lr=True).lr == 0.0
