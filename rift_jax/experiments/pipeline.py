"""The RiFT pipeline, stage by stage, resumable (what `launch/rift.py` runs).

    θ_AT ─► fixed adversarial set ─► MRC per module ─► fine-tune the lowest-MRC
    module ─► interpolate θ(α), choose α on validation ─► test: θ_AT vs θ*

Every stage writes its output into the workdir and is skipped when that
output already exists, so a crashed run started again resumes where it
stopped. Model selection (best AT epoch, best fine-tuning epoch, α, the
fine-tuning lr of a sweep) uses the validation split only; the test split is
read once, at the end, for the reported numbers, and every test evaluation
keeps its per-example correctness (`records.npz`) so the paired statistics
(`rift_jax.evaluation.stats`) can be recomputed, and other runs on the same images
compared, without re-running anything.

Workdir layout:
  at/                     base training run (when the config trains θ_AT)
  fixed_set.npz           the fixed adversarial examples for MRC
  mrc.json                MRC, robust-accuracy drop, ‖Δw‖/‖w‖ per module
  finetune/<run>/         θ_FT (Orbax), finetune.json, interpolation.json and
                          the validation curve's per-example records
  results.json            test numbers, the paired comparison, everything above
  records.npz             per-example test correctness of every model
  theta_star.safetensors, theta_star.pth
                          θ* as a PyTorch state_dict (the source file's key
                          layout when θ_AT came from a PyTorch file)
  report.md, mrc.png, interpolation.png
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil

import jax
import ml_collections
import numpy as np

from rift_jax import (attacks, data, evaluation, models, sharding, training,
                      workdir as wd)
from rift_jax.data import corruptions
from rift_jax.evaluation import paired, records, report
from rift_jax.experiments import validation
from rift_jax.models import checkpoint
from rift_jax.rift import criticality, finetuning, interpolation
from rift_jax.errors import UserError


def _path(workdir, *parts):
  return os.path.join(workdir, *parts)


# ----------------------------------------------------------------- stages
def stage_theta_at(config, workdir, dataset, timer):
  """θ_AT: loaded from rift.at_checkpoint, or trained into workdir/at."""
  info = dataset.info
  model = models.build_model(config, info)
  expect = models.model_meta(config, info)
  src = config.rift.at_checkpoint
  if src:
    variables, path = checkpoint.load_model_variables(src, model, info, expect)
    return model, variables, path
  at_dir = _path(workdir, "at")
  done = _path(at_dir, "done.json")
  if not os.path.exists(done):
    with timer.stage("train_at"):
      result = training.train_and_evaluate(config, at_dir, dataset=dataset)
      wd.write_json(done, {"best_epoch": result.best_epoch,
                           "history": result.history})
  best_dir = _path(at_dir, "checkpoints", "best")
  variables, _ = checkpoint.load_variables(
      best_dir, models.init_variables(model, jax.random.PRNGKey(0),
                                      info.image_shape), expect)
  return model, variables, best_dir


def stage_fixed_set(config, workdir, fns, theta_at, dataset, mesh, timer):
  path = _path(workdir, "fixed_set.npz")
  if os.path.exists(path):
    with np.load(path) as f:
      return f["x"], f["y"]
  with timer.stage("fixed_set"):
    r = config.rift.mrc
    split = dataset.val.take(np.arange(int(r.num_examples)))
    attack = attacks.PGDConfig.from_config(r.attack, "rift.mrc.attack")
    x, y = criticality.fixed_adversarial_set(
        fns, theta_at, split, attack, jax.random.PRNGKey(int(config.seed) + 11),
        int(config.eval.batch_size), mesh, progress=True)
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, x=x, y=y)
    os.replace(tmp, path)
  return x, y


def stage_mrc(config, workdir, fns, theta_at, x, y, mesh, timer):
  path = _path(workdir, "mrc.json")
  if os.path.exists(path):
    return {k: criticality.MRCResult(**{**v, "loss_per_pass": tuple(v["loss_per_pass"])})
            for k, v in wd.read_json(path).items()}
  with timer.stage("mrc"):
    res = criticality.mrc(fns, theta_at, x, y, **mrc_settings(config, theta_at),
                          mesh=mesh, progress=True)
    wd.write_json(path, {k: v.to_dict() for k, v in res.items()})
  return res


def mrc_settings(config, theta_at) -> dict:
  """`criticality.mrc`'s keyword arguments from the `rift.mrc` block."""
  r = config.rift.mrc
  return dict(
      modules=models.resolve_modules(theta_at["params"], r.include or None,
                                     r.exclude or None),
      epsilon=float(r.epsilon), learning_rate=float(r.learning_rate),
      num_passes=int(r.num_passes), batch_size=int(r.batch_size),
      projection=r.projection, mode=r.mode, route=r.route,
      vmap_chunk=int(r.vmap_chunk), prefix_cache_mb=float(r.prefix_cache_mb))


