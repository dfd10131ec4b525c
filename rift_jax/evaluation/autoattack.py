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
from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from rift_jax import attacks, data, evaluation, sharding
from rift_jax.attacks import apgd, fab, square
from rift_jax.evaluation import checks
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
  """One run `(variables, rank, r, x, y, key) -> fooled [batch]`: the
  target rank and the run index are arguments, so one compiled run serves
  every restart and target (`cfg` has restarts = 1; `restarts` is the
  attack's own count, which decides FAB's random starts). A jit of the
  whole run, or a host loop over compiled pieces (APGD and FAB with
  `steps_per_call` > 0, Square with `queries_per_call` > 0: CPU's default).
  `unroll_type` is part of the cache key only."""
  del unroll_type
  if isinstance(cfg, apgd.APGDConfig):
    per_call = attacks.resolve_per_call(cfg.steps_per_call)
    if 0 < per_call < cfg.num_steps:
      return _apgd_in_pieces(fns, cfg, per_call)
  if isinstance(cfg, fab.FABConfig):
    per_call = attacks.resolve_per_call(cfg.steps_per_call)
    if 0 < per_call < cfg.num_steps:
      return _fab_in_pieces(fns, cfg, restarts, per_call)
  if isinstance(cfg, square.SquareConfig):
    per_call = attacks.resolve_per_call(cfg.queries_per_call,
                                        square.CPU_QUERIES_PER_CALL)
    if per_call > 0:
      return _square_in_pieces(fns, cfg, per_call)

  def run(variables, rank, r, x, y, key):
    logits_fn = lambda xa: fns.logits(variables, xa, train=False)
    clean_logits = logits_fn(x)
    y_t = attacks.target_classes(clean_logits, rank)
    if isinstance(cfg, apgd.APGDConfig):
      x_adv, _ = apgd.apgd_run(logits_fn, x, y, key, cfg,
                          y_t if cfg.loss == "dlr_targeted" else None)
    elif isinstance(cfg, fab.FABConfig):
      x_adv, _ = fab.fab_run(logits_fn, x, y, key, cfg,
                             y_t if cfg.targeted else None,
                             random_start=r % restarts > 0)
    elif isinstance(cfg, square.SquareConfig):
      x_adv, _, _ = square.square_run(logits_fn, x, y, key, cfg)
    else:
      x_adv = attacks.pgd(logits_fn, x, y, key, cfg)
    return _outcome(logits_fn, x, x_adv, y, cfg.norm)

  return jax.jit(run)


def _outcome(logits_fn, x, x_adv, y, norm: str):
  """(fooled `[batch]`, ‖x_adv − x‖ `[batch]` in the attack's norm): the
  returned point re-checked, as AutoAttack does, and its size."""
  d = (x_adv - x).reshape(x.shape[0], -1)
  size = (jnp.max(jnp.abs(d), -1) if norm == "linf" else
          jnp.sum(jnp.abs(d), -1) if norm == "l1" else
          jnp.sqrt(jnp.sum(d * d, -1)))
  return jnp.argmax(logits_fn(x_adv), -1) != y, size


def _logits_of(fns):
  """variables -> the model's inference-mode logits function."""
  return lambda variables: (lambda xa: fns.logits(variables, xa, train=False))


def _in_pieces(fns, num_steps: int, per_call: int, init, steps, result,
               norm: str):
  """A run as a host loop: a compiled start, one compiled piece of
  `per_call` steps (the first step's index is an argument, so one program
  serves every piece; a shorter last piece compiles once more) and a
  compiled end with AutoAttack's re-check of the returned point. The same
  numbers as one program over all steps.

  init(logits_fn, rank, r, x, y, key) -> (state, aux);
  steps(logits_fn, x, y, aux, state, first, count) -> state;
  result(x, state) -> x_adv.
  """
  logits_of = _logits_of(fns)

  @jax.jit
  def start(variables, rank, r, x, y, key):
    return init(logits_of(variables), rank, r, x, y, key)

  @functools.partial(jax.jit, static_argnums=6, donate_argnums=4)
  def piece(variables, x, y, aux, state, first, count):
    return steps(logits_of(variables), x, y, aux, state, first, count)

  @jax.jit
  def end(variables, x, y, state):
    return _outcome(logits_of(variables), x, result(x, state), y, norm)

  def run(variables, rank, r, x, y, key):
    state, aux = start(variables, rank, r, x, y, key)
    for first in range(0, num_steps, per_call):
      state = piece(variables, x, y, aux, state, jnp.int32(first),
                    min(per_call, num_steps - first))
    return end(variables, x, y, state)

  return run


