"""Seeds and studies: the RiFT pipeline once per seed, and what they show.

`run(config, workdir, seeds)` runs, seed by seed, `pipeline.run` into
`<workdir>/seed_<k>/` (its own θ_AT training, fixed set, MRC, fine-tuning
and attack keys; the data splits, the test images and the corrupted images
are the same for every seed), then that seed's investigation variants
(`config.study.variants`: {variant: seeds}, each reusing the seed's θ_AT,
fixed set and MRC) and, on `config.study.stability_seeds`, how stable the
MRC ranking is. A finished seed's outputs (results, per-example records,
θ_AT's validation curve, MRC tables, stage times; no checkpoints) are copied
to `config.study.results_dir`, and the tables are aggregated from there, so
seeds accumulate across working sessions and every number can be re-derived
without retraining. Every stage resumes after a kill, like `launch.rift`.

Statistics (`rift_jax.evaluation.stats`), per comparison (AT → AT+RiFT, or AT → a
variant), for Std / OOD / Adv:
- across seeds: mean ± sample std of each model, and the mean Δ with its
  t-interval over seeds (the spread that training randomness causes);
- pooled paired: every seed tests the same images, so the per-example
  records are stacked `[seeds, n]` and the interval resamples IMAGES with all
  their seeds' outcomes together (a cluster bootstrap); p from a paired
  sign-flip permutation test over images (exact McNemar for one seed);
- Holm's correction over every (comparison, metric) p-value of the study;
- Adv: "kept" only as non-inferiority (pooled interval above −margin,
  `rift.noninferiority_margin`), else "not shown".
A difference is called real only when both intervals exclude 0 and the
Holm-adjusted p is below 0.05.
"""
from __future__ import annotations

import copy
import os
import shutil

import ml_collections
import numpy as np

from rift_jax import workdir as wd
from rift_jax.evaluation import paired, records, report, stats
from rift_jax.experiments import pipeline, validation
from rift_jax.errors import UserError, check_choice, check_range

# Investigations of why RiFT does or does not help; each changes one thing
# of the seed's main run and reuses its θ_AT, fixed set and MRC.
# Run in this order (cheapest and most telling first).
VARIANTS = {
    # α chosen so that corrupted-validation accuracy may not fall either
    # (same fine-tuning as the main run; only α and the test differ).
    "alpha_ood": {"rift.alpha_rule": "robust_and_ood"},
    # θ_AT's BatchNorm statistics kept while fine-tuning.
    "frozen_bn": {"rift.finetune.update_batch_stats": False},
    # Ablation: the lowest MRC over EVERY module (stem, 1×1 shortcuts and
    # head included), not only 3×3 block convolutions as the authors chose.
    "all_modules": {"rift.finetune.candidates": "all"},
    # Fine-tuning at lr 0: only the BN statistics move (train mode) — how
    # much of the change is recalibration alone.
    "lr0": {"rift.finetune.optim.lr": 0.0, "rift.finetune.lr_sweep": ()},
    # The paper's lr rule: a larger lr while robustness stays (α rule),
    # chosen on validation among these.
    "lr_sweep": {"rift.finetune.lr_sweep": (1e-3, 1e-2, 3e-2)},
}
# Variants that fine-tune exactly as the main run (its θ_FT is reused).
_SAME_FINETUNE = ("alpha_ood",)
METRICS = ("clean", "ood", "adv")
NAMES = {"clean": "Std", "ood": "OOD", "adv": "Adv"}
# What a finished seed keeps in results_dir (small files, no checkpoints).
_KEEP = ("results.json", "records.npz", "mrc.json", "timing.json",
         "bn_swap.json", "bn_swap_records.npz", "mrc_stability.json",
         "rift_config.json", "at/done.json")


def _set(config, key: str, value) -> None:
  node = config
  *path, leaf = key.split(".")
  for p in path:
    node = node[p]
  node[leaf] = value


