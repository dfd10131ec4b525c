"""Data parallelism over the 'data' mesh: same numbers on 1 and 2 devices,
shardings as intended, one compilation per function, clear batch-size errors.

The 2-device checks run in a subprocess (`_mp_worker.py devices`) because the
device count is fixed when JAX starts.
"""
import contextlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests._mp_worker import tiny_config
from tests.conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO_DEVICES = subprocess_env(devices=2)
TOL = 1e-5


def _run(args, env, timeout=900):
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_device_report(tmp_path_factory):
  out = tmp_path_factory.mktemp("devices") / "report.json"
  proc = _run(["tests/_mp_worker.py", "devices", str(out)], TWO_DEVICES)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text())


@pytest.mark.parametrize("what", ["train_params", "train_batch_stats",
                                  "train_metrics", "pgd", "mrc", "eval"])
def test_two_devices_match_one(two_device_report, what):
  # Two PGD-AT steps (BN statistics reduced across devices), a PGD attack,
  # MRC and the padded-batch evaluator, on a 1- and a 2-device mesh.
  assert two_device_report[what] <= TOL, (what, two_device_report[what])


def test_autoattack_on_two_devices_gives_the_same_bits(two_device_report):
  # Per-example work reduces nothing across the batch, so sharding it must
  # not move a single bit: robust flags after each attack, the attack / run /
  # target that broke each example and its perturbation size are equal
  # (what multi-GPU / TPU evaluation and evaluate.cpu_devices rely on).
  assert two_device_report["autoattack"] == 0.0
  assert two_device_report["autoattack_broken"] > 0   # the attacks had work
  # ... and FAB's step on a sharded batch moves no rows between devices.
  assert two_device_report["seen"]["fab_collectives_2"] == 0


def test_batches_are_sharded_and_params_replicated(two_device_report):
  seen = two_device_report["seen"]
  assert seen["inside_2"] == "P('data',)"  # the model sees a split batch
  assert seen["x_adv_2"] == "P('data',)" and seen["x_adv_sharded_2"]
  assert seen["params_replicated_2"] and seen["param_devices_2"] == 2
  assert seen["param_devices_1"] == 1


def test_indivisible_batch_is_rejected(two_device_report):
  msg = two_device_report["indivisible_error"]
  assert msg == ("optim.batch_size=7 is not divisible by the 2 devices; "
                 "use a multiple of 2")


def test_launch_train_exits_2_on_indivisible_batch(tmp_path):
  proc = _run(["-m", "launch.train", "--config=configs/quickstart.py",
               f"--workdir={tmp_path}", "--config.data.name=synthetic",
               "--config.data.val_size=40", "--config.data.train_size=32",
               "--config.optim.batch_size=7"], TWO_DEVICES)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last == ("error: optim.batch_size=7 is not divisible by the 2 devices; "
                  "use a multiple of 2")


# ------------------------------------------------------- compilations
@contextlib.contextmanager
def count_compiles():
  """Counts XLA backend compilations while the block runs."""
  counter = [0]

  def listener(event, duration, **kw):
    del duration, kw
    if event == "/jax/core/compile/backend_compile_duration":
      counter[0] += 1
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield counter
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_no_recompilation_across_epochs(tmp_path, monkeypatch):
  from rift_jax import training, workdir
  from rift_jax.training import loop    # where train_and_evaluate looks it up
  steps, at_epoch_end = [], {}
  make_step = loop.make_train_step
  monkeypatch.setattr(loop, "make_train_step",
                      lambda *a, **k: steps.append(make_step(*a, **k)) or steps[-1])
  append = workdir.append_jsonl
  with count_compiles() as n:
    def record(path, rec):
      at_epoch_end[rec["epoch"]] = n[0]
      return append(path, rec)
    monkeypatch.setattr(workdir, "append_jsonl", record)
    training.train_and_evaluate(tiny_config(**{"optim.epochs": 3, "data.train_size": 16}),
                             str(tmp_path))
  # Epoch 3 (training, the padded validation batches) and epoch 2's
  # checkpoints compile nothing: everything was compiled in epoch 1.
  assert at_epoch_end[1] > 0
  assert at_epoch_end[3] == at_epoch_end[2], at_epoch_end
  assert len(steps) == 1 and steps[0]._cache_size() == 1


def test_evaluator_compiles_once_with_padded_batches():
  from rift_jax import attacks, data, evaluation, models
  model = models.create_model("small_cnn", num_classes=4, width=4)
  fns = models.ModelFns(model)
  variables = models.init_variables(model, jax.random.PRNGKey(0), (16, 16, 1))
  ev = evaluation.Evaluator(fns, evaluation.pgd_attack_fn(attacks.PGDConfig(
      epsilon=0.1, step_size=0.05, num_steps=2)), 16)
  splits = data.synthetic_splits(num_train=40, num_test=50, seed=1)
  with count_compiles() as n:
    first = ev(variables, splits["train"], jax.random.PRNGKey(1))  # 16+16+8(pad)
    after_first = n[0]
    ev(variables, splits["test"], jax.random.PRNGKey(2))           # 16*3+2(pad)
    again = ev(variables, splits["train"], jax.random.PRNGKey(1))
  assert after_first > 0 and n[0] == after_first
  assert ev._step._cache_size() == 1
  assert (first["clean"], first["adv"], first["n"]) == (again["clean"],
                                                        again["adv"], 40)
  np.testing.assert_array_equal(first["per_example"]["adv"],
                                again["per_example"]["adv"])


def test_process_rows_single_process():
  from rift_jax import data, sharding
  mesh = sharding.make_mesh()
  assert sharding.process_rows(mesh, 8) == slice(0, 8)
  split = data.synthetic_splits(num_train=20, num_test=4)["train"]
  full = list(data.train_batches(split, 8, 0, 1))
  part = list(data.train_batches(split, 8, 0, 1, slice(4, 8)))
  for (xf, yf), (xp, yp) in zip(full, part):
    np.testing.assert_array_equal(xf[4:], xp)
    np.testing.assert_array_equal(yf[4:], yp)
  (_, _, m_full), = list(data.eval_batches(split.take(np.arange(6)), 8))
  (_, _, m_part), = list(data.eval_batches(split.take(np.arange(6)), 8, slice(4, 8)))
  np.testing.assert_array_equal(m_full[4:], m_part)


def test_use_cpu_devices_refuses_bad_counts_and_a_late_call():
  import jax.numpy as jnp
  from rift_jax import sharding
  from rift_jax.errors import UserError
  for bad in (0, -1, 1.5, True, "2"):
    with pytest.raises(UserError, match="must be an integer >= 1"):
      sharding.use_cpu_devices(bad, "evaluate.cpu_devices")
  sharding.use_cpu_devices(1)          # one device: nothing to change
  jnp.zeros(1).block_until_ready()     # the CPU backend now exists
  with pytest.raises(UserError, match="before JAX runs any computation"):
    sharding.use_cpu_devices(2, "evaluate.cpu_devices")
