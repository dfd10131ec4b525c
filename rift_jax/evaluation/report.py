"""Reports: a RiFT run's report.md and figures, and the method table.

Every difference between two models is shown with its 95 % paired interval
and a plain verdict ("significant" / "within noise at n = ..."), from the
`paired` block that `pipeline.build_results` computes on per-example
records (`rift_jax.evaluation.stats`).
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np
from matplotlib.figure import Figure

from rift_jax import workdir as wd
from rift_jax.evaluation import stats


def _fmt(v, digits=2):
  return "–" if v is None else f"{v:.{digits}f}"


def _signed(v, digits=2):
  return "–" if v is None else f"{v:+.{digits}f}"


def delta_cell(p: dict | None) -> str:
  """'+1.20 [+0.30, +2.10]' from a paired entry, or '–'."""
  if not p:
    return "–"
  lo, hi = p["ci95"]
  return f"{_signed(p['delta'])} [{_signed(lo)}, {_signed(hi)}]"


def p_value(p: dict) -> float | None:
  """The p-value of a paired entry (`rift_jax.evaluation.paired`), Holm-adjusted when
  the entry carries the adjustment (a study's family of tests)."""
  return p.get("p_holm", p.get("p_mcnemar", p.get("p_permutation")))


def p_cell(p: dict) -> str:
  """'p = 0.012', 'p < 1e-4' at a Monte-Carlo floor, '(Holm)' if adjusted."""
  pv = p_value(p)
  if pv is None:
    return ""
  floor = None if "p_holm" in p else p.get("p_floor")
  return stats.format_p(pv, floor) + (" (Holm)" if "p_holm" in p else "")


def verdict_cell(p: dict | None) -> str:
  if not p:
    return "–"
  v = p["verdict"]
  if v != "significant":
    v += f" at n = {p['n']:,}"
  pc = p_cell(p)
  out = v + (f" ({pc})" if pc else "")
  if "noninferior" in p:
    out += ("; kept: non-inferior at −" if p["noninferior"]
            else "; kept: not shown at −") + f"{p['margin']:g} pp"
  return out


# ----------------------------------------------------------- interpolation
def curve_band(curve: list[dict], per_example: dict, num_resamples: int = 2000
               ) -> list[dict]:
  """95 % paired-bootstrap band of the validation α curve: for every α,
  acc(α=0) + the interval of acc(α) − acc(α=0) on the same images. Where
  the band covers the α = 0 level, the gain over θ_AT is within noise."""
  i0 = next(i for i, c in enumerate(curve) if c["alpha"] == 0.0)
  out = []
  for j, c in enumerate(curve):
    row = {"alpha": c["alpha"]}
    for k in ("clean", "adv"):
      ok = np.asarray(per_example[k])
      _, lo, hi = stats.paired_bootstrap(ok[i0], ok[j], num_resamples=num_resamples)
      base = 100.0 * float(ok[i0].mean())
      row[f"{k}_lo"], row[f"{k}_hi"] = base + lo, base + hi
    out.append(row)
  return out


def plot_interpolation(results: dict, path: str) -> None:
  curve, band = results["interpolation"], results.get("interpolation_band")
  a = [c["alpha"] for c in curve]
  fig = Figure(figsize=(5.5, 4))
  ax = fig.subplots()
  ax.plot(a, [c["clean"] for c in curve], "o-", label="clean (val)")
  ax.set_xlabel("α   (θ = (1−α)·θ_AT + α·θ_FT)")
  ax.set_ylabel("clean accuracy (%)")
  ax2 = ax.twinx()
  ax2.plot(a, [c["adv"] for c in curve], "s-", color="tab:orange",
           label="PGD (val)")
  ax2.set_ylabel("robust accuracy (%)")
  if band:
    ax.fill_between(a, [b["clean_lo"] for b in band], [b["clean_hi"] for b in band],
                    color="tab:blue", alpha=0.15, lw=0,
                    label="95 % paired band vs α = 0")
    ax2.fill_between(a, [b["adv_lo"] for b in band], [b["adv_hi"] for b in band],
                     color="tab:orange", alpha=0.15, lw=0)
  ax.axvline(results["alpha"], color="gray", ls="--", lw=1)
  lines = ax.get_legend_handles_labels()
  lines2 = ax2.get_legend_handles_labels()
  ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower left", fontsize=7)
  ax.set_title(f"Interpolation (validation), chosen α = {results['alpha']:.1f}")
  fig.tight_layout()
  wd.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def plot_mrc(results: dict, path: str) -> None:
  """Per module: MRC (bars, log scale) and robust-accuracy drop (line)."""
  names = list(results["mrc"])
  mrc = [max(results["mrc"][n]["mrc"], 1e-6) for n in names]
  drop = [results["mrc"][n]["adv_acc_drop"] for n in names]
  fig = Figure(figsize=(max(6, 0.42 * len(names)), 4))
  ax = fig.subplots()
  colors = ["tab:red" if n in results["modules"] else "tab:blue" for n in names]
  ax.bar(range(len(names)), mrc, color=colors)
  ax.set_yscale("log")
  ax.set_ylabel("MRC (loss increase)")
  ax.set_xticks(range(len(names)), names, rotation=75, fontsize=7)
  ax2 = ax.twinx()
  ax2.plot(range(len(names)), drop, "k.-", label="robust acc. drop (pp)")
  ax2.set_ylabel("robust accuracy drop (pp)")
  ax2.legend(loc="upper left", fontsize=8)
  ax.set_title("Module robust criticality (red: fine-tuned module)")
  fig.tight_layout()
  wd.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


# ------------------------------------------------------------- report.md
def markdown(results: dict) -> str:
  at, rf = results["at"], results["rift"]
  p = results.get("paired", {})
  cfg = results.get("config", {})
  ta = results.get("test_attack", {})
  ood_p = p.get("ood")
  lines = [
      "# RiFT report", "",
      f"Data: {cfg.get('data', {}).get('name')}, model: "
      f"{cfg.get('model', {}).get('name')} (width {cfg.get('model', {}).get('width')}), "
      f"base method: {results.get('method')}.",
      "",
      f"Test split: {results.get('n_test')} images. Adv = PGD-{ta.get('num_steps')} "
      f"(ε = {ta.get('epsilon', 0):.4g}, step {ta.get('step_size', 0):.4g}, "
      f"{ta.get('restarts')} restarts, an example counts as robust only if it "
      "survives every restart and is classified correctly clean). OOD = mean "
      "clean accuracy over "
      f"{results.get('ood_set') or 'no corruption set (OOD disabled)'}"
      + (f", on the first {ood_p['n']:,} test images" if ood_p else "") + ".",
      "",
      "| model | Std | OOD | Adv |", "|---|---|---|---|",
      f"| AT | {_fmt(at['clean'])} | {_fmt(at.get('ood'))} | {_fmt(at['adv'])} |",
      f"| AT+RiFT | {_fmt(rf['clean'])} | {_fmt(rf.get('ood'))} | {_fmt(rf['adv'])} |",
      f"| Δ [95 % paired CI] | {delta_cell(p.get('clean'))} | "
      f"{delta_cell(ood_p)} | {delta_cell(p.get('adv'))} |",
      f"| verdict | {verdict_cell(p.get('clean'))} | {verdict_cell(ood_p)} | "
      f"{verdict_cell(p.get('adv'))} |",
      "",
      "Δ = AT+RiFT − AT in percentage points with a 95 % percentile bootstrap "
      "interval over test images (paired: both models on the same images); "
      "p = exact McNemar test (Std, Adv) or a paired sign-flip permutation test "
      "of the per-image mean over corruptions × severities (OOD). A difference "
      "whose interval contains 0 is within the noise of this test set.",
      "",
      f"Fine-tuned module(s): `{', '.join(results['modules'])}` "
      f"(target: {results.get('target')}), lr {results.get('lr')}"
      + (f" (chosen on validation from {results['lr_sweep']})"
         if len(results.get("lr_sweep") or []) > 1 else "")
      + f", chosen α = {results['alpha']:.2f} (validation: highest clean accuracy "
      "with robust accuracy ≥ robust(α=0) − tolerance).",
      "",
  ]
  if results.get("ablations"):
    lines += ["## Ablations (paper Table 3)", "",
              "| fine-tuned | modules | α | Std | OOD | Adv | Δ Std | Δ Adv |",
              "|---|---|---|---|---|---|---|---|",
              f"| {results.get('target')} | {', '.join(results['modules'])} | "
              f"{results['alpha']:.2f} | {_fmt(rf['clean'])} | {_fmt(rf.get('ood'))} | "
              f"{_fmt(rf['adv'])} | {delta_cell(p.get('clean'))} | "
              f"{delta_cell(p.get('adv'))} |"]
    for name, a in results["ablations"].items():
      mods = a["modules"]
      mods = ", ".join(mods) if len(mods) <= 3 else f"{len(mods)} modules"
      ap = a.get("paired", {})
      lines.append(f"| {name} | {mods} | {a['alpha']:.2f} | {_fmt(a['clean'])} | "
                   f"{_fmt(a.get('ood'))} | {_fmt(a['adv'])} | "
                   f"{delta_cell(ap.get('clean'))} | {delta_cell(ap.get('adv'))} |")
    lines.append("")
  cands = results.get("candidates")
  lines += ["## MRC ranking (lowest first)", "",
            "‖Δw‖/‖w‖ at the MRC point (the ball's radius is ε); steps: ascent "
            "steps per pass × passes."
            + (" Candidate: a module the fine-tuning target may pick "
               f"(rift.finetune.candidates="
               f"{cfg.get('rift', {}).get('finetune', {}).get('candidates')!r})."
               if cands else ""), "",
            "| rank | module | MRC | robust acc drop (pp) | ‖Δw‖/‖w‖ | steps "
            "| candidate |", "|---|---|---|---|---|---|---|"]
  ranked = sorted(results["mrc"].items(), key=lambda kv: kv[1]["mrc"])
  for i, (name, v) in enumerate(ranked, 1):
    steps = (f"{v['steps_per_pass']} × {v['steps'] // max(v['steps_per_pass'], 1)}"
             if v.get("steps_per_pass") else "–")
    cand = "–" if cands is None else ("yes" if name in cands else "")
    lines.append(f"| {i} | `{name}` | {v['mrc']:.4g} | {v['adv_acc_drop']:.2f} | "
                 f"{v['relative_norm']:.3f} | {steps} | {cand} |")
  hist = results.get("finetune_history")
  if hist:
    lines += ["", "## Fine-tuning curve (validation clean accuracy)", "",
              "| epoch | train loss | val clean |", "|---|---|---|"]
    best = (results.get("finetune") or {}).get("best_epoch")
    for h in hist:
      mark = " ← θ_FT" if h["epoch"] == best else (" (θ)" if h["epoch"] == 0 else "")
      lines.append(f"| {h['epoch']}{mark} | {_fmt(h.get('train_loss'), 4)} | "
                   f"{h['val_clean']:.2f} |")
  band = {b["alpha"]: b for b in results.get("interpolation_band") or []}
  has_ood = all("ood" in c for c in results["interpolation"])
  lines += ["", "## Interpolation (validation)", "",
            f"α rule: {results.get('alpha_rule', 'robust')}."
            + (" OOD: clean accuracy on corrupted validation images "
               "(rift.ood_val)." if has_ood else ""), "",
            "| α | clean | clean 95 % band | adv | adv 95 % band |"
            + (" OOD |" if has_ood else ""),
            "|---|---|---|---|---|" + ("---|" if has_ood else "")]
  for c in results["interpolation"]:
    mark = " ←" if abs(c["alpha"] - results["alpha"]) < 1e-9 else ""
    b = band.get(c["alpha"])
    cb = f"[{b['clean_lo']:.2f}, {b['clean_hi']:.2f}]" if b else "–"
    ab = f"[{b['adv_lo']:.2f}, {b['adv_hi']:.2f}]" if b else "–"
    lines.append(f"| {c['alpha']:.2f}{mark} | {c['clean']:.2f} | {cb} | "
                 f"{c['adv']:.2f} | {ab} |"
                 + (f" {c['ood']:.2f} |" if has_ood else ""))
  if band:
    lines += ["", "Bands: acc(α=0) + the 95 % paired-bootstrap interval of "
              "acc(α) − acc(α=0) on the validation images; where a band covers "
              "the α = 0 value, that α's difference is within noise."]
  det = results.get("ood_detail", {}) or {}
  if det.get("at") and det.get("rift"):
    lines += ["", "## OOD per corruption (test, mean over severities)", "",
              "| corruption | AT | AT+RiFT |", "|---|---|---|"]
    for name, v in det["at"]["per_corruption"].items():
      lines.append(f"| {name} | {v:.2f} | {det['rift']['per_corruption'][name]:.2f} |")
  fam = p.get("ood_family")
  if fam:
    lines += ["", "## OOD per corruption family (test, paired)", "",
              "| family | corruptions | Δ [95 % paired CI] | verdict |",
              "|---|---|---|---|"]
    for name, e in fam.items():
      lines.append(f"| {name} | {', '.join(e['corruptions'])} | {delta_cell(e)} "
                   f"| {verdict_cell(e)} |")
  swap = results.get("bn_swap")
  if swap:
    lines += ["", "## BatchNorm swap (test, no training; Δ vs AT, 95 % paired CI)",
              "", "Does RiFT's change follow the BN statistics or the kernels?", "",
              "| model | Std | OOD | Adv |", "|---|---|---|---|"]
    names = {"at_params_star_stats": "θ_AT's parameters, θ*'s BN statistics",
             "star_params_at_stats": "θ*'s parameters, θ_AT's BN statistics"}
    for name, e in swap.items():
      lines.append(f"| {names.get(name, name)} | " + " | ".join(
          f"{_fmt(e.get(k))} ({delta_cell(e['paired'].get(k))})"
          for k in ("clean", "ood", "adv")) + " |")
  lines += ["", "## Timing (s)", "", "| stage | seconds |", "|---|---|"]
  for k, v in results.get("timing_s", {}).items():
    lines.append(f"| {k} | {v:.1f} |")
  lines += ["", "Figures: `mrc.png` (MRC and robust-accuracy drop per module), "
            "`interpolation.png` (validation accuracy against α, with the "
            "paired bands).", ""]
  return "\n".join(lines)


def write_report(workdir: str, results: dict) -> None:
  wd.write_text(os.path.join(workdir, "report.md"), markdown(results))
  plot_mrc(results, os.path.join(workdir, "mrc.png"))
  plot_interpolation(results, os.path.join(workdir, "interpolation.png"))


# ------------------------------------------------------------ method table
def nrr(nat: float | None, rob: float | None) -> float | None:
  """Natural-robust ratio 2·Nat·Rob/(Nat + Rob) (harmonic mean), in %
  (the CURE paper's trade-off score)."""
  if nat is None or rob is None or nat + rob <= 0:
    return None
  return 2 * nat * rob / (nat + rob)


def _read(path):
  try:
    return wd.read_json(path)
  except (OSError, json.JSONDecodeError):
    return None


def _eval_results(workdir):
  for p in (os.path.join(workdir, "eval_results.json"),
            os.path.join(workdir, "eval", "eval_results.json")):
    r = _read(p)
    if r is not None:
      return r
  return None


def _train_seconds(workdir):
  total = 0.0
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        total += float(json.loads(line).get("train_s", 0.0))
  except (OSError, ValueError):
    return None
  return total


def collect(workdir: str) -> dict | None:
  """One row of the method table from a workdir, or None if it holds no
  finished run: a RiFT run (results.json: base vs base+RiFT with the paired
  intervals) or a training run (test_results.json, plus an
  eval_results.json of `launch.evaluate` in it or its `eval/` folder)."""
  name = os.path.basename(os.path.normpath(workdir))
  rift = _read(os.path.join(workdir, "results.json"))
  if rift is not None and "at" in rift and "rift" in rift:
    return {"kind": "rift", "run": name, "method": rift.get("method", "?"),
            "base": rift["at"], "rift": rift["rift"],
            "paired": rift.get("paired", {}),
            "module": rift.get("module"), "alpha": rift.get("alpha"),
            "seconds": sum((rift.get("timing_s") or {}).values()) or None,
            "train_seconds": (rift.get("timing_s") or {}).get("train_at")}
  test = _read(os.path.join(workdir, "test_results.json"))
  if test is None:
    return None
  config = _read(os.path.join(workdir, "config.json")) or {}
  row = {"kind": "train", "run": name, "method": config.get("method", "?"),
         "init_from": config.get("init_from") or "",
         "clean": test.get("test_clean"), "pgd": test.get("test_adv"),
         "aa": None, "seconds": _train_seconds(workdir)}
  ev = _eval_results(workdir)
  if ev is not None:
    row["clean"] = ev.get("clean", row["clean"])
    attacks = ev.get("attacks", {})
    if "pgd" in attacks:
      row["pgd"] = attacks["pgd"]["final"]
    if "autoattack" in attacks:
      row["aa"] = attacks["autoattack"]["final"]
  return row


def collect_all(patterns) -> list[dict]:
  """Rows from every workdir matching `patterns` (globs)."""
  from rift_jax.errors import UserError
  dirs = []
  for pattern in patterns:
    found = sorted(glob.glob(os.path.expanduser(pattern)))
    if not found:
      raise UserError(f"workdirs entry {pattern!r} matches no directory")
    dirs += [d for d in found if os.path.isdir(d)]
  rows = []
  for d in dirs:
    row = collect(d)
    if row is None:
      print(f"note: {d} has no finished run (results.json/test_results.json); "
            "skipped")
    else:
      rows.append(row)
  if not rows:
    raise UserError(f"no finished run in {', '.join(dirs)}")
  return rows


def method_table(rows: list[dict]) -> str:
  """The method table (RiFT's Table 2 layout) as markdown."""
  out = []
  rift = [r for r in rows if r["kind"] == "rift"]
  if rift:
    out += ["Base method vs base + RiFT (test; PGD = the run's rift.test_attack; "
            "Δ with its 95 % paired interval):", "",
            "| method | clean | PGD | OOD | +RiFT clean | +RiFT PGD | +RiFT OOD "
            "| Δ clean | Δ PGD | Δ OOD | module | α | wall (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rift:
      b, f, p = r["base"], r["rift"], r.get("paired", {})
      out.append(f"| {r['method']} | {_fmt(b.get('clean'))} | {_fmt(b.get('adv'))} | "
                 f"{_fmt(b.get('ood'))} | {_fmt(f.get('clean'))} | {_fmt(f.get('adv'))} | "
                 f"{_fmt(f.get('ood'))} | {delta_cell(p.get('clean'))} | "
                 f"{delta_cell(p.get('adv'))} | {delta_cell(p.get('ood'))} | "
                 f"{r['module']} | {_fmt(r['alpha'], 1)} | {_fmt(r['seconds'], 0)} |")
    out.append("")
  out += ["Natural-robust trade-off (test; NRR = 2·Nat·Rob/(Nat+Rob), Rob = "
          "AutoAttack if measured, else PGD):", "",
          "| method | run | clean | PGD | AutoAttack | NRR | train (s) |",
          "|---|---|---|---|---|---|---|"]
  for r in rows:
    if r["kind"] == "rift":
      b = r["base"]
      clean, pgd, aa = b.get("clean"), b.get("adv"), None
      secs = r.get("train_seconds")
    else:
      clean, pgd, aa, secs = r["clean"], r["pgd"], r["aa"], r["seconds"]
    rob = aa if aa is not None else pgd
    out.append(f"| {r['method']} | {r['run']} | {_fmt(clean)} | {_fmt(pgd)} | "
               f"{_fmt(aa)} | {_fmt(nrr(clean, rob))} | {_fmt(secs, 0)} |")
  return "\n".join(out) + "\n"