def seed_config(config, seed: int) -> ml_collections.ConfigDict:
  """`config` with `seed` (everything else, the data splits included, the same)."""
  c = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  c.seed = int(seed)
  return c


def variant_config(config, seed: int, name: str, at_dir: str,
                   lr: float | None = None) -> ml_collections.ConfigDict:
  """Seed `seed`'s config with variant `name`, starting from its θ_AT.

  `lr`: the fine-tuning lr that seed's main run chose on validation; given,
  the variant fine-tunes at that lr alone instead of repeating a sweep,
  unless the variant itself sets the lr or the sweep."""
  check_choice("study.variants entry", name, tuple(VARIANTS))
  c = seed_config(config, seed)
  c.rift.at_checkpoint = at_dir
  if lr is not None:
    c.rift.finetune.optim.lr = float(lr)
    c.rift.finetune.lr_sweep = ()
  for key, value in VARIANTS[name].items():
    _set(c, key, value)
  return c


def variant_seeds(config) -> dict[str, list[int]]:
  """{variant: seeds} from `config.study.variants`, in `VARIANTS` order."""
  chosen = {name: [int(s) for s in seeds]
            for name, seeds in config.study.variants.items()}
  for name in chosen:
    check_choice("study.variants entry", name, tuple(VARIANTS))
  return {name: chosen[name] for name in VARIANTS if name in chosen}


def validate(config, seeds) -> None:
  if not seeds:
    raise UserError("--seeds is empty; give e.g. --seeds=0,1,2")
  if len(set(seeds)) != len(seeds):
    raise UserError(f"--seeds={','.join(map(str, seeds))} repeats a seed")
  validation.validate_rift(config)
  for name in variant_seeds(config):
    # Each variant's config is a valid run (e.g. alpha_ood needs rift.ood_val).
    # A variant (or stability) seed outside --seeds is not an error: it runs
    # when that seed does (seeds are run across sessions, e.g. --seeds=2
    # with seed 0's variants already in results_dir).
    validation.validate_rift(variant_config(config, seeds[0], name, ""))
  for s in config.study.stability_seeds:
    check_range("study.stability_seeds entry", int(s), 0)


def _reuse(src_dir: str, dst_dir: str, same_finetune: bool) -> None:
  """A variant starts from its seed's fixed set, MRC and θ_AT's test
  records (same θ_AT, MRC settings, test attack and keys) and, when it
  fine-tunes identically, from its θ_FT: copy them so the variant's
  pipeline skips those stages."""
  os.makedirs(dst_dir, exist_ok=True)
  files = ["fixed_set.npz", "mrc.json", "at_test_records.npz"]
  for f in files:
    if os.path.exists(os.path.join(src_dir, f)) and not os.path.exists(
        os.path.join(dst_dir, f)):
      shutil.copy2(os.path.join(src_dir, f), os.path.join(dst_dir, f))
  if same_finetune:
    src, dst = os.path.join(src_dir, "finetune"), os.path.join(dst_dir, "finetune")
    if os.path.isdir(src) and not os.path.exists(dst):
      shutil.copytree(src, dst)


def run_seed(config, workdir: str, seed: int, save=lambda: None) -> None:
  """Seed `seed`: the main run, its variants and the MRC stability check;
  `save()` after each of them (the finished parts reach results_dir as
  they finish)."""
  main = os.path.join(workdir, f"seed_{seed}")
  print(f"=== seed {seed} ===")
  pipeline.run(seed_config(config, seed), main, validated=True)
  save()
  chosen = wd.read_json(os.path.join(main, "results.json"))["lr"]
  for name, vseeds in variant_seeds(config).items():
    if seed not in vseeds:
      continue
    print(f"=== seed {seed}, variant {name} ===")
    vdir = os.path.join(main, "variants", name)
    _reuse(main, vdir, name in _SAME_FINETUNE)
    pipeline.run(variant_config(config, seed, name, os.path.join(main, "at"),
                                lr=chosen), vdir, validated=True)
    save()
  if seed in [int(s) for s in config.study.stability_seeds]:
    print(f"=== seed {seed}, MRC ranking stability ===")
    from rift_jax.experiments import mrc_stability
    mrc_stability.run(seed_config(config, seed), main)
    save()


