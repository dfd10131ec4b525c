"""Seeds and studies: the RiFT pipeline once per seed, and what they show.

`run(config, workdir, seeds)` runs `pipeline.run` for every seed into
`<workdir>/seed_<k>/` (its own θ_AT training, fixed set, fine-tuning and
attack keys; the data splits, the test images and the corrupted images are
the same for every seed), then the investigation variants of
`config.study.variants` on `config.study.variant_seeds` (each reuses that
seed's θ_AT, fixed set and MRC), and aggregates everything into
`study.json`, `study.md` and `study.png`. Every stage of every run resumes
after a kill, like `launch.rift`.

Statistics (`rift_jax.stats`), per comparison (AT → AT+RiFT, or AT → a
variant), for Std / OOD / Adv:
- across seeds: mean ± sample std of each model, and the mean Δ with its
  t-interval over seeds (the spread that training randomness causes);
- pooled paired: the per-example records of all seeds concatenated, Δ with a
  95 % paired-bootstrap interval and a paired test (exact McNemar for Std /
  Adv, sign-flip permutation over images of the mean over corruptions for
  OOD) — the noise of the test images, with every seed's models compared on
  the same images.
A difference is called real only when both intervals exclude 0.
"""
from __future__ import annotations

import copy
import os
import shutil

import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rift_jax import (pipeline, records, report, stats, validation,  # noqa: E402
                      workdir as wd)
from rift_jax.errors import UserError, check_choice  # noqa: E402

# Investigations of why RiFT does or does not help (each changes one thing).
VARIANTS = {
    # The paper's chosen modules are 3×3 convolutions; on small models the
    # lowest MRC often falls on a 1×1 shortcut or the stem.
    "conv3x3": {"rift.finetune.candidates": "conv3x3"},
    # θ_AT's BatchNorm statistics kept while fine-tuning.
    "frozen_bn": {"rift.finetune.update_batch_stats": False},
    # A 10× larger fine-tuning learning rate (more to interpolate between).
    "lr_x10": {"rift.finetune.lr_scale": 10.0},
}
METRICS = ("clean", "ood", "adv")
NAMES = {"clean": "Std", "ood": "OOD", "adv": "Adv"}


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
  the variant fine-tunes at that lr alone instead of repeating the sweep
  (one thing changes, at half the cost of a sweep of two)."""
  check_choice("study.variants entry", name, tuple(VARIANTS))
  c = seed_config(config, seed)
  c.rift.at_checkpoint = at_dir
  if lr is not None:
    c.rift.finetune.optim.lr = float(lr)
    c.rift.finetune.lr_sweep = ()
  for key, value in VARIANTS[name].items():
    if key == "rift.finetune.lr_scale":
      c.rift.finetune.optim.lr = float(c.rift.finetune.optim.lr) * value
      c.rift.finetune.lr_sweep = tuple(float(v) * value
                                       for v in c.rift.finetune.lr_sweep)
    else:
      _set(c, key, value)
  return c


def validate(config, seeds) -> None:
  if not seeds:
    raise UserError("--seeds is empty; give e.g. --seeds=0,1,2")
  if len(set(seeds)) != len(seeds):
    raise UserError(f"--seeds={','.join(map(str, seeds))} repeats a seed")
  validation.validate_rift(config)
  for name in config.study.variants:
    check_choice("study.variants entry", name, tuple(VARIANTS))
  for s in config.study.variant_seeds:
    if int(s) not in seeds:
      raise UserError(f"study.variant_seeds entry {s} is not among --seeds")


def _reuse(src_dir: str, dst_dir: str) -> None:
  """A variant starts from its seed's fixed set and MRC (same θ_AT, same
  MRC settings): copy them so the variant's pipeline skips both stages."""
  os.makedirs(dst_dir, exist_ok=True)
  for f in ("fixed_set.npz", "mrc.json"):
    if os.path.exists(os.path.join(src_dir, f)) and not os.path.exists(
        os.path.join(dst_dir, f)):
      shutil.copy2(os.path.join(src_dir, f), os.path.join(dst_dir, f))