def stage_finetune_and_interpolate(config, workdir, run_name, fns, theta_at,
                                   modules, dataset, mesh, timer, optim,
                                   ood_val=None):
  """Fine-tunes `modules`, then the validation α-curve (with OOD accuracy
  on corrupted validation images when `ood_val` gives them), and chooses α
  by `rift.alpha_rule`; cached per run."""
  run_dir = _path(workdir, "finetune", run_name)
  ft_json = _path(run_dir, "finetune.json")
  curve_json = _path(run_dir, "interpolation.json")
  ft_vars_dir = _path(run_dir, "theta_ft")
  r = config.rift
  if os.path.exists(ft_json):
    theta_ft, _ = checkpoint.load_variables(ft_vars_dir, theta_at)
    ft_info = wd.read_json(ft_json)
  else:
    with timer.stage("finetune"):
      res = finetuning.finetune(
          fns, theta_at, dataset, modules, optim,
          update_batch_stats=bool(r.finetune.update_batch_stats),
          augment=bool(r.finetune.augment), seed=int(config.seed),
          eval_batch_size=int(config.eval.batch_size), mesh=mesh,
          checkpoint_dir=_path(run_dir, "checkpoints"))
      theta_ft = res.variables
      checkpoint.save_variables(ft_vars_dir, theta_ft, {"modules": res.modules,
                                                        "lr": optim.lr})
      ft_info = {"modules": res.modules, "best_epoch": res.best_epoch,
                 "best_val_clean": res.best_val_clean, "lr": optim.lr,
                 "history": res.history}
      wd.write_json(ft_json, ft_info)
      # θ_FT and its record are kept: the per-epoch resume state is not.
      shutil.rmtree(_path(run_dir, "checkpoints"), ignore_errors=True)
  if os.path.exists(curve_json):
    curve_info = wd.read_json(curve_json)
  else:
    with timer.stage("interpolate"):
      attack = attacks.PGDConfig.from_config(config.eval.attack, "eval.attack")
      res = interpolation.interpolate(
          fns, theta_at, theta_ft, dataset.val, evaluation.pgd_attack_fn(attack),
          jax.random.PRNGKey(int(config.seed) + 21), alphas=r.alphas,
          tolerance=float(r.tolerance), batch_size=int(config.eval.batch_size),
          chunk=int(r.alpha_chunk), mesh=mesh)
      records.save(_path(run_dir, "interpolation_records.npz"),
                   {f"{k}/{a['alpha']:g}": res.per_example[k][j]
                    for k in ("clean", "adv") for j, a in enumerate(res.curve)})
      chosen = next(c for c in res.curve if c["alpha"] == res.alpha)
      curve_info = {"curve": res.curve, "chosen": chosen,
                    "tolerance": float(r.tolerance),
                    "band": report.curve_band(res.curve, res.per_example)}
      wd.write_json(curve_json, curve_info)
  if ood_val is not None:
    ood = stage_ood_curve(config, run_dir, fns, theta_at, theta_ft, ood_val,
                          mesh, timer)
    curve_info["curve"] = [{**c, "ood": ood[f"{c['alpha']:g}"]}
                           for c in curve_info["curve"]]
  if r.alpha_rule != "robust":  # interpolation.json holds the robust rule's
    curve_info["chosen"] = interpolation.select_alpha(
        curve_info["curve"], float(r.tolerance), r.alpha_rule)
  curve_info["rule"] = r.alpha_rule
  return theta_ft, ft_info, curve_info