def save_seed(workdir: str, seed: int, results_dir: str) -> None:
  """Copies a seed's finished runs' small outputs (the main run and each
  finished variant) into `results_dir/seed_<k>/`, atomically: a
  half-copied seed never appears. Runs kept there before and not (yet)
  finished in `workdir` stay as they are, so re-running a seed from a lost
  workdir never drops its committed variants."""
  src = os.path.join(workdir, f"seed_{seed}")
  dst = os.path.join(results_dir, f"seed_{seed}")
  tmp, old = dst + ".tmp", dst + ".old"
  if os.path.isdir(old) and not os.path.isdir(dst):
    os.replace(old, dst)                        # a crash between the renames
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.rmtree(old, ignore_errors=True)
  if os.path.isdir(dst):
    shutil.copytree(dst, tmp)
  variants = os.path.join(src, "variants")
  runs = [""] + ([os.path.join("variants", v) for v in sorted(os.listdir(variants))]
                 if os.path.isdir(variants) else [])
  for r in runs:
    if not os.path.exists(os.path.join(src, r, "results.json")):
      continue                                  # unfinished: not kept
    for f in _KEEP:
      p = os.path.join(src, r, f)
      if os.path.exists(p):
        os.makedirs(os.path.dirname(os.path.join(tmp, r, f)), exist_ok=True)
        shutil.copy2(p, os.path.join(tmp, r, f))
  if os.path.isdir(dst):
    os.replace(dst, old)
  os.replace(tmp, dst)
  shutil.rmtree(old, ignore_errors=True)


def run(config, workdir: str, seeds) -> dict:
  """Runs (or resumes) every seed and its variants, saves each finished
  seed into `config.study.results_dir` (if set), then aggregates."""
  seeds = [int(s) for s in seeds]
  validate(config, seeds)
  workdir = wd.prepare(workdir)
  config = seed_config(config, int(config.seed))
  for block in ("ood", "ood_val"):
    if config.rift[block].enabled and not config.rift[block].cache_dir:
      # Every seed corrupts the same images (fixed seed): once.
      config.rift[block].cache_dir = os.path.join(workdir, f"{block}_cache")
  wd.write_json(os.path.join(workdir, "study_config.json"),
                {"seeds": seeds, "config": config.to_dict()})
  results_dir = config.study.results_dir
  for s in seeds:
    run_seed(config, workdir, s, save=lambda s=s: results_dir and save_seed(
        workdir, s, results_dir))
  if results_dir:
    return aggregate(results_dir, finished_seeds(results_dir), config)
  return aggregate(workdir, seeds, config)


def finished_seeds(directory: str) -> list[int]:
  """The seeds with a results.json under `directory`/seed_<k>/."""
  out = []
  if os.path.isdir(directory):
    for name in os.listdir(directory):
      if name.startswith("seed_") and name[5:].isdigit() and os.path.exists(
          os.path.join(directory, name, "results.json")):
        out.append(int(name[5:]))
  return sorted(out)


# ------------------------------------------------------------- aggregate
def _load_run(run_dir: str) -> tuple[dict, dict]:
  return (wd.read_json(os.path.join(run_dir, "results.json")),
          records.load(os.path.join(run_dir, "records.npz")))


def _stack(recs: list[dict]) -> dict:
  """Per-seed records of one model stacked: `[seeds, n]` per key (every
  seed tests the same images)."""
  return {k: np.stack([r[k] for r in recs]) for k in recs[0]}


