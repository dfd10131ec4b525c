"""The robustness evaluation suite of a checkpoint (`launch/evaluate.py`).

`run(config, fns, variables, split, workdir)` evaluates the entries of
`config.evaluate.suite` (a comma list) on one split:

  clean       clean accuracy
  pgd         PGD-k with restarts (CE); an example is robust only if it
              survives every restart and its clean prediction is right
  pgd_cw      the same on the CW margin loss
  apgd_ce     APGD-CE;  apgd_dlr: APGD-DLR;  apgd_t: APGD-T (targeted DLR)
  fab, fab_t  FAB (untargeted) / FAB-T;  square: Square (black-box)
  autoattack  AutoAttack (`evaluate.autoattack.version`): 'standard' =
              APGD-CE → APGD-T → FAB-T → Square, each on the survivors;
              'plus'; 'rand' (models with randomness); or the attacks of
              `evaluate.autoattack.attacks`
  ood         common corruptions (`rift_jax.data.corruptions.load_sets`)

Every attack after the first of an entry runs only on the examples still
robust (`autoattack.run_suite`). Results: a JSON-ready dict (accuracy per
entry, per attack, seconds) and the per-example correctness of everything
(`rift_jax.evaluation.records`), rendered by `markdown`.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from rift_jax import attacks, data, evaluation
from rift_jax.attacks import apgd
from rift_jax.data import corruptions
from rift_jax.evaluation import autoattack
from rift_jax.errors import UserError, check_choice, check_range

ENTRIES = ("clean", "pgd", "pgd_cw", "apgd_ce", "apgd_dlr", "apgd_t", "fab",
           "fab_t", "square", "autoattack", "ood")
SPLITS = ("test", "val")


def parse(text: str) -> list[str]:
  """'clean,pgd,ood' -> ['clean', 'pgd', 'ood'], each entry checked."""
  entries = [s.strip() for s in str(text).split(",") if s.strip()]
  if not entries:
    raise UserError("evaluate.suite is empty; choose from: " + ", ".join(ENTRIES))
  for e in entries:
    check_choice("evaluate.suite entry", e, ENTRIES)
  return entries


def _steps_per_call(apgd_block):
  """evaluate.apgd.steps_per_call ('auto' when a saved config predates it)."""
  return apgd_block.get("steps_per_call", "auto")


def attacks_for(entry: str, ev) -> list[autoattack.Attack]:
  """The attacks one suite entry runs, in order (config -> Attack list)."""
  check_range("evaluate.epsilon", float(ev.epsilon), 0.0, 1.0, low_open=True)
  eps, norm = float(ev.epsilon), str(ev.norm)
  if entry in ("pgd", "pgd_cw"):
    p = ev.pgd
    cfg = attacks.PGDConfig(
        epsilon=eps, step_size=float(p.step_size), num_steps=int(p.num_steps),
        norm=norm, loss="ce" if entry == "pgd" else "margin",
        restarts=int(p.restarts), unroll=ev.apgd.unroll).validate(
            f"evaluate.{entry}")
    return [autoattack.Attack(entry, cfg)]
  aa = ev.autoattack
  if entry in ("autoattack", "fab", "fab_t", "square"):
    names = [n.strip() for n in str(aa.attacks).split(",") if n.strip()]
    return autoattack.autoattack_suite(
        aa.version if entry == "autoattack" else "plus", eps, norm,
        names=names if entry == "autoattack" else [entry],
        num_steps=int(aa.num_steps), num_target_classes=int(aa.num_target_classes),
        square_queries=int(aa.square_queries), eot_iter=int(aa.eot_iter),
        restarts=None if entry == "autoattack" else 1, unroll=ev.apgd.unroll,
        steps_per_call=_steps_per_call(ev.apgd),
        prefix="evaluate.autoattack")
  a = ev.apgd
  kw = dict(epsilon=eps, norm=norm, num_steps=int(a.num_steps),
            restarts=int(a.restarts), unroll=a.unroll,
            steps_per_call=_steps_per_call(a))
  cfg = apgd.APGDConfig(loss=apgd.LOSS_OF[entry], num_target_classes=int(
      a.num_target_classes), **kw).validate(f"evaluate.{entry}")
  return [autoattack.Attack(entry, cfg)]


def describe(entry: str, ev) -> str:
  """A row label naming the attack settings."""
  eps = f"ε={float(ev.epsilon):.4g} {ev.norm}"
  p, a = ev.pgd, ev.apgd
  if entry in ("pgd", "pgd_cw"):
    loss = "CE" if entry == "pgd" else "CW margin"
    return (f"PGD-{p.num_steps}×{p.restarts} ({loss}, step {float(p.step_size):.4g}, "
            f"{eps})")
  aa = ev.autoattack
  if entry == "autoattack":
    names = " → ".join(ATTACK_LABELS[x.name] for x in attacks_for(entry, ev))
    return (f"AutoAttack {aa.version}: {names} ({aa.num_steps} steps, "
            f"{aa.num_target_classes} targets, {aa.square_queries} queries, {eps})")
  if entry in ("fab", "fab_t"):
    t = f", {aa.num_target_classes} targets" if entry == "fab_t" else ""
    return f"{ATTACK_LABELS[entry]} ({aa.num_steps} steps{t}, {eps})"
  if entry == "square":
    return f"Square ({aa.square_queries} queries, {eps})"
  steps = f"{a.num_steps} steps, {a.restarts} restart(s)"
  if entry == "apgd_t":
    steps += f", {a.num_target_classes} targets"
  return f"{ATTACK_LABELS[entry]} ({steps}, {eps})"


ATTACK_LABELS = {"apgd_ce": "APGD-CE", "apgd_dlr": "APGD-DLR", "apgd_t": "APGD-T",
                 "fab": "FAB", "fab_t": "FAB-T", "square": "Square"}


def check(ev) -> list[str]:
  """Validates the whole `evaluate` block before any work; returns the
  suite's entries."""
  entries = parse(ev.suite)
  check_choice("evaluate.split", ev.split, SPLITS)
  check_range("evaluate.num_examples", int(ev.num_examples), 0)
  check_range("evaluate.batch_size", int(ev.batch_size), 1)
  check_choice("evaluate.autoattack.version", ev.autoattack.version,
               autoattack.VERSIONS)
  for e in entries:
    if e not in ("clean", "ood"):
      attacks_for(e, ev)
  if "ood" in entries:
    corruptions.check_block(ev.ood, "evaluate.ood")
  return entries


