"""How stable is the MRC ranking? The study's check on a run's θ_AT.

Every module is scored again with ONE thing of the run's MRC setting (the
reference, `rift.mrc`) changed, and the rankings are compared by Spearman's
ρ over the modules and by their five lowest-MRC modules:
  (a) 'batch500': batches of 500, 2 ascent steps a pass (what the configs
      used before they took the official 200 steps a module);
  (b) 'per_step': projection after every ascent step (the paper's
      Algorithm 1) instead of once per pass (the official code);
  (c) 'disjoint_set': a second fixed set of the same size from the
      validation images after the first, crafted the same way.
A ranking that moves with these is a finding about MRC itself, not noise of
one implementation. Writes `mrc_stability.json` in the run's workdir (each
setting cached in `mrc_stability/<name>.json`: resumable).
"""
from __future__ import annotations

import os

import jax
import numpy as np

from rift_jax import attacks, data, models, sharding, workdir as wd
from rift_jax.experiments import pipeline
from rift_jax.rift import criticality
from rift_jax.errors import UserError

SETTINGS = {
    "batch500": "batches of 500 (2 ascent steps a pass) vs the reference",
    "per_step": "per-step projection (paper Algorithm 1) vs per-pass",
    "disjoint_set": "a disjoint fixed set of the same size vs the first",
}


def spearman(a: dict[str, float], b: dict[str, float]) -> float:
  """Spearman's rank correlation of two {module: score} maps (same keys)."""
  from scipy import stats as scipy_stats
  names = sorted(a)
  return float(scipy_stats.spearmanr([a[n] for n in names],
                                     [b[n] for n in names]).statistic)


def lowest(scores: dict[str, float], k: int = 5) -> list[str]:
  return sorted(scores, key=lambda n: scores[n])[:k]


def compare(reference: dict[str, float], others: dict[str, dict[str, float]]
            ) -> dict:
  """{'comparisons': {name: {'label', 'spearman', 'lowest5_*'}}}."""
  return {"comparisons": {
      name: {"label": SETTINGS.get(name, name),
             "spearman": spearman(reference, scores),
             "lowest5_reference": lowest(reference),
             "lowest5_other": lowest(scores),
             "mrc": scores}
      for name, scores in others.items()}}


def run(config, workdir: str) -> dict:
  """Scores the three settings on `workdir`'s θ_AT and fixed set (a
  finished `pipeline.run`), compares them with its mrc.json."""
  path = os.path.join(workdir, "mrc_stability.json")
  if os.path.exists(path):
    return wd.read_json(path)
  ref_path = os.path.join(workdir, "mrc.json")
  if not os.path.exists(ref_path):
    raise UserError(f"{ref_path} is missing: run the pipeline in {workdir!r} first")
  reference = {k: v["mrc"] for k, v in wd.read_json(ref_path).items()}
  dataset = data.load(config.data)
  model, theta_at, _ = pipeline.stage_theta_at(config, workdir, dataset,
                                               wd.Timer(workdir))
  fns = models.ModelFns(model)
  mesh = sharding.make_mesh()
  with np.load(os.path.join(workdir, "fixed_set.npz")) as f:
    x, y = f["x"], f["y"]
  n = len(y)
  if len(dataset.val) < 2 * n:
    raise UserError(f"the disjoint fixed set needs data.val_size ≥ 2 × "
                    f"rift.mrc.num_examples = {2 * n}")
  base = pipeline.mrc_settings(config, theta_at)
  out_dir = os.path.join(workdir, "mrc_stability")
  os.makedirs(out_dir, exist_ok=True)
  scores = {}
  for name in SETTINGS:
    cache = os.path.join(out_dir, f"{name}.json")
    if os.path.exists(cache):
      scores[name] = wd.read_json(cache)
      continue
    kw, xs, ys = dict(base), x, y
    if name == "batch500":
      kw["batch_size"] = min(500, n)
    elif name == "per_step":
      kw["projection"] = "per_step"
    else:
      attack = attacks.PGDConfig.from_config(config.rift.mrc.attack,
                                             "rift.mrc.attack")
      xs, ys = criticality.fixed_adversarial_set(
          fns, theta_at, dataset.val.take(np.arange(n, 2 * n)), attack,
          jax.random.PRNGKey(int(config.seed) + 12), int(config.eval.batch_size),
          mesh, progress=True)
    print(f"MRC stability: {SETTINGS[name]}")
    res = criticality.mrc(fns, theta_at, xs, ys, **kw, mesh=mesh, progress=True)
    scores[name] = {k: v.mrc for k, v in res.items()}
    wd.write_json(cache, scores[name])
  r = config.rift.mrc
  out = {"reference": f"batch {int(r.batch_size)}, {int(r.num_passes)} passes, "
                      f"{r.projection} projection, {n} fixed examples",
         "reference_mrc": reference, **compare(reference, scores)}
  wd.write_json(path, out)
  return out