def compare(base: list[dict], other: list[dict], seed: int = 0,
            margin: float | None = None) -> dict:
  """Model `other` vs `base` over seeds: per metric, per-seed values and Δ,
  the across-seed summary and the pooled paired interval/test."""
  out = {}
  pooled = paired.paired(_stack(base), _stack(other), seed, margin=margin)
  for m in METRICS:
    if m == "ood" and not paired.ood_table(base[0]):
      continue
    a = [paired.summarize_records(r)[m] for r in base]
    b = [paired.summarize_records(r)[m] for r in other]
    d = [y - x for x, y in zip(a, b)]
    ma, sa, _, _ = stats.seed_summary(a)
    mb, sb, _, _ = stats.seed_summary(b)
    md, sd, lo, hi = stats.seed_summary(d)
    out[m] = {"base": a, "other": b, "delta": d,
              "base_mean": ma, "base_std": sa,
              "other_mean": mb, "other_std": sb,
              "delta_mean": md, "delta_std": sd, "delta_seed_ci95": [lo, hi],
              "pooled": pooled[m]}
  if "ood_family" in pooled:
    out["ood_family"] = pooled["ood_family"]
  return out


def _adjust(comparisons: list[dict]) -> None:
  """Holm over every (comparison, metric) p-value; sets each pooled entry's
  p_holm and verdict, and the metric's verdict."""
  cells = [c[m]["pooled"] for c in comparisons for m in METRICS if m in c]
  if not cells:
    return
  adjusted = stats.holm([report.p_value(p) for p in cells])
  for p, h in zip(cells, adjusted):
    p["p_holm"] = float(h)
    p["verdict"] = stats.verdict(*p["ci95"], float(h))
  for c in comparisons:
    for m in METRICS:
      if m not in c:
        continue
      lo, hi = c[m]["delta_seed_ci95"]
      real = (c[m]["pooled"]["verdict"] == "significant" and len(c[m]["delta"]) > 1
              and (lo > 0 or hi < 0))
      c[m]["verdict"] = "real" if real else (
          "significant on the pooled test images only"
          if c[m]["pooled"]["verdict"] == "significant" else "within noise")


def aggregate(workdir: str, seeds, config=None) -> dict:
  """study.json / study.md / study.png from the finished runs in `workdir`."""
  seeds = [int(s) for s in seeds]
  runs = {}
  for s in seeds:
    d = os.path.join(workdir, f"seed_{s}")
    if not os.path.exists(os.path.join(d, "results.json")):
      raise UserError(f"seed {s} has not finished ({d}/results.json is missing); "
                      "run launch.study again to resume it")
    runs[s] = _load_run(d)
  first = runs[seeds[0]][0]
  margin = first.get("config", {}).get("rift", {}).get("noninferiority_margin")
  at = [records.of_model(runs[s][1], "at") for s in seeds]
  rift = [records.of_model(runs[s][1], "rift") for s in seeds]
  out = {"seeds": seeds, "n_test": first["n_test"], "ood_set": first.get("ood_set"),
         "margin": margin,
         "main": compare(at, rift, margin=margin),
         "per_seed": {s: {k: runs[s][0].get(k) for k in
                          ("module", "modules", "alpha", "lr", "at", "rift",
                           "timing_s", "mrc", "candidates")} for s in seeds},
         "ablations": {}, "variants": {}, "at_curves": {}, "bn_swap": {},
         "stability": {}}
  for s in seeds:
    done = os.path.join(workdir, f"seed_{s}", "at", "done.json")
    if os.path.exists(done):
      out["at_curves"][s] = [{k: h[k] for k in ("epoch", "val_clean", "val_adv")}
                             for h in wd.read_json(done)["history"]]
    stab = os.path.join(workdir, f"seed_{s}", "mrc_stability.json")
    if os.path.exists(stab):
      out["stability"][s] = wd.read_json(stab)
  names = sorted(set.intersection(*[set(runs[s][0].get("ablations", {}))
                                    for s in seeds])) if seeds else []
  for name in names:
    out["ablations"][name] = {
        "modules": {s: runs[s][0]["ablations"][name]["modules"] for s in seeds},
        **compare(at, [records.of_model(runs[s][1], name) for s in seeds],
                  margin=margin)}
  swap_seeds = [s for s in seeds if os.path.exists(os.path.join(
      workdir, f"seed_{s}", "bn_swap_records.npz"))]
  if swap_seeds:
    swap = {s: records.load(os.path.join(workdir, f"seed_{s}",
                                         "bn_swap_records.npz"))
            for s in swap_seeds}
    base = [records.of_model(runs[s][1], "at") for s in swap_seeds]
    for name in ("at_params_star_stats", "star_params_at_stats"):
      out["bn_swap"][name] = {"seeds": swap_seeds, **compare(
          base, [records.of_model(swap[s], name) for s in swap_seeds],
          margin=margin)}
  for name in VARIANTS:
    vs = [s for s in seeds if os.path.exists(os.path.join(
        workdir, f"seed_{s}", "variants", name, "results.json"))]
    if not vs:
      continue
    vruns = {s: _load_run(os.path.join(workdir, f"seed_{s}", "variants", name))
             for s in vs}
    out["variants"][name] = {
        "seeds": vs, "changes": VARIANTS[name],
        "per_seed": {s: {k: vruns[s][0][k] for k in ("module", "alpha", "lr")}
                     for s in vs},
        "curves": {s: vruns[s][0]["interpolation"] for s in vs},
        **compare([records.of_model(runs[s][1], "at") for s in vs],
                  [records.of_model(vruns[s][1], "rift") for s in vs],
                  margin=margin)}
  _adjust([out["main"], *out["ablations"].values(), *out["variants"].values(),
           *out["bn_swap"].values()])
  wd.write_json(os.path.join(workdir, "study.json"), out)
  wd.write_text(os.path.join(workdir, "study.md"), markdown(out))
  plot(out, os.path.join(workdir, "study.png"))
  return out


