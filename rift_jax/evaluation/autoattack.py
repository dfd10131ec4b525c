"""AutoAttack-style ensembles (Croce & Hein, ICML 2020) over the attacks of
`rift_jax.attacks`: APGD-CE and APGD-T (`rift_jax.attacks.apgd`), FAB-T and
Square.

`run_suite` evaluates a whole split the way AutoAttack does: every attack
(and every restart and target class of it) runs only on the examples that are
still robust, gathered into fixed-size batches so each attack compiles once,
and the robust accuracy after each attack is reported.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from rift_jax import attacks, data, evaluation, sharding
from rift_jax.attacks import apgd, fab, square
from rift_jax.evaluation import checks, resume
from rift_jax.errors import check_choice

# ------------------------------------------------------------- the suite
AttackConfig = Union[apgd.APGDConfig, attacks.PGDConfig, fab.FABConfig,
                     square.SquareConfig]


@dataclasses.dataclass(frozen=True)
class Attack:
  """One named attack of a suite: APGD, PGD, FAB or Square settings."""
  name: str
  cfg: AttackConfig

  def runs(self, num_classes: int) -> list[tuple[int, int]]:
    """(run index r, target rank or 0) pairs, in the authors' order."""
    return self.cfg.runs(num_classes)


VERSIONS = ("standard", "plus", "rand")
# AutoAttack's versions (fra31/auto-attack, autoattack.py `set_version`):
# the attacks in order and their restarts.
_VERSION_ATTACKS = {
    "standard": (("apgd_ce", 1), ("apgd_t", 1), ("fab_t", 1), ("square", 1)),
    "plus": (("apgd_ce", 5), ("apgd_dlr", 5), ("fab", 5), ("square", 1),
             ("apgd_t", 1), ("fab_t", 1)),
    "rand": (("apgd_ce", 1), ("apgd_dlr", 1)),
}
# The standard version for norm 'l1' (set_version with norm 'L1'; Croce &
# Hein, ICML 2021): APGD-CE with 5 restarts, APGD-T with 5 targets, both on
# the large-ε schedule; FAB-T (9 targets) and Square (L1) as for L∞/L2.
_L1_STANDARD = (("apgd_ce", 5), ("apgd_t", 1), ("fab_t", 1), ("square", 1))
_L1_APGD_TARGETS = 5


def autoattack_suite(version: str = "standard", epsilon: float = 8 / 255,
                     norm: str = "linf", *, names: Sequence[str] | None = None,
                     num_steps: int = 100, num_target_classes: int | None = None,
                     square_queries: int = 5000, eot_iter: int = 20,
                     restarts: int | None = None, unroll="auto",
                     steps_per_call="auto",
                     prefix: str = "autoattack") -> list[Attack]:
  """AutoAttack (Croce & Hein, ICML 2020) as a suite for `run_suite`.

  version 'standard': APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square
  (5,000 queries), one restart each — the version robustness numbers are
  judged by. 'plus': APGD-CE and APGD-DLR with 5 restarts, untargeted FAB
  with 5 restarts, Square, APGD-T, FAB-T. 'rand' (models with randomness):
  APGD-CE and APGD-DLR with the gradient averaged over `eot_iter` calls
  (expectation over transformations). APGD and FAB run `num_steps`
  iterations. `names` keeps a subset, in the version's order; `restarts`
  replaces the version's restarts of every attack; `num_target_classes`
  (default: the version's, 9) replaces the targets of APGD-T and FAB-T;
  `unroll` and `steps_per_call` set APGD's loop form (`apgd.APGDConfig`).

  norm 'l1' (Croce & Hein, "Mind the box", ICML 2021), version 'standard':
  L1-APGD-CE with 5 restarts and L1-APGD-T with 5 targets, both on the
  large-ε schedule (`apgd.large_eps_schedule`), FAB-T L1 with 9 targets,
  Square L1. 'plus' and 'rand' keep their settings (the authors' code runs
  them for L1 with a warning), APGD without the large-ε schedule.
  """
  check_choice(f"{prefix}.version", version, VERSIONS)
  check_choice(f"{prefix}.norm", norm, attacks.NORMS)
  l1_standard = norm == "l1" and version == "standard"
  plan = _L1_STANDARD if l1_standard else _VERSION_ATTACKS[version]
  if names:
    for n in names:
      check_choice(f"{prefix}.attacks entry", n, [a for a, _ in plan])
    plan = tuple((a, r) for a, r in plan if a in names)
  eot = eot_iter if version == "rand" else 1
  out = []
  for name, version_restarts in plan:
    kw = dict(epsilon=epsilon, norm=norm,
              restarts=version_restarts if restarts is None else restarts)
    if name.startswith("apgd"):
      targets = num_target_classes or (_L1_APGD_TARGETS if l1_standard else 9)
      cfg = apgd.APGDConfig(loss=apgd.LOSS_OF[name], num_steps=num_steps, eot_iter=eot,
                       num_target_classes=targets, unroll=unroll,
                       steps_per_call=steps_per_call, large_eps=l1_standard,
                       **kw).validate(f"{prefix}.{name}")
    elif name.startswith("fab"):
      cfg = fab.FABConfig(num_steps=num_steps, targeted=name == "fab_t",
                          num_target_classes=num_target_classes or 9,
                          **kw).validate(f"{prefix}.{name}")
    else:
      cfg = square.SquareConfig(num_queries=square_queries,
                                **kw).validate(f"{prefix}.{name}")
    out.append(Attack(name, cfg))
  return out