def run(config, workdir: str, seeds) -> dict:
  """Runs (or resumes) every seed and variant, then aggregates."""
  seeds = [int(s) for s in seeds]
  validate(config, seeds)
  workdir = wd.prepare(workdir)
  if config.rift.ood.enabled and not config.rift.ood.cache_dir:
    # Every seed corrupts the same test images (fixed rift.ood.seed): once.
    config = seed_config(config, int(config.seed))
    config.rift.ood.cache_dir = os.path.join(workdir, "ood_cache")
  wd.write_json(os.path.join(workdir, "study_config.json"),
                {"seeds": seeds, "config": config.to_dict()})
  for s in seeds:
    print(f"=== seed {s} ===")
    pipeline.run(seed_config(config, s), os.path.join(workdir, f"seed_{s}"))
  for s in config.study.variant_seeds:
    main = os.path.join(workdir, f"seed_{s}")
    for name in config.study.variants:
      print(f"=== seed {s}, variant {name} ===")
      vdir = os.path.join(main, "variants", name)
      _reuse(main, vdir)
      chosen = wd.read_json(os.path.join(main, "results.json"))["lr"]
      pipeline.run(variant_config(config, s, name, os.path.join(main, "at"),
                                  lr=chosen), vdir)
  return aggregate(workdir, seeds, config)


# ------------------------------------------------------------- aggregate
def _load_run(run_dir: str) -> tuple[dict, dict]:
  return (wd.read_json(os.path.join(run_dir, "results.json")),
          records.load(os.path.join(run_dir, "records.npz")))


def _model_records(rec: dict, model: str) -> dict:
  prefix = model + "/"
  return {k[len(prefix):]: v for k, v in rec.items() if k.startswith(prefix)}


def _stack(recs: list[dict]) -> dict:
  """Per-seed records of one model concatenated: clean/adv `[seeds·n]`, and
  OOD cells `{'ood/c/s'}` concatenated likewise."""
  return {k: np.concatenate([r[k] for r in recs]) for k in recs[0]}


def compare(base: list[dict], other: list[dict], seed: int = 0) -> dict:
  """Model `other` vs `base` over seeds: per metric, per-seed values and Δ,
  the across-seed summary and the pooled paired interval/test."""
  out = {}
  pooled = pipeline.paired(_stack(base), _stack(other), seed)
  for m in METRICS:
    if m == "ood" and not pipeline.ood_table(base[0]):
      continue
    a = [pipeline.summarize_records(r)[m] for r in base]
    b = [pipeline.summarize_records(r)[m] for r in other]
    d = [y - x for x, y in zip(a, b)]
    ma, sa, _, _ = stats.seed_summary(a)
    mb, sb, _, _ = stats.seed_summary(b)
    md, sd, lo, hi = stats.seed_summary(d)
    p = pooled[m]
    real = (p["verdict"] == "significant" and len(d) > 1
            and (lo > 0 or hi < 0))
    out[m] = {"base": a, "other": b, "delta": d,
              "base_mean": ma, "base_std": sa,
              "other_mean": mb, "other_std": sb,
              "delta_mean": md, "delta_std": sd, "delta_seed_ci95": [lo, hi],
              "pooled": p, "verdict": "real" if real else (
                  "significant on the pooled test images only"
                  if p["verdict"] == "significant" else "within noise")}
  return out


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
  at = [_model_records(runs[s][1], "at") for s in seeds]
  rift = [_model_records(runs[s][1], "rift") for s in seeds]
  first = runs[seeds[0]][0]
  out = {"seeds": seeds, "n_test": first["n_test"], "ood_set": first.get("ood_set"),
         "main": compare(at, rift),
         "per_seed": {s: {k: runs[s][0][k] for k in
                          ("module", "modules", "alpha", "lr", "at", "rift",
                           "timing_s")} for s in seeds},
         "ablations": {}, "variants": {}, "at_curves": {}}
  for s in seeds:
    done = os.path.join(workdir, f"seed_{s}", "at", "done.json")
    if os.path.exists(done):
      out["at_curves"][s] = [{k: h[k] for k in ("epoch", "val_clean", "val_adv")}
                             for h in wd.read_json(done)["history"]]
  names = sorted(set.intersection(*[set(runs[s][0].get("ablations", {}))
                                    for s in seeds])) if seeds else []
  for name in names:
    out["ablations"][name] = {
        "modules": {s: runs[s][0]["ablations"][name]["modules"] for s in seeds},
        **compare(at, [_model_records(runs[s][1], name) for s in seeds])}
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
        **compare([_model_records(runs[s][1], "at") for s in vs],
                  [_model_records(vruns[s][1], "rift") for s in vs])}
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
           "| Δ, pooled paired [95 % CI], p | "
           + " | ".join(f"{report.delta_cell(comp[m]['pooled'])}, p = "
                        f"{comp[m]['pooled'].get('p_mcnemar', comp[m]['pooled'].get('p_permutation')):.3g}"
                        for m in ms) + " |",
           "| verdict | " + " | ".join(comp[m]["verdict"] for m in ms) + " |"]
  return lines