# ---------------------------------------------------------------- output
def _ms(mean, std):
  return f"{mean:.2f}" if std != std else f"{mean:.2f} ± {std:.2f}"


def _seed_ci(c):
  lo, hi = c["delta_seed_ci95"]
  if lo != lo:
    return f"{c['delta_mean']:+.2f}"
  return f"{c['delta_mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _kept(c) -> str:
  p = c["adv"]["pooled"]
  if "noninferior" not in p:
    return "–"
  return (f"yes: the pooled interval lies above −{p['margin']:g} pp"
          if p["noninferior"] else
          f"not shown: the pooled interval reaches below −{p['margin']:g} pp")


def _table(comp: dict, base: str, other: str) -> list[str]:
  ms = [m for m in METRICS if m in comp]
  lines = ["| model | " + " | ".join(NAMES[m] for m in ms) + " |",
           "|---|" + "---|" * len(ms),
           f"| {base} | " + " | ".join(_ms(comp[m]["base_mean"], comp[m]["base_std"])
                                       for m in ms) + " |",
           f"| {other} | " + " | ".join(_ms(comp[m]["other_mean"],
                                             comp[m]["other_std"]) for m in ms) + " |",
           "| Δ, mean [95 % t-interval over seeds] | "
           + " | ".join(_seed_ci(comp[m]) for m in ms) + " |",
           "| Δ, pooled paired [95 % CI over images] | "
           + " | ".join(report.delta_cell(comp[m]["pooled"]) for m in ms) + " |",
           "| p (Holm over the study) | "
           + " | ".join(report.p_cell(comp[m]["pooled"]) for m in ms) + " |",
           "| verdict | " + " | ".join(comp[m].get("verdict", "–") for m in ms) + " |"]
  if "adv" in comp:
    lines.append(f"| Adv kept (non-inferiority)? | {_kept(comp)} |"
                 + " |" * (len(ms) - 1))
  return lines


def _family_table(comp: dict) -> list[str]:
  fam = comp.get("ood_family")
  if not fam:
    return []
  lines = ["", "OOD per corruption family (pooled paired Δ, p unadjusted):", "",
           "| family | Δ [95 % CI] | p |", "|---|---|---|"]
  for name, e in fam.items():
    lines.append(f"| {name} | {report.delta_cell(e)} | {report.p_cell(e)} |")
  return lines