def _compiled_run(fns, cfg, restarts: int) -> Callable:
  """`_compiled_run_cached`, keyed also by the type of `cfg.unroll`: as
  dataclass fields `unroll=True` and `unroll=1` compare (and hash) equal,
  and must not share a program."""
  return _compiled_run_cached(fns, cfg, restarts,
                              type(getattr(cfg, "unroll", None)).__name__)


@functools.lru_cache(maxsize=None)
def _compiled_run_cached(fns, cfg, restarts: int, unroll_type: str) -> Callable:
  """One run `(variables, rank, r, x, y, key) -> (fooled, size) [batch]` of
  the attack `cfg` (one restart, one target: `cfg.single_run()`), compiled
  by the attack itself (`cfg.program`): the target rank and the run index
  are arguments, so one compiled run serves every restart and target.
  `restarts` is the attack's own count; `unroll_type` is part of the cache
  key only."""
  del unroll_type
  return cfg.program(
      lambda variables: (lambda xa: fns.logits(variables, xa, train=False)),
      restarts)


@functools.lru_cache(maxsize=None)
def _compiled_clean(fns) -> Callable:
  return jax.jit(lambda v, x, y: jnp.argmax(fns.logits(v, x, train=False), -1) == y)


@functools.lru_cache(maxsize=None)
def _compiled_logits(fns) -> Callable:
  return jax.jit(lambda v, x, y: fns.logits(v, x, train=False))


@functools.lru_cache(maxsize=None)
def _compiled_input_grad_norm(fns) -> Callable:
  """Per example, the L1 norm of ∇_x CE(f(x), y) (`checks.zero_gradients`)."""
  def norms(v, x, y):
    g = jax.grad(lambda xx: jnp.sum(attacks.cross_entropy(
        fns.logits(v, xx, train=False), y)))(x)
    return jnp.sum(jnp.abs(g), axis=tuple(range(1, g.ndim)))
  return jax.jit(norms)


# A fitted batch is a multiple of this many rows per device
# (`fitted_batch_size`).
FITTED_MULTIPLE = 4