def stage_ood_curve(config, run_dir, fns, theta_at, theta_ft, ood_val, mesh,
                    timer) -> dict[str, float]:
  """{f'{α:g}': clean accuracy (%) on the corrupted validation images}."""
  path = _path(run_dir, "ood_curve.json")
  if os.path.exists(path):
    return wd.read_json(path)["ood"]
  r = config.rift
  with timer.stage("ood_curve"):
    sets = ood_val()
    curve, _ = interpolation.evaluate_alphas(
        fns, theta_at, theta_ft, r.alphas, corruptions.concatenate(sets), None,
        jax.random.PRNGKey(0), int(config.eval.batch_size),
        int(r.alpha_chunk), mesh)
  ood = {f"{c['alpha']:g}": c["clean"] for c in curve}
  wd.write_json(path, {"ood": ood, "set": corruptions.describe_set(list(sets)),
                       "n_images": len(next(iter(next(iter(sets.values())).values()))),
                       "severities": sorted({s for by in sets.values() for s in by})})
  return ood


def stage_export(workdir: str, exports: dict, at_source: str) -> None:
  """θ* (and θ_FT on request) as PyTorch state_dicts: `<name>.safetensors`
  always, `<name>.pth` when torch is installed. A run that started from a
  PyTorch file gets exactly that file's key layout back (prefixes, wrapper,
  `num_batches_tracked`), so the user's own `load_state_dict(..., strict=True)`
  works; a run from our own checkpoint uses the RiFT/kuangliu naming."""
  from rift_jax.models import convert
  layout = at_source if checkpoint.is_torch_file(at_source) else None
  try:
    import torch  # noqa: F401
    suffixes = (".safetensors", ".pth")
  except ImportError:
    suffixes = (".safetensors",)
  for name, variables in exports.items():
    for suffix in suffixes:
      path = _path(workdir, name + suffix)
      if os.path.exists(path) or jax.process_index() != 0:
        continue
      tmp = _path(workdir, f".tmp_{name}{suffix}")
      convert.export_like(jax.device_get(variables), layout, tmp)
      os.replace(tmp, path)


def stage_bn_swap(config, workdir, fns, theta_at, theta_star, dataset, ood_test,
                  mesh, timer) -> dict:
  """Does RiFT's change follow the BatchNorm statistics or the kernels? No
  training: θ_AT's parameters with θ*'s BN statistics, and θ*'s parameters
  with θ_AT's statistics, on the test images (clean, adv, OOD), each paired
  against θ_AT. bn_swap.json, bn_swap_records.npz."""
  path = _path(workdir, "bn_swap.json")
  if os.path.exists(path):
    return wd.read_json(path)
  swapped = {
      "at_params_star_stats": {"params": theta_at["params"],
                               "batch_stats": theta_star["batch_stats"]},
      "star_params_at_stats": {"params": theta_star["params"],
                               "batch_stats": theta_at["batch_stats"]}}
  ood_sets = ood_test()
  with timer.stage("bn_swap"):
    rec = {name: records_on_test(config, fns, v, dataset, ood_sets, mesh, name)
           for name, v in swapped.items()}
  records.save(_path(workdir, "bn_swap_records.npz"), records.flatten(rec))
  at = records.of_model(records.load(_path(workdir, "records.npz")), "at")
  out = {name: {**{k: v for k, v in paired.summarize_records(rec[name]).items()
                   if k != "ood_detail"},
                "paired": paired.paired(at, rec[name], int(config.seed),
                                 margin=float(config.rift.noninferiority_margin))}
         for name in swapped}
  wd.write_json(path, out)
  return out


def records_on_test(config, fns, variables, dataset, ood_sets, mesh, tag) -> dict:
  """Per-example test correctness: {'clean', 'adv', 'ood/<c>/<s>'}: bool [n]."""
  attack = attacks.PGDConfig.from_config(config.rift.test_attack,
                                         "rift.test_attack")
  ev = evaluation.Evaluator(fns, evaluation.pgd_attack_fn(attack),
                          int(config.eval.batch_size), mesh)
  out = ev.per_example(variables, dataset.test,
                       jax.random.PRNGKey(int(config.seed) + 31),
                       desc=f"test {tag}")
  if ood_sets is not None:
    clean_ev = evaluation.Evaluator(fns, None, int(config.eval.batch_size), mesh)
    table = corruptions.correctness_table(
        ood_sets, lambda s: clean_ev.per_example(variables, s,
                                                 jax.random.PRNGKey(0))["clean"])
    out.update({f"ood/{c}/{s}": v for c, by in table.items() for s, v in by.items()})
  return out