def _stability_lines(stab: dict) -> list[str]:
  lines = ["| comparison | Spearman ρ | lowest five (reference) | lowest five "
           "(other) |", "|---|---|---|---|"]
  for name, c in stab["comparisons"].items():
    lines.append(f"| {c['label']} | {c['spearman']:.2f} | "
                 f"{', '.join(c['lowest5_reference'])} | "
                 f"{', '.join(c['lowest5_other'])} |")
  return lines


BEGIN, END = "<!-- study:begin -->", "<!-- study:end -->"


def write_into(path: str, text: str) -> None:
  """Replaces what lies between the BEGIN and END lines of `path` (e.g.
  README.md) with `text`, atomically; one clear error when the markers are
  missing."""
  try:
    old = open(path).read()
  except OSError as e:
    raise UserError(f"--readme={path!r} cannot be read: {e}") from None
  if old.count(BEGIN) != 1 or old.count(END) != 1 or old.index(BEGIN) > old.index(END):
    raise UserError(f"--readme={path!r} needs one {BEGIN!r} line before one "
                    f"{END!r} line")
  head, rest = old.split(BEGIN)
  _, tail = rest.split(END)
  wd.write_text(path, f"{head}{BEGIN}\n{text.strip()}\n{END}{tail}")


def markdown(out: dict, level: int = 1) -> str:
  """study.md; `level`: the heading level of its title (sections one
  deeper), so the tables can sit inside another document."""
  h = "#" * level
  seeds = out["seeds"]
  lines = [f"{h} RiFT study", "",
           f"Seeds: {', '.join(map(str, seeds))}. Test split: {out['n_test']:,} "
           f"images (the same for every seed). OOD: {out.get('ood_set')}.", "",
           f"{h}# AT vs AT+RiFT (paper Table 1 layout; mean ± std over seeds)", ""]
  lines += _table(out["main"], "AT", "AT+RiFT")
  lines += ["", "Δ = AT+RiFT − AT in percentage points. The t-interval is over "
            "seeds (training randomness); the pooled paired interval resamples "
            "test images with every seed's outcomes on an image kept together "
            "(a cluster bootstrap: the seeds share the images), p from a paired "
            "sign-flip permutation test over images (exact McNemar for a single "
            "seed), Holm-adjusted over every comparison × metric of this study. "
            "'real' needs both intervals to exclude 0 and the adjusted p < 0.05. "
            "Robust accuracy counts as kept only when the pooled interval lies "
            f"above −{out.get('margin')} pp (non-inferiority).", ""]
  lines += _family_table(out["main"])
  lines += ["", "| seed | module | α | lr | Std AT → RiFT | OOD AT → RiFT | Adv AT → RiFT "
            "| wall (min) |", "|---|---|---|---|---|---|---|---|"]
  for s, r in out["per_seed"].items():
    def pair(k):
      a, b = r["at"].get(k), r["rift"].get(k)
      return "–" if a is None else f"{a:.2f} → {b:.2f}"
    lines.append(f"| {s} | `{r['module']}` | {r['alpha']:.1f} | {r['lr']:g} | "
                 f"{pair('clean')} | {pair('ood')} | {pair('adv')} | "
                 f"{sum(r['timing_s'].values()) / 60:.1f} |")
  if out["ablations"]:
    lines += ["", f"{h}# Ablations (paper Table 3 layout), each vs AT", "",
              "| fine-tuned | Std | OOD | Adv |", "|---|---|---|---|"]
    rows = {"non_robust_critical (RiFT)": out["main"], **out["ablations"]}
    for name, comp in rows.items():
      lines.append(f"| {name} | " + " | ".join(
          f"{_ms(comp[m]['other_mean'], comp[m]['other_std'])} "
          f"(Δ {report.delta_cell(comp[m]['pooled'])})" if m in comp else "–"
          for m in METRICS) + " |")
  if out.get("bn_swap"):
    lines += ["", f"{h}# Why does OOD move? The BatchNorm swap (no training; vs AT)", ""]
    titles = {"at_params_star_stats": "θ_AT's parameters with θ*'s BN statistics",
              "star_params_at_stats": "θ*'s parameters with θ_AT's BN statistics"}
    for name, comp in out["bn_swap"].items():
      lines += [f"{h}## {titles[name]} (seeds {', '.join(map(str, comp['seeds']))})", ""]
      lines += _table(comp, "AT", "swapped") + _family_table(comp) + [""]
  if out["variants"]:
    lines += ["", f"{h}# Investigations (each vs the same seeds' AT)", ""]
    for name, v in out["variants"].items():
      lines += [f"{h}## {name}: {v['changes']} (seeds {', '.join(map(str, v['seeds']))})",
                ""]
      lines += _table(v, "AT", f"AT+RiFT ({name})") + _family_table(v)
      lines += [""] + [f"- seed {s}: module `{p['module']}`, α {p['alpha']:.1f}, "
                       f"lr {p['lr']:g}" for s, p in v["per_seed"].items()] + [""]
  if out.get("stability"):
    lines += [f"{h}# How stable is the MRC ranking?", ""]
    for s, stab in out["stability"].items():
      lines += [f"Seed {s}, reference: {stab['reference']}.", ""]
      lines += _stability_lines(stab) + [""]
  if out["at_curves"]:
    lines += [f"{h}# θ_AT training (validation accuracy per epoch)", "",
              "| seed | clean per epoch | PGD per epoch |", "|---|---|---|"]
    for s, c in out["at_curves"].items():
      clean = ", ".join(f"{h['val_clean']:.1f}" for h in c)
      adv = ", ".join(f"{h['val_adv']:.1f}" for h in c)
      lines.append(f"| {s} | {clean} | {adv} |")
  lines += ["", "Figure: `study.png` (Δ per metric with the pooled interval and "
            "every seed; θ_AT validation curves).", ""]
  return "\n".join(lines)


