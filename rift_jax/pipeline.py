"""The RiFT pipeline, stage by stage, resumable (what `launch/rift.py` runs).

    θ_AT ─► fixed adversarial set ─► MRC per module ─► fine-tune the lowest-MRC
    module ─► interpolate θ(α), choose α on validation ─► test: θ_AT vs θ*

Every stage writes its output into the workdir and is skipped when that
output already exists, so a crashed run started again resumes where it
stopped. Model selection (best AT epoch, best fine-tuning epoch, α, the
fine-tuning lr of a sweep) uses the validation split only; the test split is
touched once, at the end, for the reported numbers.

Workdir layout:
  at/                     base training run (when the config trains θ_AT)
  fixed_set.npz           the fixed adversarial examples for MRC
  mrc.json                MRC, robust-accuracy drop, ‖Δw‖/‖w‖ per module
  finetune/<run>/         θ_FT (Orbax) and finetune.json, per target / lr
  interpolation.json      validation curve per run + chosen α
  results.json            test numbers, everything above summarised
  report.md, mrc.png, interpolation.png
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from rift_jax import (attacks, checkpoint, data, evaluate, finetune, interpolate,
                      models, mrc, sharding, train)
from rift_jax.errors import UserError, check_choice, check_range

OOD_SOURCES = ("generated", "cifar10_c", "cifar100_c", "tiny_imagenet_c")
TARGETS = ("non_robust_critical", "robust_critical", "all", "last", "topk",
           "modules")


def _path(workdir, *parts):
  return os.path.join(workdir, *parts)


def _read_json(path):
  with open(path) as f:
    return json.load(f)


class Timer:
  """Seconds per stage, persisted in timing.json so resumed runs add up."""

  def __init__(self, workdir):
    self.path = _path(workdir, "timing.json")
    self.t = _read_json(self.path) if os.path.exists(self.path) else {}

  def record(self, stage, seconds):
    self.t[stage] = round(self.t.get(stage, 0.0) + seconds, 2)
    train.write_json(self.path, self.t)


def validate_rift_config(config) -> None:
  r = config.rift
  check_range("rift.tolerance", float(r.tolerance), 0.0)
  interpolate.check_alphas(r.alphas)
  if 0.0 not in [float(a) for a in r.alphas]:
    raise UserError("rift.alphas must contain 0.0 (θ_AT is the robustness reference)")
  check_choice("rift.finetune.target", r.finetune.target, TARGETS)
  for a in r.ablations:
    check_choice("rift.ablations entry", a, TARGETS[:-1])
  if r.ood.enabled:
    from rift_jax import corruptions
    corruptions.resolve_names(r.ood.corruptions)
    check_choice("rift.ood.source", r.ood.source, OOD_SOURCES)
  check_range("rift.mrc.num_examples", int(r.mrc.num_examples), 1)
  if int(r.mrc.num_examples) > int(config.data.val_size):
    raise UserError(f"rift.mrc.num_examples={r.mrc.num_examples} exceeds "
                    f"data.val_size={config.data.val_size}")


def _check_modules_early(config) -> None:
  """Module names and filters are checked on the abstract model (no compute),
  so a typo fails in a second, not after training θ_AT."""
  check_choice("data.name", config.data.name, data.DATASET_NAMES)
  info = data.INFO[config.data.name]
  model = train.build_model(config, info)
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jax.numpy.zeros((1, *info.image_shape)), train=False))
  params = abstract["params"]
  r = config.rift
  models.resolve_modules(params, r.mrc.include or None, r.mrc.exclude or None)
  if r.finetune.target == "modules":
    if not r.finetune.modules:
      raise UserError("rift.finetune.target='modules' needs rift.finetune.modules")
    models.resolve_modules(params, list(r.finetune.modules))


def _has_checkpoint(directory: str) -> bool:
  ckpt = checkpoint.Checkpointer(directory)
  try:
    return ckpt.latest_step() is not None
  finally:
    ckpt.close()  # do not leave an Orbax manager (and its threads) open


# ----------------------------------------------------------------- stages
def stage_theta_at(config, workdir, dataset, timer):
  """θ_AT: loaded from rift.at_checkpoint, or trained into workdir/at."""
  info = dataset.info
  model = train.build_model(config, info)
  expect = train.model_meta(config, info)
  target = models.init_variables(model, jax.random.PRNGKey(0), info.image_shape)
  src = config.rift.at_checkpoint
  if src:
    src = os.path.expanduser(src)
    for cand in (src, _path(src, "checkpoints", "best")):
      if os.path.isdir(cand) and _has_checkpoint(cand):
        variables, meta = checkpoint.load_variables(cand, target, expect)
        return model, variables, cand
    raise UserError(f"rift.at_checkpoint={src!r} holds no checkpoint (give a "
                    "variables folder or a launch/train workdir)")
  t0 = time.time()
  at_dir = _path(workdir, "at")
  best_dir = _path(at_dir, "checkpoints", "best")
  done = _path(at_dir, "done.json")
  if not os.path.exists(done):
    result = train.train_and_evaluate(config, at_dir, dataset=dataset)
    train.write_json(done, {"best_epoch": result.best_epoch,
                            "history": result.history})
    timer.record("train_at", time.time() - t0)
  variables, _ = checkpoint.load_variables(best_dir, target, expect)
  return model, variables, best_dir


def stage_fixed_set(config, workdir, apply_fn, theta_at, dataset, mesh, timer):
  path = _path(workdir, "fixed_set.npz")
  if os.path.exists(path):
    with np.load(path) as f:
      return f["x"], f["y"]
  t0 = time.time()
  r = config.rift.mrc
  n = int(r.num_examples)
  split = dataset.val.take(np.arange(n))
  attack = attacks.PGDConfig.from_config(r.attack, "rift.mrc.attack")
  x, y = mrc.fixed_adversarial_set(apply_fn, theta_at, split, attack,
                                   jax.random.PRNGKey(int(config.seed) + 11),
                                   int(config.eval.batch_size), mesh, progress=True)
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, x=x, y=y)
  os.replace(tmp, path)
  timer.record("fixed_set", time.time() - t0)
  return x, y


def stage_mrc(config, workdir, apply_fn, theta_at, x, y, mesh, timer):
  path = _path(workdir, "mrc.json")
  if os.path.exists(path):
    return {k: mrc.MRCResult(**{**v, "loss_per_pass": tuple(v["loss_per_pass"])})
            for k, v in _read_json(path).items()}
  t0 = time.time()
  r = config.rift.mrc
  modules = models.resolve_modules(theta_at["params"], r.include or None,
                                   r.exclude or None)
  res = mrc.module_robust_criticality(
      apply_fn, theta_at, x, y, modules=modules, epsilon=float(r.epsilon),
      learning_rate=float(r.learning_rate), num_passes=int(r.num_passes),
      batch_size=int(r.batch_size), projection=r.projection, mode=r.mode,
      vmap_chunk=int(r.vmap_chunk), mesh=mesh, progress=True)
  train.write_json(path, {k: v.to_dict() for k, v in res.items()})
  timer.record("mrc", time.time() - t0)
  return res


def target_modules(target: str, scores: dict, all_modules: list[str], k: int,
                   explicit) -> list[str]:
  """Which modules a fine-tuning target means (paper Table 3 ablations)."""
  if target == "non_robust_critical":
    return mrc.least_critical(scores, 1)
  if target == "topk":
    return mrc.least_critical(scores, k)
  if target == "robust_critical":
    return mrc.most_critical(scores, 1)
  if target == "all":
    return list(all_modules)
  if target == "last":
    return [all_modules[-1]]
  return list(explicit)


def stage_finetune_and_interpolate(config, workdir, run_name, fns, theta_at,
                                   modules, dataset, mesh, timer, optim=None):
  """Fine-tunes `modules`, then the validation α-curve; cached per run."""
  run_dir = _path(workdir, "finetune", run_name)
  ft_json, curve_json = _path(run_dir, "finetune.json"), _path(run_dir, "interpolation.json")
  ft_vars_dir = _path(run_dir, "theta_ft")
  r = config.rift
  optim = optim or r.finetune.optim
  if os.path.exists(ft_json):
    theta_ft, _ = checkpoint.load_variables(ft_vars_dir, theta_at)
    ft_info = _read_json(ft_json)
  else:
    t0 = time.time()
    res = finetune.finetune(fns, theta_at, dataset, modules, optim,
                            update_batch_stats=bool(r.finetune.update_batch_stats),
                            augment=bool(config.augment), seed=int(config.seed),
                            eval_batch_size=int(config.eval.batch_size), mesh=mesh)
    theta_ft = res.variables
    checkpoint.save_variables(ft_vars_dir, theta_ft, {"modules": res.modules,
                                                      "lr": float(optim.lr)})
    ft_info = {"modules": res.modules, "best_epoch": res.best_epoch,
               "best_val_clean": res.best_val_clean, "lr": float(optim.lr),
               "history": res.history}
    train.write_json(ft_json, ft_info)
    timer.record("finetune", time.time() - t0)
  if os.path.exists(curve_json):
    curve_info = _read_json(curve_json)
  else:
    t0 = time.time()
    attack = attacks.PGDConfig.from_config(config.eval.attack, "eval.attack")
    curve = interpolate.evaluate_alphas(
        fns, theta_at, theta_ft, r.alphas, dataset.val,
        evaluate.pgd_attack_fn(attack), jax.random.PRNGKey(int(config.seed) + 21),
        int(config.eval.batch_size), chunk=int(r.alpha_chunk), mesh=mesh)
    chosen = interpolate.select_alpha(curve, float(r.tolerance))
    curve_info = {"curve": curve, "chosen": chosen, "tolerance": float(r.tolerance)}
    train.write_json(curve_json, curve_info)
    timer.record("interpolate", time.time() - t0)
  return theta_ft, ft_info, curve_info


def _ood_sets(config, workdir, dataset):
  from rift_jax import corruptions
  o = config.rift.ood
  if not o.enabled:
    return None
  names = corruptions.resolve_names(o.corruptions)
  source = o.get("source", "generated")
  root = os.path.expanduser(o.get("root", "") or config.data.data_dir)
  if source == "cifar10_c":
    return corruptions.load_cifar10_c(root, names, tuple(o.severities))
  if source == "cifar100_c":
    return corruptions.load_cifar100_c(root, names, tuple(o.severities))
  if source == "tiny_imagenet_c":
    return corruptions.load_tiny_imagenet_c(root, names, tuple(o.severities))
  cache = os.path.expanduser(o.cache_dir) if o.cache_dir else _path(workdir, "ood_cache")
  return corruptions.generate(
      dataset.test, names, tuple(o.severities), max_images=int(o.max_images) or None,
      per_corruption_max=dict(o.per_corruption_max), seed=int(config.seed),
      cache_dir=cache, progress=True)


def test_metrics(config, fns, variables, dataset, ood_sets, mesh, tag) -> dict:
  """Test clean, PGD (restarts, per-example worst) and OOD mean accuracy."""
  from rift_jax import corruptions
  attack = attacks.PGDConfig.from_config(config.rift.test_attack, "rift.test_attack")
  ev = evaluate.Evaluator(fns, evaluate.pgd_attack_fn(attack),
                          int(config.eval.batch_size), mesh)
  res = ev(variables, dataset.test, jax.random.PRNGKey(int(config.seed) + 31),
           desc=f"test {tag}")
  out = {"clean": float(res["clean"]), "adv": float(res["adv"])}
  if ood_sets is not None:
    clean_ev = evaluate.Evaluator(fns, None, int(config.eval.batch_size), mesh)
    acc = corruptions.accuracy_table(
        ood_sets, lambda s: float(clean_ev(variables, s, jax.random.PRNGKey(0))["clean"]))
    summary = corruptions.summarize(acc)
    out["ood"] = summary["mean"]
    out["ood_detail"] = summary
  return out


# ------------------------------------------------------------------ driver
def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the whole pipeline; returns results.json's content."""
  validate_rift_config(config)
  _check_modules_early(config)
  workdir = train.prepare_workdir(workdir)
  cfg_path = _path(workdir, "rift_config.json")
  if os.path.exists(cfg_path):
    old = _read_json(cfg_path)
    if old.get("model") != config.model.to_dict() or old.get("data") != json.loads(
        json.dumps(config.data.to_dict())):
      raise UserError(f"workdir={workdir!r} holds a run with another model or "
                      "data config; use a new --workdir")
  train.write_json(cfg_path, config.to_dict())
  timer = Timer(workdir)
  mesh = sharding.make_mesh()
  dataset = data.load(config.data)
  model, theta_at, at_source = stage_theta_at(config, workdir, dataset, timer)
  fns = models.ModelFns(model)
  apply_fn = lambda v, x: fns.logits(v, x, train=False)
  x_fix, y_fix = stage_fixed_set(config, workdir, apply_fn, theta_at, dataset,
                                 mesh, timer)
  scores = stage_mrc(config, workdir, apply_fn, theta_at, x_fix, y_fix, mesh, timer)
  all_modules = list(models.perturbable_modules(theta_at["params"]))
  r = config.rift
  k = int(r.finetune.k)

  def run_target(target, name):
    modules = target_modules(target, scores, all_modules, k, r.finetune.modules)
    lrs = list(r.finetune.lr_sweep) or [float(r.finetune.optim.lr)]
    best = None
    for lr in lrs:
      optim = ml_collections.ConfigDict(r.finetune.optim.to_dict())
      optim.lr = float(lr)
      run_name = name if len(lrs) == 1 else f"{name}_lr{lr:g}"
      theta_ft, ft_info, curve = stage_finetune_and_interpolate(
          config, workdir, run_name, fns, theta_at, modules, dataset, mesh, timer,
          optim)
      key = (curve["chosen"]["clean"], curve["chosen"]["adv"])
      if best is None or key > best[0]:
        best = (key, theta_ft, ft_info, curve, lr)
    _, theta_ft, ft_info, curve, lr = best
    alpha = float(curve["chosen"]["alpha"])
    theta_star = interpolate.interpolate(theta_at, theta_ft, alpha)
    return {"modules": modules, "lr": lr, "alpha": alpha, "curve": curve,
            "finetune": ft_info, "theta_star": theta_star,
            "lr_sweep": [float(x) for x in lrs]}

  main = run_target(r.finetune.target, r.finetune.target)
  ablations = {a: run_target(a, a) for a in r.ablations if a != r.finetune.target}

  results_path = _path(workdir, "results.json")
  from rift_jax import report
  if os.path.exists(results_path):  # the test stage is done: only re-report
    results = _read_json(results_path)
    report.write_report(workdir, results)
    return results
  t0 = time.time()
  ood_sets = _ood_sets(config, workdir, dataset)
  if ood_sets is not None:
    timer.record("ood_generate", time.time() - t0)
  t0 = time.time()
  at_test = test_metrics(config, fns, theta_at, dataset, ood_sets, mesh, "θ_AT")
  rift_test = test_metrics(config, fns, main["theta_star"], dataset, ood_sets,
                           mesh, "θ*")
  abl_out = {}
  for name, a in ablations.items():
    m = test_metrics(config, fns, a["theta_star"], dataset, ood_sets, mesh, name)
    abl_out[name] = {"modules": a["modules"], "alpha": a["alpha"], "lr": a["lr"],
                     **{k_: m[k_] for k_ in ("clean", "adv", "ood") if k_ in m}}
  timer.record("test", time.time() - t0)

  results = {
      "at": {k_: at_test.get(k_) for k_ in ("clean", "adv", "ood")},
      "rift": {k_: rift_test.get(k_) for k_ in ("clean", "adv", "ood")},
      "module": main["modules"][0] if len(main["modules"]) == 1 else main["modules"],
      "modules": main["modules"],
      "alpha": main["alpha"],
      "lr": main["lr"],
      "target": r.finetune.target,
      "method": config.method,
      "mrc": {k_: {"mrc": v.mrc, "adv_acc_drop": v.adv_acc_drop,
                   "relative_norm": v.relative_norm} for k_, v in scores.items()},
      "interpolation": main["curve"]["curve"],
      "interpolation_split": "validation",
      "finetune": {k_: v for k_, v in main["finetune"].items() if k_ != "history"},
      "ablations": abl_out,
      "ood_set": at_test.get("ood_detail", {}).get("set"),
      "ood_detail": {"at": at_test.get("ood_detail"), "rift": rift_test.get("ood_detail")},
      "at_source": at_source,
      "test_attack": dict(config.rift.test_attack),
      "n_test": len(dataset.test),
      "timing_s": timer.t,
      "config": config.to_dict(),
  }
  train.write_json(results_path, results)
  report.write_report(workdir, results)
  return results