def fitted_batch_size(n: int, batch_size: int, devices: int = 1) -> int:
  """The batch size of one attack run on `n` examples: the fewest batches of
  at most `batch_size` (⌈n / batch_size⌉), each an equal share of the `n`
  rounded up to a multiple of `FITTED_MULTIPLE` rows per device (and at
  most `batch_size`). So a batch carries fewer than 4 padding rows per
  device. Every run of a suite has one size (all its batches are equal),
  so a suite compiles each attack for at most as many sizes as it has runs
  (APGD-T's and FAB-T's targets mostly share one: their survivors differ
  by a few examples).

  E.g. batch_size 500: 1,000 examples → 500; 165 → 168; 61 → 64 (2 devices:
  64); 501 → 252 (two batches of 251); 0 → 500; batch_size 250: 249 → 250
  (252 capped).
  """
  if n <= 0:
    return batch_size
  per_batch = -(-n // -(-n // batch_size))
  step = FITTED_MULTIPLE * devices
  return min(batch_size, -(-per_batch // step) * step)


# Square breaking more than this many percentage points of the examples the
# white-box attacks left standing signals gradient masking (as AutoAttack's
# own check).
MASKING_THRESHOLD_PP = 0.2


def run_suite(fns, variables, split: data.Split, suite: Sequence[Attack],
              batch_size: int, rng: jax.Array, mesh: Any = None,
              progress: bool = True, state_path: str | None = None) -> dict:
  """Clean accuracy, then each attack in turn on the examples still robust.

  Args:
    fns: `models.ModelFns`; the model runs in inference mode (running BN stats).
    variables: the model variables; split: uint8 images and labels.
    suite: attacks in order (e.g. `autoattack_suite()`).
    batch_size: the most examples per compiled call (divisible by the
      devices). Each run attacks only the examples still robust, in
      ⌈survivors / batch_size⌉ batches of equal size (`fitted_batch_size`),
      each with fewer than `FITTED_MULTIPLE` padding rows per device, so a
      run on a third of the split computes about a third of the rows.
    rng: key; attack k, run r uses fold_in(fold_in(rng, k), r), batch i
      fold_in(·, i).
    state_path: if given, the evaluation's state is kept in this file
      (`resume.Journal`), written atomically after every batch; a call that
      finds it continues where the last one stopped and returns the same
      numbers as an uninterrupted call (a state written for another model,
      split, attack list, batch size or key is refused). A finished state
      returns its results at once.

  Returns:
    {'n', 'clean', 'robust': {attack name: robust accuracy (%) after it and
    all before it}, 'seconds': {attack name: wall seconds}, 'per_example':
    {'clean': bool [n], attack name: bool [n] robust after it},
    'attribution': {'attack' (index into `suite` of the attack that first
    broke the example; −1 misclassified clean, len(suite) still robust),
    'run', 'target_rank' (0 untargeted), 'size' (‖x_adv − x‖ in the
    attack's norm; NaN if never broken)}: arrays [n], 'cost':
    {attack name: seconds, runs, examples attacked (summed over runs: each
    run attacks the examples still robust), images/s, model passes per
    example and run ('grad': forward + backward, 'forward') and in all} — to
    plan a run on an accelerator from a CPU trial,
    'warnings': [text]} — AutoAttack's checks (`rift_jax.evaluation.checks`,
    on the first batch): randomness, outputs that are probabilities, zero
    input gradients, more targets than classes; and a black-box attack
    (Square) breaking more than 0.2 pp of the points the white-box attacks
    left robust (a sign of gradient masking).
  """
  mesh = mesh or sharding.make_mesh()
  variables = sharding.replicate(variables, mesh)
  journal = saved = None
  if state_path:
    journal = resume.Journal(state_path, {
        "model": resume.digest(variables), "data": resume.digest(
            split.images, split.labels),
        "attacks": "; ".join(f"{a.name}={a.cfg!r}" for a in suite),
        "batch_size": batch_size,
        "key": resume.digest(jax.random.key_data(rng))})
    saved = journal.load()
  if saved:
    out, arrays = _restore(*saved)
  else:
    out, arrays = _start(fns, variables, split, suite, batch_size, mesh)
  robust, who = arrays["robust"], arrays["attribution"]
  pos = out.pop("_position", {"attack": 0, "run": 0, "batch": 0})
  num_classes = out["num_classes"]

  def save(position):
    if journal:
      journal.save({**out, "_position": position}, _flat_arrays(arrays))

  if not saved:
    save(pos)
  for k, attack in enumerate(suite):
    if k < pos["attack"]:
      continue
    if attack.cfg.black_box and "white_box_survivors" not in arrays:
      arrays["white_box_survivors"] = robust.copy()
    run_fn = _compiled_run(fns, attack.cfg.single_run(), attack.cfg.restarts)
    runs = attack.runs(num_classes)
    # Each run also takes one forward for the targets and one to re-check.
    per_run = attack.cfg.passes(num_classes)
    per_run = {"grad": per_run["grad"], "forward": per_run["forward"] + 2}
    spent = out["_spent"].setdefault(attack.name, {"seconds": 0.0,
                                                   "attacked": 0})
    t0 = time.time() - spent["seconds"]
    bar = tqdm(total=len(runs), initial=min(pos["run"], len(runs)) if
               k == pos["attack"] else 0, desc=attack.name,
               disable=not progress, leave=False)
    for j, (r, rank) in enumerate(runs):
      if k == pos["attack"] and j < pos["run"]:
        continue
      if k == pos["attack"] and j == pos["run"] and pos["batch"]:
        todo, first = arrays["todo"], pos["batch"]
      else:
        todo, first = np.flatnonzero(robust), 0
        arrays["todo"] = todo
        spent["attacked"] += int(todo.size)
      key = jax.random.fold_in(jax.random.fold_in(rng, k), r)
      # The run's batch size follows from `todo` alone, so a resumed run
      # cuts the same batches.
      bs = fitted_batch_size(todo.size, batch_size, mesh.devices.size)

      def on_batch(i, result, k=k, j=j, r=r, rank=rank, todo=todo, bs=bs):
        fooled, size = result
        rows = todo[i * bs:(i + 1) * bs]
        broken = rows[fooled]
        robust[broken] = False
        who["attack"][broken], who["run"][broken] = k, r
        who["target_rank"][broken], who["size"][broken] = rank, size[fooled]
        spent["seconds"] = time.time() - t0
        save({"attack": k, "run": j, "batch": i + 1})

      rest = todo[first * bs:]
      if rest.size:
        evaluation.per_example(
            run_fn, evaluation.Batches(split.take(rest), bs, mesh),
            consts=(variables, jnp.int32(rank), jnp.int32(r)), rng=key,
            first=first, on_batch=on_batch)
      spent["seconds"] = time.time() - t0
      save({"attack": k, "run": j + 1, "batch": 0})
      bar.update(1)
      bar.set_postfix(robust=f"{100.0 * robust.mean():.2f}%")
    bar.close()
    out["robust"][attack.name] = 100.0 * robust.mean()
    arrays["per_example"][attack.name] = robust.copy()
    seconds = time.time() - t0
    out["seconds"][attack.name] = round(seconds, 2)
    out["cost"][attack.name] = {
        "seconds": round(seconds, 2), "runs": len(runs),
        "examples_attacked": spent["attacked"],
        "images_per_s": round(spent["attacked"] / max(seconds, 1e-9), 2),
        "passes_per_example_run": per_run,
        "grad_passes": spent["attacked"] * per_run["grad"],
        "forward_passes": spent["attacked"] * per_run["forward"]}
    if attack.cfg.black_box:
      broken = 100.0 * float(np.mean(arrays["white_box_survivors"] & ~robust))
      out["square_broke_pp"] = broken
      if broken > MASKING_THRESHOLD_PP:
        out["warnings"].append(
            f"{attack.name} (black-box) broke {broken:.2f} pp of the examples "
            "the white-box attacks left robust (> 0.2 pp): a sign of gradient "
            "masking; the white-box numbers overstate robustness")
    save({"attack": k + 1, "run": 0, "batch": 0})
  for private in ("_spent", "num_classes"):
    out.pop(private)
  return {**out, "per_example": arrays["per_example"],
          "attribution": arrays["attribution"]}


def _start(fns, variables, split, suite, batch_size, mesh):
  """Clean correctness, the checks, and empty attribution: (scalars,
  arrays) of a suite before its first attack."""
  n = len(split)
  batches = evaluation.Batches(split, batch_size, mesh)
  robust = evaluation.per_example(_compiled_clean(fns), batches,
                                  consts=(variables,))
  first = evaluation.Batches(split.take(np.arange(min(n, batch_size))),
                             batch_size, mesh)
  a, b = (evaluation.per_example(_compiled_logits(fns), first,
                                 consts=(variables,)) for _ in range(2))
  num_classes = int(a.shape[-1])
  grad_norms = evaluation.per_example(_compiled_input_grad_norm(fns), first,
                                      consts=(variables,))
  warnings = [w for w in (checks.randomness(a, b), checks.range_output(a),
                          checks.zero_gradients(grad_norms)) if w]
  warnings += checks.n_classes(suite, num_classes)
  out = {"n": n, "clean": 100.0 * robust.mean(), "robust": {}, "seconds": {},
         "cost": {}, "warnings": warnings, "num_classes": num_classes,
         "_spent": {}}
  # Attribution, per example: the index in `suite` of the attack that first
  # broke it (−1: misclassified clean; len(suite): still robust), its run
  # (restart / target), target rank (0: untargeted) and ‖x_adv − x‖.
  who = {"attack": np.where(robust, len(suite), -1).astype(np.int32),
         "run": np.full(n, -1, np.int32),
         "target_rank": np.full(n, -1, np.int32),
         "size": np.full(n, np.nan, np.float32)}
  arrays = {"robust": robust, "attribution": who,
            "per_example": {"clean": robust.copy()}}
  return out, arrays


def _flat_arrays(arrays: dict) -> dict[str, np.ndarray]:
  """The suite's arrays as flat npz names ('per_example/apgd_ce', ...)."""
  flat = {}
  for name, v in arrays.items():
    if isinstance(v, dict):
      flat.update({f"{name}/{k}": a for k, a in v.items()})
    else:
      flat[name] = v
  return flat


def _restore(scalars: dict, flat: dict[str, np.ndarray]):
  """(scalars, arrays) from a saved state (the inverse of `_flat_arrays`)."""
  arrays = {"per_example": {}, "attribution": {}}
  for name, v in flat.items():
    group, _, key = name.partition("/")
    if key:
      arrays[group][key] = np.array(v)
    else:
      arrays[name] = np.array(v)
  return scalars, arrays