def plot(out: dict, path: str) -> None:
  from matplotlib.figure import Figure
  comps = {"RiFT": out["main"], **{f"{k}": v for k, v in out["variants"].items()}}
  fig = Figure(figsize=(11, 4))
  ax, ax2 = fig.subplots(1, 2)
  ms = [m for m in METRICS if m in out["main"]]
  width = 0.8 / len(comps)
  for i, (name, comp) in enumerate(comps.items()):
    xs = np.arange(len(ms)) + (i - (len(comps) - 1) / 2) * width
    for x, m in zip(xs, ms):
      c = comp.get(m)
      if c is None:
        continue
      lo, hi = c["pooled"]["ci95"]
      ax.errorbar(x, c["pooled"]["delta"], yerr=[[c["pooled"]["delta"] - lo],
                                                  [hi - c["pooled"]["delta"]]],
                  fmt="o", color=f"C{i}", capsize=3,
                  label=name if m == ms[0] else None)
      ax.plot([x] * len(c["delta"]), c["delta"], "x", color=f"C{i}", alpha=0.6)
  ax.axhline(0, color="gray", lw=1)
  ax.set_xticks(range(len(ms)), [NAMES[m] for m in ms])
  ax.set_ylabel("Δ vs AT (pp)")
  ax.set_title("Δ: pooled paired 95 % CI (o), each seed (x)")
  ax.legend(fontsize=8)
  for s, c in out["at_curves"].items():
    e = [h["epoch"] for h in c]
    ax2.plot(e, [h["val_clean"] for h in c], "-", color=f"C{int(s) % 10}",
             label=f"seed {s} clean")
    ax2.plot(e, [h["val_adv"] for h in c], "--", color=f"C{int(s) % 10}",
             label=f"seed {s} PGD")
  ax2.set_xlabel("epoch")
  ax2.set_ylabel("validation accuracy (%)")
  ax2.set_title("θ_AT training")
  if out["at_curves"]:
    ax2.legend(fontsize=7)
  fig.tight_layout()
  wd.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
