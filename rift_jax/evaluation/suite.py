"""A robustness evaluation of one model on one split, as a `Plan`: entries
run in order, each either the clean accuracy, a list of attacks
(`autoattack.Attack`: PGD, APGD, FAB, Square, AutoAttack's versions) or the
common corruptions. `launch.evaluate` builds the plan from its config
(`rift_jax.experiments.robustness`); `run` executes it and `markdown`
renders the results.

Every attack after the first of an entry runs only on the examples still
robust (`autoattack.run_suite`); with a `state_dir` each attack entry keeps
its state there after every batch, so a killed evaluation continues where
it stopped. Results: a JSON-ready dict (accuracy per entry, per attack,
seconds, cost, which attack broke which example) and the per-example
correctness of everything (`rift_jax.evaluation.records`).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import jax
import numpy as np

from rift_jax import data, evaluation
from rift_jax.data import corruptions
from rift_jax.evaluation import autoattack

ATTACK_LABELS = {"apgd_ce": "APGD-CE", "apgd_dlr": "APGD-DLR", "apgd_t": "APGD-T",
                 "fab": "FAB", "fab_t": "FAB-T", "square": "Square"}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One line of the evaluation: 'clean', 'ood', or attacks run in order
  on the survivors (`name` is then the entry's name, e.g. 'autoattack')."""
  name: str
  label: str
  attacks: tuple[autoattack.Attack, ...] = ()


@dataclasses.dataclass(frozen=True)
class Plan:
  """What to evaluate: the entries, the split's name (for the report), the
  batch size, the seed (entry k uses fold_in(PRNGKey(seed), k)) and the OOD
  source's name."""
  entries: tuple[Entry, ...]
  split: str = "test"
  batch_size: int = 500
  seed: int = 0
  ood_source: str = ""


def run(plan: Plan, fns, variables, split: data.Split, *, source: str = "",
        ood_sets: Callable[[], corruptions.Sets] | None = None,
        state_dir: str | None = None, mesh=None, progress: bool = True
        ) -> tuple[dict, dict[str, np.ndarray]]:
  """Evaluates `plan` on `split`.

  Args:
    ood_sets: returns the corrupted sets (needed by an 'ood' entry).
    state_dir: if given, attack entry `name` keeps its state in
      `<state_dir>/<name>.npz` (`autoattack.run_suite`'s `state_path`).

  Returns (results, per-example records). results: {'checkpoint', 'split',
  'n', 'clean', 'attacks': {entry: {'label', 'robust': {attack: %},
  'final': %, 'seconds', 'cost', 'warnings', 'broken_by'}}, 'ood': {...},
  'seconds': {entry: s}}.
  """
  batch_size = plan.batch_size
  rng = jax.random.PRNGKey(plan.seed)
  results = {"checkpoint": source, "split": plan.split, "n": len(split),
             "attacks": {}, "seconds": {}}
  clean = autoattack.run_suite(fns, variables, split, [], batch_size, rng,
                               mesh, progress=False)
  records = {"clean": clean["per_example"]["clean"]}
  results["clean"] = clean["clean"]
  print(f"clean: {clean['clean']:.2f}% of {len(split)}")
  for k, entry in enumerate(plan.entries):
    t0 = time.time()
    if entry.name == "clean":
      continue
    if entry.name == "ood":
      sets = ood_sets()
      evaluator = evaluation.Evaluator(fns, None, batch_size, mesh)
      key = jax.random.fold_in(rng, k)
      table = corruptions.correctness_table(
          sets, lambda s: evaluator.per_example(variables, s, key)["clean"],
          progress)
      acc = corruptions.accuracy_of(table)
      n = len(next(iter(next(iter(sets.values())).values())))
      results["ood"] = {"source": plan.ood_source, "n": n,
                        "clean": 100.0 * float(records["clean"][:n].mean()),
                        "accuracy": acc, "summary": corruptions.summarize(acc)}
      for name, by in table.items():
        for sev, v in by.items():
          records[f"ood/{name}/{sev}"] = v
      print(f"OOD mean ({results['ood']['summary']['set'].split(':')[0]}): "
            f"{results['ood']['summary']['mean']:.2f}%")
    else:
      state = (os.path.join(state_dir, f"{entry.name}.npz") if state_dir
               else None)
      r = autoattack.run_suite(fns, variables, split, entry.attacks,
                               batch_size, jax.random.fold_in(rng, k), mesh,
                               progress, state_path=state)
      final = list(r["robust"].values())[-1]
      results["attacks"][entry.name] = {
          "label": entry.label, "robust": r["robust"], "final": final,
          "seconds": r["seconds"], "cost": r["cost"],
          "warnings": r["warnings"], "broken_by": broken_by(r)}
      for w in r["warnings"]:
        print(f"warning ({entry.name}): {w}")
      for name, v in r["per_example"].items():
        if name != "clean":
          records[f"{entry.name}/{name}"] = v
      records[entry.name] = list(r["per_example"].values())[-1]
      for key, v in r["attribution"].items():
        records[f"{entry.name}/broken_by/{key}"] = v
      print(f"{entry.label}: {final:.2f}%")
    results["seconds"][entry.name] = round(time.time() - t0, 1)
  return results, records