# ------------------------------------------------------------------ driver
def _check_same_run(old: dict, config, workdir: str) -> None:
  """A workdir resumes only under the model and data it was started with."""
  for block in ("model", "data"):
    # As JSON reads them back (tuples become lists).
    new = json.loads(json.dumps(config[block].to_dict()))
    was = old.get(block, {})
    for key in sorted(set(new) | set(was)):
      if new.get(key) != was.get(key):
        raise UserError(
            f"workdir={workdir!r} holds a run with {block}.{key}="
            f"{was.get(key)!r}, not {new.get(key)!r}; use a new --workdir")


def run(config: ml_collections.ConfigDict, workdir: str,
        validated: bool = False) -> dict:
  """Runs (or resumes) the whole pipeline; returns results.json's content.

  Every config value is checked first (`validation.validate_rift`), unless
  the caller already did (`validated`: a study checks its configs once)."""
  if not validated:
    validation.validate_rift(config)
  workdir = wd.prepare(workdir)
  cfg_path = _path(workdir, "rift_config.json")
  if os.path.exists(cfg_path):
    _check_same_run(wd.read_json(cfg_path), config, workdir)
  wd.write_json(cfg_path, config.to_dict())
  timer = wd.Timer(workdir)
  mesh = sharding.make_mesh()
  dataset = data.load(config.data)
  model, theta_at, at_source = stage_theta_at(config, workdir, dataset, timer)
  fns = models.ModelFns(model)
  x_fix, y_fix = stage_fixed_set(config, workdir, fns, theta_at, dataset, mesh,
                                 timer)
  scores = stage_mrc(config, workdir, fns, theta_at, x_fix, y_fix, mesh, timer)
  r = config.rift
  candidates = finetuning.candidate_modules(theta_at["params"],
                                            r.finetune.candidates)
  ood_val = None
  if r.ood_val.enabled:
    ood_val = functools.cache(lambda: corruptions.load_sets(
        r.ood_val, dataset.val, data_dir=config.data.data_dir,
        workdir=_path(workdir, "ood_val"), seed=int(r.ood_val.seed),
        prefix="rift.ood_val"))

  def run_target(target, name):
    modules = finetuning.target_modules(target, scores, candidates,
                                        int(r.finetune.k), r.finetune.modules)
    lrs = list(r.finetune.lr_sweep) or [float(r.finetune.optim.lr)]
    best = None
    settings = training.Optim.from_config(r.finetune.optim, "rift.finetune.optim",
                                          allow_zero_lr=True)
    for lr in lrs:
      optim = dataclasses.replace(settings, lr=float(lr))
      # A sweep's runs are named by their lr (a sweep of one included, so a
      # sweep cut down to the lrs already run resumes them).
      run_name = f"{name}_lr{lr:g}" if r.finetune.lr_sweep else name
      theta_ft, ft_info, curve = stage_finetune_and_interpolate(
          config, workdir, run_name, fns, theta_at, modules, dataset, mesh,
          timer, optim, ood_val)
      key = (curve["chosen"]["clean"], curve["chosen"]["adv"])
      if best is None or key > best[0]:
        best = (key, theta_ft, ft_info, curve, lr)
    _, theta_ft, ft_info, curve, lr = best
    alpha = float(curve["chosen"]["alpha"])
    return {"modules": modules, "candidates": candidates, "lr": lr,
            "alpha": alpha, "curve": curve,
            "finetune": ft_info, "theta_ft": theta_ft,
            "theta_star": interpolation.mix(theta_at, theta_ft, alpha),
            "lr_sweep": [float(x) for x in lrs]}

  main = run_target(r.finetune.target, r.finetune.target)
  ablations = {a: run_target(a, a) for a in r.ablations if a != r.finetune.target}

  @functools.cache
  def ood_test():
    if not r.ood.enabled:
      return None
    with timer.stage("ood_generate"):
      return corruptions.load_sets(
          r.ood, dataset.test, data_dir=config.data.data_dir, workdir=workdir,
          seed=int(r.ood.seed), prefix="rift.ood")

  results_path = _path(workdir, "results.json")
  if os.path.exists(results_path):  # the test stage is done: only re-report
    results = wd.read_json(results_path)
  else:
    results = stage_test(config, workdir, fns, theta_at, main, ablations,
                         scores, at_source, dataset, ood_test, mesh, timer)
  if r.bn_swap and "bn_swap" not in results:
    results["bn_swap"] = stage_bn_swap(config, workdir, fns, theta_at,
                                       main["theta_star"], dataset, ood_test,
                                       mesh, timer)
    wd.write_json(results_path, results)
  report.write_report(workdir, results)
  # The exports come last: they add files, and a failure in them loses
  # nothing computed (results.json and report.md are already written; a
  # re-run resumes here).
  exports = {"theta_star": main["theta_star"]}
  if r.export_theta_ft:
    exports["theta_ft"] = main["theta_ft"]
  stage_export(workdir, exports, at_source)
  return results