def _apgd_in_pieces(fns, cfg: apgd.APGDConfig, per_call: int) -> Callable:
  """APGD as `_in_pieces` (unrolled pieces on CPU: `cfg.unroll`); the
  target (APGD-T) is computed once, in the start."""
  unroll = attacks.resolve_unroll(cfg.unroll)
  targeted = cfg.loss == "dlr_targeted"

  def init(logits_fn, rank, r, x, y, key):
    del r  # APGD's restarts differ only by their key
    y_t = attacks.target_classes(logits_fn(x), rank) if targeted else None
    return apgd.apgd_init(logits_fn, x, y, key, cfg, y_t), y_t

  def steps(logits_fn, x, y, y_t, state, first, count):
    return apgd.apgd_steps(logits_fn, x, y, state, cfg, y_t, start=first,
                      count=count, unroll=unroll)

  return _in_pieces(fns, cfg.num_steps, per_call, init, steps,
                    lambda x, state: apgd.apgd_result(state, x)[0], cfg.norm)


def _fab_in_pieces(fns, cfg, restarts: int, per_call: int) -> Callable:
  """FAB as `_in_pieces` (its iteration does not depend on its index);
  each piece is short, so unrolled unless the config says otherwise."""
  unroll = True if cfg.unroll == "auto" else cfg.unroll

  def init(logits_fn, rank, r, x, y, key):
    y_t = (attacks.target_classes(logits_fn(x), rank) if cfg.targeted
           else None)
    return fab.fab_init(logits_fn, x, y, key, cfg,
                        random_start=r % restarts > 0), y_t

  def steps(logits_fn, x, y, y_t, state, first, count):
    del first
    return fab.fab_steps(logits_fn, x, y, state, cfg, y_t, count=count,
                         unroll=unroll)

  def result(x, state):
    _, x_best, best = state
    return fab.fab_result(x, x_best, best, cfg)[0]

  return _in_pieces(fns, cfg.num_steps, per_call, init, steps, result,
                    cfg.norm)


def _square_in_pieces(fns, cfg, per_call: int) -> Callable:
  """Square as `square.square_pieces` (a host loop over compiled pieces of
  queries, early exit between them), then AutoAttack's re-check."""
  logits_of = _logits_of(fns)
  search = square.square_pieces(logits_of, cfg, per_call)
  check = jax.jit(lambda variables, x, x_adv, y: _outcome(
      logits_of(variables), x, x_adv, y, cfg.norm))

  def run(variables, rank, r, x, y, key):
    del rank, r
    x_adv, _, _ = search(variables, x, y, key)
    return check(variables, x, x_adv, y)

  return run


def _single_run(cfg):
  """The config of one compiled run (one restart, one target)."""
  cfg = dataclasses.replace(cfg, restarts=1)
  if isinstance(cfg, (apgd.APGDConfig, fab.FABConfig)):
    cfg = dataclasses.replace(cfg, num_target_classes=1)
  return cfg


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


# Square breaking more than this many percentage points of the examples the
# white-box attacks left standing signals gradient masking (as AutoAttack's
# own check).
MASKING_THRESHOLD_PP = 0.2


