"""Subprocess side of the sharding and multi-process tests (not a test file).

JAX fixes its device count and distributed runtime when it starts, so these
checks run in fresh interpreters that pytest launches:

  python tests/_mp_worker.py devices OUT.json
      (with XLA_FLAGS=--xla_force_host_platform_device_count=2) runs a PGD-AT
      train step, a PGD attack and MRC on a 1-device and a 2-device mesh and
      writes the largest differences and the shardings seen.
  python tests/_mp_worker.py process OUT_DIR --coordinator_address=127.0.0.1:P
      --num_processes=N --process_id=I
      a whole tiny `train_and_evaluate` (4 PGD-AT steps on global batches fed as
      per-process rows) into OUT_DIR/workdir; process i writes its rows, the
      history and the best variables to OUT_DIR/result[_i].{json,npz}. N=1
      without a coordinator is the reference.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GLOBAL_BATCH = 8


def tiny_config(**overrides):
  """A model and data small enough for a CPU test: synthetic 16x16 images,
  a width-4 CNN, PGD-2, batch 8."""
  from configs import common
  c = common.base_config()
  c.data.name = "synthetic"
  c.data.val_size = 40     # not a multiple of the eval batch: a padded batch
  c.data.train_size = 32
  c.model.name = "small_cnn"
  c.model.width = 4
  c.optim.batch_size = GLOBAL_BATCH
  c.optim.epochs = 2
  c.optim.lr = 0.05
  c.optim.lr_decay_epochs = ()
  c.attack = common.pgd(0.1, 0.05, 2, bn_mode="train")
  c.eval.batch_size = 16
  c.eval.attack = common.pgd(0.1, 0.05, 2)
  c.log_every = 1
  for k, v in overrides.items():
    node = c
    *path, leaf = k.split(".")
    for p in path:
      node = node[p]
    node[leaf] = v
  return c


def _setup(config, mesh):
  """Model, state (replicated on `mesh`) and a jitted PGD-AT step."""
  import jax
  from rift_jax import data, models, sharding, training
  from rift_jax.training import methods
  info = data.INFO[config.data.name]
  model = models.build_model(config, info)
  fns = models.ModelFns(model)
  ctx = methods.context(config, fns)
  tx = training.make_optimizer(training.Optim.from_config(config.optim), 10)
  variables = models.init_variables(model, jax.random.PRNGKey(0), info.image_shape)
  state = training.create_state(variables, tx, jax.random.PRNGKey(1))
  step = training.make_train_step(ctx, tx, methods.get(config.method), info)
  return fns, sharding.replicate(state, mesh), step


def _global_batch(seed=0):
  from rift_jax import data
  split = data.synthetic_splits(num_train=64, num_test=8, seed=seed)["train"]
  return next(data.train_batches(split, GLOBAL_BATCH, seed, 1))


def _max_diff(a, b) -> float:
  import jax
  import numpy as np
  diffs = jax.tree_util.tree_map(
      lambda u, v: float(np.max(np.abs(np.asarray(u) - np.asarray(v)))), a, b)
  return max(jax.tree_util.tree_leaves(diffs))


def devices_check(out_path: str) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from rift_jax import attacks, evaluation, sharding
  assert jax.device_count() == 2, jax.devices()
  config = tiny_config()
  x, y = _global_batch()
  report = {}
  results = {}
  seen = {}
  for n in (1, 2):
    mesh = sharding.make_mesh(jax.devices()[:n])
    fns, state, step = _setup(config, mesh)
    xs, ys = sharding.shard_batch(mesh, x, y)
    metrics = []
    for _ in range(2):
      state, m = step(state, xs, ys)
      metrics.append(jax.device_get(m))

    # A PGD attack in eval mode; record the sharding XLA gives the input of
    # the model inside the compiled function.
    def attack(v, xa, ya, k):
      jax.debug.inspect_array_sharding(
          xa, callback=lambda s: seen.setdefault(f"inside_{n}", str(s.spec)))
      cfg = attacks.PGDConfig(epsilon=0.1, step_size=0.05, num_steps=3)
      return attacks.pgd(lambda z: fns.logits(v, z), xa, ya, k, cfg)
    x_adv = jax.jit(attack)(state.variables, xs, ys, jax.random.PRNGKey(3))
    seen[f"x_adv_{n}"] = str(x_adv.sharding.spec)
    seen[f"x_adv_sharded_{n}"] = x_adv.sharding.is_equivalent_to(
        sharding.batch_sharding(mesh), x_adv.ndim)
    seen[f"params_replicated_{n}"] = all(
        l.sharding.is_fully_replicated
        for l in jax.tree_util.tree_leaves(state.params))
    seen[f"param_devices_{n}"] = len(
        jax.tree_util.tree_leaves(state.params)[0].sharding.device_set)

    # Evaluator: 40 images in batches of 16 (the last one padded).
    from rift_jax import data
    val = data.synthetic_splits(num_train=40, num_test=8, seed=5)["train"]
    ev = evaluation.Evaluator(fns, evaluation.pgd_attack_fn(
        attacks.PGDConfig(epsilon=0.1, step_size=0.05, num_steps=2)), 16, mesh)
    accs = ev(state.variables, val, jax.random.PRNGKey(4))
    # The standard AutoAttack at tiny budgets: per-example flags and
    # attribution (which attack, run, target and perturbation size).
    from rift_jax.evaluation import autoattack
    aa = autoattack.run_suite(
        fns, state.variables, val,
        autoattack.autoattack_suite("standard", 0.1, num_steps=3,
                                    num_target_classes=2, square_queries=20),
        16, jax.random.PRNGKey(6), mesh=mesh, progress=False)
    aa_out = {k: np.asarray(v, np.float64) for k, v in aa["per_example"].items()}
    # FAB's step on a batch-sharded input needs no cross-device traffic (its
    # two projections per example once went through a batch concatenation
    # that GSPMD answered with all-to-alls every step).
    from rift_jax.attacks import fab
    fab_cfg = fab.FABConfig(epsilon=0.1, num_steps=2, targeted=True)
    logits_of = lambda v: (lambda z: fns.logits(v, z, train=False))
    def fab_two_steps(v, xa, ya):
      st = fab.fab_init(logits_of(v), xa, ya, jax.random.PRNGKey(0), fab_cfg)
      return fab.fab_steps(logits_of(v), xa, ya, st, fab_cfg,
                           y_target=(ya + 1) % 10, count=2)
    hlo = jax.jit(fab_two_steps).lower(state.variables, xs, ys).compile().as_text()
    seen[f"fab_collectives_{n}"] = sum(
        hlo.count(f" {op}(") for op in ("all-to-all", "all-gather",
                                        "collective-permute", "all-reduce"))
    aa_out.update({f"who/{k}": np.nan_to_num(np.asarray(v, np.float64), nan=-1.0)
                   for k, v in aa["attribution"].items()})
    results[n] = dict(params=jax.device_get(state.params),
                      batch_stats=jax.device_get(state.batch_stats),
                      metrics=metrics, x_adv=np.asarray(x_adv),
                      mrc=_mrc(fns, state.variables, np.asarray(x_adv), y, mesh),
                      eval=[accs["clean"], accs["adv"]], autoattack=aa_out)
  a, b = results[1], results[2]
  report["train_params"] = _max_diff(a["params"], b["params"])
  report["train_batch_stats"] = _max_diff(a["batch_stats"], b["batch_stats"])
  report["train_metrics"] = _max_diff(a["metrics"], b["metrics"])
  report["pgd"] = _max_diff(a["x_adv"], b["x_adv"])
  report["mrc"] = _max_diff(a["mrc"], b["mrc"])
  report["eval"] = _max_diff(a["eval"], b["eval"])
  report["autoattack"] = _max_diff(a["autoattack"], b["autoattack"])
  report["autoattack_broken"] = int(np.sum(a["autoattack"]["clean"])
                                    - np.sum(a["autoattack"]["square"]))
  report["seen"] = seen
  from rift_jax import training
  from rift_jax.errors import UserError
  try:
    training.train_and_evaluate(tiny_config(**{"optim.batch_size": 7}),
                             os.path.join(os.path.dirname(out_path), "bad"))
    report["indivisible_error"] = None
  except UserError as e:
    report["indivisible_error"] = str(e)
  with open(out_path, "w") as f:
    json.dump(report, f, indent=1, default=str)


def _mrc(fns, variables, x_adv, y, mesh):
  """MRC of two modules (projected weight-gradient ascent on a fixed set)."""
  from rift_jax.rift import criticality
  out = criticality.mrc(
      fns, variables, x_adv, y, modules=["conv2", "linear"], num_passes=2, batch_size=GLOBAL_BATCH,
      mesh=mesh)
  return {k: [r.mrc, r.adv_acc_drop, r.relative_norm, *r.loss_per_pass]
          for k, r in out.items()}


def _flat(tree) -> dict:
  import numpy as np
  import jax
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def process_check(out_dir: str) -> None:
  """A whole tiny `train_and_evaluate` (2 epochs of 2 steps on global batches
  of 8) under absl flags from launch.common, distributed init included."""
  import jax
  import numpy as np
  from launch import common
  from rift_jax import sharding, training
  common.maybe_initialize_distributed()
  rows = sharding.process_rows(sharding.make_mesh(), GLOBAL_BATCH)
  config = tiny_config(**{"data.train_size": 2 * GLOBAL_BATCH})
  result = training.train_and_evaluate(config, os.path.join(out_dir, "workdir"))
  mesh = sharding.make_mesh()
  gathered = sharding.to_host(sharding.shard_batch(
      mesh, np.arange(GLOBAL_BATCH, dtype=np.int32)[rows]))
  name = "result" if jax.process_index() == 0 else f"result_{jax.process_index()}"
  np.savez(os.path.join(out_dir, name + ".npz"), **_flat(result.variables))
  with open(os.path.join(out_dir, name + ".json"), "w") as f:
    json.dump({"rows": [rows.start, rows.stop], "gathered": gathered.tolist(),
               "process_count": jax.process_count(),
               "device_count": jax.device_count(),
               "history": result.history, "best_epoch": result.best_epoch},
              f, default=str)


if __name__ == "__main__":
  mode, out = sys.argv[1], sys.argv[2]
  if mode == "devices":
    devices_check(out)
  else:
    from launch import common
    common.define_config_flags(default=None)
    sys.argv = sys.argv[:1] + sys.argv[3:]  # the rest are absl flags
    common.run(lambda: process_check(out))
