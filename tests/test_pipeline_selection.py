"""pipeline.run: the fine-tuning lr of a sweep is chosen on validation, and a
workdir that holds another model's or data set's run is refused.

The sweep rule (`run_target`): among the lrs of `rift.finetune.lr_sweep`, the
run whose chosen validation point (clean, adv) of its α curve is highest —
clean first, robust accuracy breaking ties, the first lr of the sweep on a
full tie. It reads each run's `finetune/<target>_lr<lr>/interpolation.json`,
so the test also rewrites those files (a resumed run re-reads them) to force
each branch of the rule.
"""
import json
import os

import ml_collections
import pytest

from rift_jax import data, training, workdir as wd
from rift_jax.experiments import pipeline
from rift_jax.errors import UserError
from tests.configs import tiny


def _config(**overrides):
  """The tiny config, smaller: θ_AT is a 2-epoch natural run (enough for the
  sweep's two runs to differ), attacked at ε = 0.03 on validation."""
  c = tiny.get_config()
  c.unlock()
  c.method = "natural"
  c.data.train_size, c.data.test_size = 256, 64
  c.eval.attack.epsilon, c.eval.attack.step_size = 0.03, 0.01
  c.rift.mrc.num_passes = 1
  c.rift.mrc.include = "conv3|linear"
  c.rift.finetune.optim.epochs = 1
  c.rift.test_attack.restarts = 1
  c.rift.test_attack.num_steps = 2
  c.rift.ood.enabled = False
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


@pytest.fixture(scope="module")
def at_dir(tmp_path_factory):
  """θ_AT, trained once for this module."""
  path = str(tmp_path_factory.mktemp("theta_at"))
  training.train_and_evaluate(_config(), path)
  return path


def _chosen(workdir, lr):
  return wd.read_json(os.path.join(workdir, "finetune",
                                   f"non_robust_critical_lr{lr:g}",
                                   "interpolation.json"))


def _set_chosen(workdir, lr, clean, adv):
  path = os.path.join(workdir, "finetune", f"non_robust_critical_lr{lr:g}",
                      "interpolation.json")
  info = wd.read_json(path)
  info["chosen"] = {**info["chosen"], "clean": clean, "adv": adv}
  wd.write_json(path, info)


def test_lr_sweep_picks_the_best_validation_run(at_dir, tmp_path):
  lrs = (0.001, 0.2)
  cfg = _config(**{"rift.at_checkpoint": at_dir, "rift.finetune.lr_sweep": lrs})
  work = str(tmp_path / "rift")
  res = pipeline.run(cfg, work)
  curves = {lr: _chosen(work, lr) for lr in lrs}
  key = lambda lr: (curves[lr]["chosen"]["clean"], curves[lr]["chosen"]["adv"])
  want = lrs[0] if key(lrs[0]) >= key(lrs[1]) else lrs[1]
  # (Here lr 0.2 wins on clean accuracy although lr 0.001 is more robust.)
  assert res["lr_sweep"] == list(lrs)
  assert res["lr"] == want and res["finetune"]["lr"] == want
  assert res["alpha"] == curves[want]["chosen"]["alpha"]
  assert res["interpolation"] == curves[want]["curve"]

  # Each branch of the rule, on the runs' own files (the resumed run only
  # re-selects and re-tests).
  for (c1, a1), (c2, a2), expect in [
      ((90.0, 10.0), (80.0, 99.0), 0.001),   # clean accuracy decides first
      ((80.0, 40.0), (80.0, 41.0), 0.2),     # then robust accuracy
      ((80.0, 40.0), (80.0, 40.0), 0.001)]:  # a full tie: the first lr
    _set_chosen(work, 0.001, c1, a1)
    _set_chosen(work, 0.2, c2, a2)
    os.remove(os.path.join(work, "results.json"))
    res = pipeline.run(cfg, work)
    assert res["lr"] == expect, ((c1, a1), (c2, a2))
    assert res["alpha"] == _chosen(work, expect)["chosen"]["alpha"]

  # The same workdir with another data config is refused before any work.
  before = open(os.path.join(work, "rift_config.json")).read()
  other = _config(**{"rift.at_checkpoint": at_dir, "rift.finetune.lr_sweep": lrs,
                     "data.split_seed": 1})
  with pytest.raises(UserError, match=r"holds a run with data.split_seed=0, "
                     r"not 1; use a new --workdir"):
    pipeline.run(other, work)
  assert open(os.path.join(work, "rift_config.json")).read() == before


class _Stop(Exception):
  """Raised by a stubbed data.load: the run got past the workdir guard."""


def test_workdir_guard(tmp_path, monkeypatch):
  """One UserError for another model or data config; the same config (also
  one with a tuple-valued model field, which JSON reads back as a list) and
  a changed RiFT setting pass the guard."""
  def stop(cfg):
    raise _Stop()
  monkeypatch.setattr(data, "load", stop)
  work = str(tmp_path / "w")
  base = _config()
  base.model = ml_collections.ConfigDict(
      {**base.model.to_dict(), "input_normalization": ((0.5,), (0.25,))})
  with pytest.raises(_Stop):
    pipeline.run(base, work)              # writes rift_config.json
  with pytest.raises(_Stop):
    pipeline.run(base, work)              # the same run resumes
  base.rift.alphas = (0.0, 1.0)
  with pytest.raises(_Stop):
    pipeline.run(base, work)              # RiFT settings may change
  for key, value in (("model.width", 8), ("data.val_size", 100),
                     ("data.split_seed", 3)):
    other = _config()
    other.model = ml_collections.ConfigDict(base.model.to_dict())
    node, leaf = key.split(".")
    other[node][leaf] = value
    with pytest.raises(UserError, match=rf"workdir='.*' holds a run with "
                       rf"{key}=.*, not {value}; use a new --workdir"):
      pipeline.run(other, work)
  # Another compute dtype is another run; so is a run folder written by a
  # version without the field (no compatibility shim in a 0.1 package).
  bf16 = _config()
  bf16.model = ml_collections.ConfigDict(
      {**base.model.to_dict(), "compute_dtype": "bfloat16"})
  with pytest.raises(UserError, match="model.compute_dtype='float32', not "
                     "'bfloat16'"):
    pipeline.run(bf16, work)
  cfg_path = os.path.join(work, "rift_config.json")
  old = json.load(open(cfg_path))
  del old["model"]["compute_dtype"]
  json.dump(old, open(cfg_path, "w"))
  with pytest.raises(UserError, match="model.compute_dtype=None, not 'float32'"):
    pipeline.run(base, work)