def markdown(out: dict) -> str:
  seeds = out["seeds"]
  lines = ["# RiFT study", "",
           f"Seeds: {', '.join(map(str, seeds))}. Test split: {out['n_test']:,} "
           f"images (the same for every seed). OOD: {out.get('ood_set')}.", "",
           "## AT vs AT+RiFT (paper Table 1 layout; mean ± std over seeds)", ""]
  lines += _table(out["main"], "AT", "AT+RiFT")
  lines += ["", "Δ = AT+RiFT − AT in percentage points. The t-interval is over "
            "seeds (training randomness); the pooled paired interval "
            "concatenates every seed's per-example records (test-image noise; "
            "exact McNemar for Std/Adv, paired permutation for OOD). 'real' "
            "needs both intervals to exclude 0.", "",
            "| seed | module | α | lr | Std AT → RiFT | OOD AT → RiFT | Adv AT → RiFT "
            "| wall (min) |", "|---|---|---|---|---|---|---|---|"]
  for s, r in out["per_seed"].items():
    def pair(k):
      a, b = r["at"].get(k), r["rift"].get(k)
      return "–" if a is None else f"{a:.2f} → {b:.2f}"
    lines.append(f"| {s} | `{r['module']}` | {r['alpha']:.1f} | {r['lr']:g} | "
                 f"{pair('clean')} | {pair('ood')} | {pair('adv')} | "
                 f"{sum(r['timing_s'].values()) / 60:.1f} |")
  if out["ablations"]:
    lines += ["", "## Ablations (paper Table 3 layout), each vs AT", "",
              "| fine-tuned | Std | OOD | Adv |", "|---|---|---|---|"]
    rows = {"non_robust_critical (RiFT)": out["main"], **out["ablations"]}
    for name, comp in rows.items():
      lines.append(f"| {name} | " + " | ".join(
          f"{_ms(comp[m]['other_mean'], comp[m]['other_std'])} "
          f"(Δ {report.delta_cell(comp[m]['pooled'])})" if m in comp else "–"
          for m in METRICS) + " |")
  if out["variants"]:
    lines += ["", "## Investigations (each vs the same seeds' AT)", ""]
    for name, v in out["variants"].items():
      lines += [f"### {name}: {v['changes']} (seeds {', '.join(map(str, v['seeds']))})",
                ""]
      lines += _table(v, "AT", f"AT+RiFT ({name})")
      lines += [""] + [f"- seed {s}: module `{p['module']}`, α {p['alpha']:.1f}, "
                       f"lr {p['lr']:g}" for s, p in v["per_seed"].items()] + [""]
  if out["at_curves"]:
    lines += ["## θ_AT training (validation accuracy per epoch)", "",
              "| seed | clean per epoch | PGD per epoch |", "|---|---|---|"]
    for s, c in out["at_curves"].items():
      clean = ", ".join(f"{h['val_clean']:.1f}" for h in c)
      adv = ", ".join(f"{h['val_adv']:.1f}" for h in c)
      lines.append(f"| {s} | {clean} | {adv} |")
  lines += ["", "Figure: `study.png` (Δ per metric with both intervals and "
            "every seed; θ_AT validation curves).", ""]
  return "\n".join(lines)


def plot(out: dict, path: str) -> None:
  comps = {"RiFT": out["main"], **{f"{k}": v for k, v in out["variants"].items()}}
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
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
  fig.savefig(path, dpi=120)
  plt.close(fig)