def run_suite(fns, variables, split: data.Split, suite: Sequence[Attack],
              batch_size: int, rng: jax.Array, mesh: Any = None,
              progress: bool = True) -> dict:
  """Clean accuracy, then each attack in turn on the examples still robust.

  Args:
    fns: `models.ModelFns`; the model runs in inference mode (running BN stats).
    variables: the model variables; split: uint8 images and labels.
    suite: attacks in order (e.g. `autoattack_suite()`).
    batch_size: examples per compiled call (padded; divisible by the devices).
    rng: key; attack k, run r uses fold_in(fold_in(rng, k), r), batch i
      fold_in(·, i).

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
    input gradients, more targets than classes; and Square (black-box)
    breaking more than 0.2 pp of the points the white-box attacks left
    robust (a sign of gradient masking).
  """
  import time
  mesh = mesh or sharding.make_mesh()
  variables = sharding.replicate(variables, mesh)
  n = len(split)
  batches = evaluation.Batches(split, batch_size, mesh)
  robust = evaluation.per_example(_compiled_clean(fns), batches, consts=(variables,))
  out = {"n": n, "clean": 100.0 * robust.mean(), "robust": {}, "seconds": {},
         "cost": {}, "per_example": {"clean": robust.copy()}, "warnings": []}
  first = evaluation.Batches(split.take(np.arange(min(n, batch_size))), batch_size,
                           mesh)
  a, b = (evaluation.per_example(_compiled_logits(fns), first, consts=(variables,))
          for _ in range(2))
  num_classes = int(a.shape[-1])
  # Attribution, per example: the index in `suite` of the attack that first
  # broke it (−1: misclassified clean; len(suite): still robust), its run
  # (restart / target), target rank (0: untargeted) and ‖x_adv − x‖.
  who = {"attack": np.where(robust, len(suite), -1).astype(np.int32),
         "run": np.full(n, -1, np.int32), "target_rank": np.full(n, -1, np.int32),
         "size": np.full(n, np.nan, np.float32)}
  out["attribution"] = who
  grad_norms = evaluation.per_example(_compiled_input_grad_norm(fns), first,
                                      consts=(variables,))
  out["warnings"] += [w for w in (checks.randomness(a, b), checks.range_output(a),
                                  checks.zero_gradients(grad_norms)) if w]
  out["warnings"] += checks.n_classes(suite, num_classes)
  white_box_survivors = None
  for k, attack in enumerate(suite):
    t0 = time.time()
    if isinstance(attack.cfg, square.SquareConfig) and white_box_survivors is None:
      white_box_survivors = robust.copy()
    run_fn = _compiled_run(fns, _single_run(attack.cfg), attack.cfg.restarts)
    runs = attack.runs(num_classes)
    bar = tqdm(runs, desc=attack.name, disable=not progress, leave=False)
    # Each run also takes one forward for the targets and one to re-check.
    per_run = attack.cfg.passes(num_classes)
    per_run = {"grad": per_run["grad"], "forward": per_run["forward"] + 2}
    attacked = 0
    for r, rank in bar:
      todo = np.flatnonzero(robust)
      attacked += int(todo.size)
      if todo.size:
        key = jax.random.fold_in(jax.random.fold_in(rng, k), r)
        fooled, size = evaluation.per_example(
            run_fn, evaluation.Batches(split.take(todo), batch_size, mesh),
            consts=(variables, jnp.int32(rank), jnp.int32(r)), rng=key)
        broken = todo[fooled]
        robust[broken] = False
        who["attack"][broken], who["run"][broken] = k, r
        who["target_rank"][broken], who["size"][broken] = rank, size[fooled]
      bar.set_postfix(robust=f"{100.0 * robust.mean():.2f}%")
    out["robust"][attack.name] = 100.0 * robust.mean()
    out["per_example"][attack.name] = robust.copy()
    seconds = time.time() - t0
    out["seconds"][attack.name] = round(seconds, 2)
    out["cost"][attack.name] = {
        "seconds": round(seconds, 2), "runs": len(runs),
        "examples_attacked": attacked,
        "images_per_s": round(attacked / max(seconds, 1e-9), 2),
        "passes_per_example_run": per_run,
        "grad_passes": attacked * per_run["grad"],
        "forward_passes": attacked * per_run["forward"]}
    if isinstance(attack.cfg, square.SquareConfig):
      broken = 100.0 * float(np.mean(white_box_survivors & ~robust))
      out["square_broke_pp"] = broken
      if broken > MASKING_THRESHOLD_PP:
        out["warnings"].append(
            f"Square (black-box) broke {broken:.2f} pp of the examples the "
            "white-box attacks left robust (> 0.2 pp): a sign of gradient "
            "masking; the white-box numbers overstate robustness")
  return out