def broken_by(r: dict) -> dict:
  """Per attack of a `run_suite` result: how many examples it broke first,
  per target rank for targeted attacks, and the median and largest
  ‖x_adv − x‖ of those."""
  who = r["attribution"]
  out = {}
  for k, name in enumerate(r["robust"]):
    mine = who["attack"] == k
    sizes = who["size"][mine]
    ranks = {int(t): int(np.sum(mine & (who["target_rank"] == t)))
             for t in np.unique(who["target_rank"][mine]) if t > 0}
    out[name] = {"count": int(mine.sum()), "by_target_rank": ranks,
                 "size_median": float(np.median(sizes)) if sizes.size else None,
                 "size_max": float(np.max(sizes)) if sizes.size else None}
  return out


def markdown(results: dict) -> str:
  """eval_report.md: accuracy per entry (per attack for ensembles, with
  seconds), and the OOD tables."""
  lines = ["# Robustness evaluation", "",
           f"checkpoint: `{results['checkpoint']}`  ",
           f"split: {results['split']} ({results['n']} images)", "",
           "| evaluation | accuracy (%) | seconds |", "|---|---|---|",
           f"| clean | {results['clean']:.2f} | |"]
  for entry, r in results["attacks"].items():
    lines.append(f"| {r['label']} | {r['final']:.2f} | "
                 f"{results['seconds'].get(entry, '')} |")
  for entry, r in results["attacks"].items():
    if len(r["robust"]) > 1:
      cost = r.get("cost", {})
      lines += ["", f"### {r['label']}", "",
                "| after attack | robust accuracy (%) | seconds | examples attacked "
                "| images/s | grad passes | forward passes |",
                "|---|---|---|---|---|---|---|"]
      for k, v in r["robust"].items():
        c = cost.get(k, {})
        lines.append(
            f"| {ATTACK_LABELS.get(k, k)} | {v:.2f} | {r['seconds'].get(k, '')} | "
            f"{c.get('examples_attacked', '')} | {c.get('images_per_s', '')} | "
            f"{c.get('grad_passes', ''):,} | {c.get('forward_passes', ''):,} |"
            if c else f"| {ATTACK_LABELS.get(k, k)} | {v:.2f} | "
            f"{r['seconds'].get(k, '')} | | | | |")
      by = r.get("broken_by")
      if by:
        lines += ["", "Which attack broke which example first (counts; ‖x_adv − x‖ "
                  "in the threat model's norm; eval_records.npz has them per "
                  "example under `<entry>/broken_by/`):", "",
                  "| attack | broke first | by target rank | median size | largest |",
                  "|---|---|---|---|---|"]
        for k, b in by.items():
          ranks = ", ".join(f"{t}: {c}" for t, c in b["by_target_rank"].items()) or "–"
          med = "–" if b["size_median"] is None else f"{b['size_median']:.4g}"
          big = "–" if b["size_max"] is None else f"{b['size_max']:.4g}"
          lines.append(f"| {ATTACK_LABELS.get(k, k)} | {b['count']} | {ranks} | "
                       f"{med} | {big} |")
      if cost:
        lines += ["", "Examples attacked: summed over the attack's runs (restarts, "
                  "targets), each run on the examples still robust; passes: model "
                  "evaluations in all ('grad': forward + backward; Square's are "
                  "an upper bound, a broken example stops being queried)."]
    for w in r.get("warnings", []):
      lines += ["", f"**Warning ({entry})**: {w}"]
  o = results.get("ood")
  if o:
    s = o["summary"]
    sevs = s["severities"]
    lines.append(f"| OOD mean ({s['set'].split(':')[0]}, severities "
                 f"{', '.join(map(str, sevs))}, {o['n']} images) | "
                 f"{s['mean']:.2f} | {results['seconds'].get('ood', '')} |")
    lines += ["", f"## OOD: {o['source']}; averaged set: {s['set']}", "",
              f"clean accuracy on the same {o['n']} images: {o['clean']:.2f}%", "",
              "| corruption | family | " + " | ".join(f"s{v}" for v in sevs)
              + " | mean |", "|---|---|" + "---|" * (len(sevs) + 1)]
    for name, by in o["accuracy"].items():
      lines.append(f"| {name} | {corruptions.FAMILIES.get(name, '')} | "
                   + " | ".join(f"{by[v]:.2f}" for v in sevs)
                   + f" | {s['per_corruption'][name]:.2f} |")
    lines += ["", "| family | mean |", "|---|---|"]
    lines += [f"| {f} | {v:.2f} |" for f, v in s["per_family"].items()]
    lines += ["", "| severity | mean |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in s["per_severity"].items()]
  return "\n".join(lines) + "\n"
