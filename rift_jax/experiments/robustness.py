"""The robustness evaluation of a checkpoint (`launch.evaluate`): its
`evaluate` config block, checked once and turned into a `suite.Plan`.

`config.evaluate.suite` is a comma list of entries:

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
"""
from __future__ import annotations

import os

import jax

from rift_jax import attacks, data
from rift_jax.attacks import apgd
from rift_jax.data import corruptions
from rift_jax.errors import UserError, check_choice, check_range
from rift_jax.evaluation import autoattack, suite
from rift_jax.evaluation.suite import ATTACK_LABELS

ENTRIES = ("clean", "pgd", "pgd_cw", "apgd_ce", "apgd_dlr", "apgd_t", "fab",
           "fab_t", "square", "autoattack", "ood")
SPLITS = ("test", "val")
# Where `evaluate` keeps each attack entry's state (`autoattack.run_suite`).
STATE_DIR = "suite_state"


def parse(text: str) -> list[str]:
  """'clean,pgd,ood' -> ['clean', 'pgd', 'ood'], each entry checked."""
  entries = [s.strip() for s in str(text).split(",") if s.strip()]
  if not entries:
    raise UserError("evaluate.suite is empty; choose from: " + ", ".join(ENTRIES))
  for e in entries:
    check_choice("evaluate.suite entry", e, ENTRIES)
  return entries


def attacks_for(entry: str, ev) -> list[autoattack.Attack]:
  """The attacks one suite entry runs, in order (config -> Attack list)."""
  check_range("evaluate.epsilon", float(ev.epsilon), 0.0, 1.0, low_open=True)
  eps, norm = float(ev.epsilon), str(ev.norm)
  steps_per_call = ev.apgd.get("steps_per_call", "auto")
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
        steps_per_call=steps_per_call, prefix="evaluate.autoattack")
  a = ev.apgd
  cfg = apgd.APGDConfig(
      loss=apgd.LOSS_OF[entry], num_target_classes=int(a.num_target_classes),
      epsilon=eps, norm=norm, num_steps=int(a.num_steps),
      restarts=int(a.restarts), unroll=a.unroll,
      steps_per_call=steps_per_call).validate(f"evaluate.{entry}")
  return [autoattack.Attack(entry, cfg)]


def describe(entry: str, ev, entry_attacks=()) -> str:
  """A row label naming the attack settings."""
  eps = f"ε={float(ev.epsilon):.4g} {ev.norm}"
  p, a = ev.pgd, ev.apgd
  if entry in ("pgd", "pgd_cw"):
    loss = "CE" if entry == "pgd" else "CW margin"
    return (f"PGD-{p.num_steps}×{p.restarts} ({loss}, step {float(p.step_size):.4g}, "
            f"{eps})")
  aa = ev.autoattack
  if entry == "autoattack":
    names = " → ".join(ATTACK_LABELS[x.name] for x in entry_attacks)
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


def plan(config) -> suite.Plan:
  """Checks the whole `evaluate` block before any work (one line per bad
  value) and returns what `suite.run` executes."""
  ev = config.evaluate
  names = parse(ev.suite)
  check_choice("evaluate.split", ev.split, SPLITS)
  check_range("evaluate.num_examples", int(ev.num_examples), 0)
  check_range("evaluate.batch_size", int(ev.batch_size), 1)
  cpu_devices = int(ev.cpu_devices)
  check_range("evaluate.cpu_devices", cpu_devices, 1)
  if int(ev.batch_size) % cpu_devices:
    raise UserError(f"evaluate.batch_size={int(ev.batch_size)} is not divisible "
                    f"by evaluate.cpu_devices={cpu_devices}; use a multiple of it")
  check_choice("evaluate.autoattack.version", ev.autoattack.version,
               autoattack.VERSIONS)
  entries = []
  for name in names:
    if name in ("clean", "ood"):
      entries.append(suite.Entry(name, name))
      continue
    found = tuple(attacks_for(name, ev))
    entries.append(suite.Entry(name, describe(name, ev, found), found))
  if "ood" in names:
    corruptions.check_block(ev.ood, "evaluate.ood")
  return suite.Plan(tuple(entries), split=str(ev.split),
                    batch_size=int(ev.batch_size), seed=int(ev.seed),
                    ood_source=str(ev.ood.source))


def evaluate(config, the_plan: suite.Plan, fns, variables, split: data.Split,
             *, workdir: str, source: str = "", mesh=None,
             progress: bool = True) -> tuple[dict, dict]:
  """`suite.run` of `the_plan` with each attack entry's state kept in
  `<workdir>/suite_state/` (a killed evaluation continues where it
  stopped); the released OOD sets are read before any attack, so a missing
  one fails early. Results also record the config and the devices it ran on
  ('devices': platform, count), for planning a run elsewhere."""
  ev = config.evaluate
  names = [e.name for e in the_plan.entries]
  cache = {}

  def ood_sets():
    if "sets" not in cache:
      cache["sets"] = corruptions.load_sets(
          ev.ood, split, data_dir=config.data.data_dir, workdir=workdir,
          seed=int(ev.ood.seed), prefix="evaluate.ood", progress=progress)
    return cache["sets"]

  if "ood" in names and ev.ood.source != "generated":
    ood_sets()
  results, records = suite.run(
      the_plan, fns, variables, split, source=source, ood_sets=ood_sets,
      state_dir=os.path.join(workdir, STATE_DIR), mesh=mesh,
      progress=progress and jax.process_index() == 0)
  results["config"] = config.to_dict()
  results["devices"] = {"platform": jax.default_backend(),
                        "count": jax.device_count()}
  return results, records