def run(config, fns, variables, split: data.Split, *, workdir: str,
        source: str = "", mesh=None, progress: bool = True
        ) -> tuple[dict, dict[str, np.ndarray]]:
  """Evaluates `config.evaluate.suite` on `split`.

  Returns (results, per-example records). results: {'checkpoint', 'split',
  'n', 'clean', 'attacks': {entry: {'label', 'robust': {attack: %},
  'final': %}}, 'ood': {...}, 'seconds': {entry: s}, 'config'}.
  """
  ev = config.evaluate
  entries = check(ev)
  batch_size = int(ev.batch_size)
  rng = jax.random.PRNGKey(int(ev.seed))
  ood_sets = None
  if "ood" in entries and ev.ood.source not in ("generated", "generate"):
    ood_sets = load_ood(config, split, workdir, progress)  # a missing set fails early
  results = {"checkpoint": source, "split": ev.split, "n": len(split),
             "attacks": {}, "seconds": {}, "config": config.to_dict()}
  clean = autoattack.run_suite(fns, variables, split, [], batch_size, rng,
                               mesh, progress=False)
  records = {"clean": clean["per_example"]["clean"]}
  results["clean"] = clean["clean"]
  print(f"clean: {clean['clean']:.2f}% of {len(split)}")
  for k, entry in enumerate(entries):
    t0 = time.time()
    if entry == "clean":
      continue
    if entry == "ood":
      sets = ood_sets or load_ood(config, split, workdir, progress)
      evaluator = evaluation.Evaluator(fns, None, batch_size, mesh)
      key = jax.random.fold_in(rng, k)
      table = corruptions.correctness_table(
          sets, lambda s: evaluator.per_example(variables, s, key)["clean"],
          progress)
      acc = corruptions.accuracy_of(table)
      n = len(next(iter(next(iter(sets.values())).values())))
      results["ood"] = {"source": ev.ood.source, "n": n,
                        "clean": 100.0 * float(records["clean"][:n].mean()),
                        "accuracy": acc, "summary": corruptions.summarize(acc)}
      for name, by in table.items():
        for sev, v in by.items():
          records[f"ood/{name}/{sev}"] = v
      print(f"OOD mean ({results['ood']['summary']['set'].split(':')[0]}): "
            f"{results['ood']['summary']['mean']:.2f}%")
    else:
      r = autoattack.run_suite(fns, variables, split, attacks_for(entry, ev),
                               batch_size, jax.random.fold_in(rng, k), mesh,
                               progress)
      final = list(r["robust"].values())[-1]
      results["attacks"][entry] = {"label": describe(entry, ev),
                                   "robust": r["robust"], "final": final,
                                   "seconds": r["seconds"], "cost": r["cost"],
                                   "warnings": r["warnings"],
                                   "broken_by": broken_by(r)}
      for w in r["warnings"]:
        print(f"warning ({entry}): {w}")
      for name, v in r["per_example"].items():
        if name != "clean":
          records[f"{entry}/{name}"] = v
      records[entry] = list(r["per_example"].values())[-1]
      for key, v in r["attribution"].items():
        records[f"{entry}/broken_by/{key}"] = v
      print(f"{describe(entry, ev)}: {final:.2f}%")
    results["seconds"][entry] = round(time.time() - t0, 1)
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


def load_ood(config, split, workdir, progress=True) -> corruptions.Sets:
  ev = config.evaluate
  return corruptions.load_sets(ev.ood, split, data_dir=config.data.data_dir,
                               workdir=workdir, seed=int(ev.ood.seed),
                               prefix="evaluate.ood", progress=progress)


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