def stage_test(config, workdir, fns, theta_at, main, ablations, scores,
               at_source, dataset, ood_test, mesh, timer) -> dict:
  """θ_AT, θ* and every ablation on the test split (and its corruptions):
  records.npz and results.json."""
  ood_sets = ood_test()
  # θ_AT's records depend only on θ_AT, the test attack, its keys and the
  # OOD sets: kept apart, so a study's variants (same θ_AT) reuse them.
  at_path = _path(workdir, "at_test_records.npz")
  with timer.stage("test"):
    if os.path.exists(at_path):
      at_rec = records.load(at_path)
    else:
      at_rec = records_on_test(config, fns, theta_at, dataset, ood_sets, mesh, "θ_AT")
      records.save(at_path, at_rec)
    rec = {"at": at_rec,
           "rift": records_on_test(config, fns, main["theta_star"], dataset,
                                ood_sets, mesh, "θ*")}
    for name, a in ablations.items():
      rec[name] = records_on_test(config, fns, a["theta_star"], dataset, ood_sets,
                               mesh, name)
  records.save(_path(workdir, "records.npz"), records.flatten(rec))
  results = build_results(config, rec, scores, main, ablations, at_source,
                          timer.t, len(dataset.test))
  wd.write_json(_path(workdir, "results.json"), results)
  return results


def build_results(config, rec, scores, main, ablations, at_source, timing,
                  n_test) -> dict:
  """results.json from the per-example test records and the stage outputs."""
  r = config.rift
  at, rift = paired.summarize_records(rec["at"]), paired.summarize_records(rec["rift"])
  abl_out = {}
  for name, a in ablations.items():
    m = paired.summarize_records(rec[name])
    abl_out[name] = {"modules": a["modules"], "alpha": a["alpha"], "lr": a["lr"],
                     **{k: m.get(k) for k in ("clean", "adv", "ood")},
                     "paired": paired.paired(rec["at"], rec[name], int(config.seed),
                                      margin=float(r.noninferiority_margin))}
  return {
      "at": {k: at.get(k) for k in ("clean", "adv", "ood")},
      "rift": {k: rift.get(k) for k in ("clean", "adv", "ood")},
      "paired": paired.paired(rec["at"], rec["rift"], int(config.seed),
                       margin=float(r.noninferiority_margin)),
      "module": main["modules"][0] if len(main["modules"]) == 1 else main["modules"],
      "modules": main["modules"],
      "alpha": main["alpha"],
      "lr": main["lr"],
      "lr_sweep": main["lr_sweep"],
      "target": r.finetune.target,
      "method": config.method,
      "mrc": {k: {"mrc": v.mrc, "adv_acc_drop": v.adv_acc_drop,
                  "relative_norm": v.relative_norm,
                  "steps_per_pass": v.steps_per_pass,
                  "steps": v.steps_per_pass * len(v.loss_per_pass)}
              for k, v in scores.items()},
      "candidates": main["candidates"],
      "interpolation": main["curve"]["curve"],
      "alpha_rule": main["curve"]["rule"],
      "interpolation_band": main["curve"].get("band"),
      "interpolation_split": "validation",
      "finetune": {k: v for k, v in main["finetune"].items() if k != "history"},
      "finetune_history": main["finetune"].get("history"),
      "ablations": abl_out,
      "ood_set": at.get("ood_detail", {}).get("set"),
      "ood_detail": {"at": at.get("ood_detail"), "rift": rift.get("ood_detail")},
      "at_source": at_source,
      "test_attack": dict(config.rift.test_attack),
      "n_test": n_test,
      "timing_s": timing,
      "config": config.to_dict(),
  }
