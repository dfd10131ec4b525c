"""APGD (Croce & Hein, ICML 2020): APGD-CE, APGD-DLR and APGD-T.

APGD is PGD with a step size that adapts itself and momentum:

  z      = P(x_k + η_k · s(∇f(x_k)))                   s = sign (L∞) | g/‖g‖₂ (L2)
  x_{k+1} = P(x_k + a·(z − x_k) + (1 − a)·(x_k − x_{k−1}))  a = 1 at k = 0, else α = 0.75

P projects onto the ε-ball ∩ [0, 1] (`attacks.project`), η_0 = 2ε. At the
checkpoints w_j (`checkpoint_schedule`) the step size of an example is halved
and its search restarts from its best point x_max (with the gradient there)
if either
  1. the loss rose in at most ρ·(w_j − w_{j−1}) of the steps since w_{j−1}
     (ρ = 0.75), or
  2. the step size was not halved at w_{j−1} and the best loss f_max has not
     improved since w_{j−1}.
Per example the attack keeps x_max (highest loss) and the last point found
that is misclassified; an example is fooled if any iterate misclassified it.

Losses: 'ce' (APGD-CE), 'dlr' (APGD-DLR), 'dlr_targeted' (APGD-T: for each of
the `num_target_classes` classes ranked 2nd, 3rd, ... by the clean logits, one
APGD run on the targeted DLR loss).

Facts checked against the authors' code (fra31/auto-attack, autopgd_base.py):
interval lengths are integers, first max(⌊0.22 N⌋, 1), then shrinking by
max(⌊0.03 N⌋, 1) down to max(⌊0.06 N⌋, 1) (for N = 100 the checkpoints are the
paper's ⌈p_j N⌉ = 22, 41, 57, 70, 80, 87, 93, 99); condition 1 uses ≤ (the
paper writes <); condition 2 is off at the first checkpoint. One deliberate
difference: at the first checkpoint the authors' code compares the first
step's loss with an unfilled zero entry instead of f(x_0); we use f(x_0), as the
paper defines it. The random start is `attacks.random_init` (uniform in the
ball) where the authors scale uniform noise to ‖δ‖ = ε.

L1-APGD (Croce & Hein, "Mind the box: l1-APGD for sparse adversarial attacks
on image classifiers", ICML 2021), norm 'l1'. No momentum; each step
  x_{k+1} = P(x_k + η_k · s_k),   s_k = sign(g ⊙ 1[|g| ≥ q_k]) / ‖·‖₁,
moves along the signs of the coordinates whose |gradient| is at least the
(1 − t_k) quantile q_k (`l1_direction`: about t_k·d coordinates, each by
η_k / their count); P is the exact projection onto the L1 ball ∩ [0, 1]
(`attacks.l1_box_projection`). η_0 = ε (the stage's ε below), t_0 = 0.2 (a
start from a given point: t_0 = ‖x_0 − x‖₀ / (1.5 d)). Every
k = max(⌊0.04 N⌋, 1) steps (N the stage's steps), with s = ‖x_max − x‖₀:
the sparsity follows the best point, t = s / (1.5 d); if s shrank below
0.95 of its value at the last check, η = ε and the search restarts from
x_max, else η /= 1.5; η stays in [ε/10, ε].
The large-ε schedule (`large_eps`, AutoAttack's L1 setting,
`large_eps_schedule`): stages at 3ε, 2ε and ε with ⌈0.3 N⌉, ⌈0.3 N⌉ and the
remaining steps; stage 1 starts at Gaussian noise projected onto the 3ε
ball, each later stage at the previous stage's x_max projected onto its
ball (one more gradient per stage), and only the last stage's iterates
(inside ε) count as adversarial. Facts checked against the authors' code
(fra31/auto-attack, autopgd_base.py): these rules and constants, the
threshold index ⌊(1 − t)·d⌋ clipped to [0, d − 1], the comparison on the
L0 ratio with the count at the last check (before the first one: d after a
random start, ‖x_0 − x‖₀ at a stage's start).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from rift_jax import attacks
from rift_jax.errors import UserError, check_choice, check_range

APGD_LOSSES = ("ce", "dlr", "dlr_targeted")
# AutoAttack's names of the APGD attacks -> their loss.
LOSS_OF = {"apgd_ce": "ce", "apgd_dlr": "dlr", "apgd_t": "dlr_targeted"}


# ------------------------------------------------------------ the schedule
def checkpoint_schedule(num_steps: int) -> tuple[int, ...]:
  """Iteration counts w_1 < w_2 < ... ≤ num_steps after which the step size
  is checked, as in the authors' code: interval h_1 = max(⌊0.22 N⌋, 1),
  h_{j+1} = max(h_j − max(⌊0.03 N⌋, 1), max(⌊0.06 N⌋, 1)), i.e. the paper's
  p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) in whole steps."""
  n = int(num_steps)
  h = max(int(0.22 * n), 1)
  decrease = max(int(0.03 * n), 1)
  minimum = max(int(0.06 * n), 1)
  out, w = [], h
  while w <= n:
    out.append(w)
    h = max(h - decrease, minimum)
    w += h
  return tuple(out)


def halve_step(n_increase: jax.Array, interval: int, rho: float,
               reduced_last: jax.Array, best_loss_last: jax.Array,
               best_loss: jax.Array) -> jax.Array:
  """The checkpoint rule `[batch] bool`: halve η (and restart from x_max)?

  n_increase: how many of the `interval` steps since the last checkpoint
    raised the loss; reduced_last: η was halved at the last checkpoint;
  best_loss_last / best_loss: f_max at the last checkpoint / now.
  """
  oscillating = n_increase <= rho * interval
  stalled = ~reduced_last & (best_loss_last >= best_loss)
  return oscillating | stalled


# --------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class APGDConfig:
  """Static APGD settings (hashable: a jitted caller compiles once)."""
  epsilon: float = 8 / 255
  num_steps: int = 100
  norm: str = "linf"
  loss: str = "ce"
  restarts: int = 1
  num_target_classes: int = 9  # APGD-T only
  rho: float = 0.75
  momentum: float = 0.75
  eot_iter: int = 1            # >1: gradient averaged over calls (EOT)
  # L1 only: the large-ε schedule (stages at 3ε, 2ε, ε). 'auto': on for
  # 'l1' (AutoAttack's L1 setting), off otherwise; True needs norm 'l1'.
  large_eps: bool | str = "auto"
  unroll: bool | int | str = "auto"
  # Steps per compiled program when `run_suite` runs the attack: the host
  # loops over programs of this many steps (0 = all steps in one program).
  # 'auto': `attacks.CPU_STEPS_PER_CALL` on CPU, 0 elsewhere.
  steps_per_call: int | str = "auto"

  def runs(self, num_classes: int) -> list[tuple[int, int]]:
    """(run index, target rank or 0) pairs in the authors' order."""
    return _runs(self, num_classes)

  def passes(self, num_classes: int) -> dict[str, int]:
    """Model passes per example in one run: the start (of every stage of
    the large-ε schedule) and every step take one gradient per EOT sample."""
    del num_classes
    starts = len(l1_stages(self)) if self.norm == "l1" else 1
    return {"grad": (self.num_steps + starts) * self.eot_iter, "forward": 0}

  def validate(self, prefix: str = "apgd") -> "APGDConfig":
    check_range(f"{prefix}.epsilon", self.epsilon, 0.0,
                None if self.norm == "l1" else 1.0, low_open=True)
    check_range(f"{prefix}.num_steps", self.num_steps, 1)
    check_range(f"{prefix}.restarts", self.restarts, 1)
    check_range(f"{prefix}.num_target_classes", self.num_target_classes, 1)
    check_range(f"{prefix}.rho", self.rho, 0.0, 1.0)
    check_range(f"{prefix}.momentum", self.momentum, 0.0, 1.0)
    check_range(f"{prefix}.eot_iter", self.eot_iter, 1)
    check_choice(f"{prefix}.norm", self.norm, attacks.NORMS)
    check_choice(f"{prefix}.loss", self.loss, APGD_LOSSES)
    check_choice(f"{prefix}.large_eps", self.large_eps, ("auto", False, True))
    if self.large_eps is True and self.norm != "l1":
      raise UserError(f"{prefix}.large_eps=True is not allowed with "
                      f"norm={self.norm!r}; the large-ε schedule is for norm "
                      "'l1' only (use 'auto' or False)")
    if uses_large_eps(self) and self.num_steps < 2:
      raise UserError(f"{prefix}.num_steps={self.num_steps!r} is too small for "
                      "the large-ε schedule; use num_steps >= 2 or "
                      "large_eps=False")
    attacks.check_per_call(f"{prefix}.steps_per_call", self.steps_per_call)
    return self

  # One run as a suite runs it (`attacks.common.outcome`).
  black_box: ClassVar[bool] = False

  def single_run(self) -> "APGDConfig":
    return dataclasses.replace(self, restarts=1, num_target_classes=1)

  def program(self, logits_of: Callable, restarts: int) -> Callable:
    del restarts  # APGD's restarts differ only by their key
    return _program(self, logits_of)


def _loss(cfg: APGDConfig, logits, y, y_target):
  if cfg.loss == "ce":
    return attacks.cross_entropy(logits, y)
  if cfg.loss == "dlr":
    return attacks.dlr(logits, y)
  return attacks.dlr_targeted(logits, y, y_target)


def _bcast(v, x):
  return v.reshape((-1,) + (1,) * (x.ndim - 1))


def _step_direction(g, norm):
  # s(g) of one unit length: the steepest-ascent direction in the norm.
  return attacks.ascent_step(jnp.zeros_like(g), g, 1.0, norm)


# ------------------------------------------------------------- one run
def _loss_and_grad(logits_fn, cfg: APGDConfig, y, y_target):
  """xa -> (per-example loss, misclassified, input gradient) (EOT-averaged)."""
  def total(z):
    logits = logits_fn(z)
    per = _loss(cfg, logits, y, y_target)
    return jnp.sum(per), (per, logits)

  def loss_and_grad(xa):
    (_, (per, logits)), g = jax.value_and_grad(total, has_aux=True)(xa)
    for _ in range(cfg.eot_iter - 1):  # expectation over the model's randomness
      (_, (p2, _)), g2 = jax.value_and_grad(total, has_aux=True)(xa)
      per, g = per + p2, g + g2
    per, g = per / cfg.eot_iter, g / cfg.eot_iter
    return per, jnp.argmax(logits, -1) != y, g
  return loss_and_grad


def apgd_init(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
              y: jax.Array, rng: jax.Array, cfg: APGDConfig,
              y_target: jax.Array | None = None) -> dict:
  """The search state at the random start x_0 (before step 1): a dict of
  `[batch, ...]` arrays (iterate, previous iterate, gradient, loss, step
  size, best point, last fooling point, checkpoint counters; for L1 the
  sparsity level and the last checked L0 count instead of the counters)."""
  if cfg.norm == "l1":
    return _l1_init(logits_fn, x, y, rng, cfg, y_target)
  eps, norm = cfg.epsilon, cfg.norm
  x0 = attacks.project(attacks.random_init(rng, x, eps, norm, "uniform", 0.0),
                       x, eps, norm)
  loss0, fooled0, g0 = _loss_and_grad(logits_fn, cfg, y, y_target)(x0)
  b = x.shape[0]
  return dict(
      x=x0, x_prev=x0, grad=g0, loss=loss0,
      step=jnp.full((b,), 2.0 * eps, x.dtype),
      x_best=x0, grad_best=g0, loss_best=loss0,
      x_adv=x0, fooled=fooled0,
      n_increase=jnp.zeros((b,), jnp.int32),
      reduced_last=jnp.ones((b,), bool), loss_best_last=loss0)


def apgd_steps(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
               y: jax.Array, state: dict, cfg: APGDConfig,
               y_target: jax.Array | None = None, start: int | jax.Array = 0,
               count: int | None = None, unroll: bool | int = 1) -> dict:
  """Steps `start + 1 … start + count` of APGD from `state` (traceable;
  `start` may be traced, `count` is static; default: all `cfg.num_steps`).
  Runs of consecutive calls equal one call over all steps (for L1 also
  across the stages of the large-ε schedule: a stage's last step ends with
  the next stage's start)."""
  if cfg.norm == "l1":
    return _l1_steps(logits_fn, x, y, state, cfg, y_target, start, count,
                     unroll)
  eps, norm = cfg.epsilon, cfg.norm
  count = cfg.num_steps if count is None else count
  checks = checkpoint_schedule(cfg.num_steps)
  # Static tables indexed by the step counter: is step i+1 a checkpoint, and
  # how long was the interval that ends there.
  is_check = np.zeros(cfg.num_steps, bool)
  interval = np.ones(cfg.num_steps, np.float32)
  for j, w in enumerate(checks):
    is_check[w - 1] = True
    interval[w - 1] = w - (checks[j - 1] if j else 0)
  is_check, interval = jnp.asarray(is_check), jnp.asarray(interval)
  loss_and_grad = _loss_and_grad(logits_fn, cfg, y, y_target)

  def body(k, s):
    i = start + k
    a = jnp.where(i == 0, 1.0, cfg.momentum).astype(x.dtype)
    z = attacks.project(s["x"] + _bcast(s["step"], x)
                        * _step_direction(s["grad"], norm), x, eps, norm)
    x_new = attacks.project(s["x"] + a * (z - s["x"])
                            + (1 - a) * (s["x"] - s["x_prev"]), x, eps, norm)
    loss, fooled_now, g = loss_and_grad(x_new)
    n_increase = s["n_increase"] + (loss > s["loss"]).astype(jnp.int32)
    better = loss > s["loss_best"]
    x_best = jnp.where(_bcast(better, x), x_new, s["x_best"])
    grad_best = jnp.where(_bcast(better, x), g, s["grad_best"])
    loss_best = jnp.where(better, loss, s["loss_best"])
    # Checkpoint (elementwise, so the same body serves unrolled and rolled loops).
    halve = is_check[i] & halve_step(n_increase, interval[i], cfg.rho,
                                     s["reduced_last"], s["loss_best_last"],
                                     loss_best)
    return dict(
        x=jnp.where(_bcast(halve, x), x_best, x_new), x_prev=s["x"],
        grad=jnp.where(_bcast(halve, x), grad_best, g), loss=loss,
        step=jnp.where(halve, s["step"] / 2, s["step"]),
        x_best=x_best, grad_best=grad_best, loss_best=loss_best,
        x_adv=jnp.where(_bcast(fooled_now, x), x_new, s["x_adv"]),
        fooled=s["fooled"] | fooled_now,
        n_increase=jnp.where(is_check[i], 0, n_increase),
        reduced_last=jnp.where(is_check[i], halve, s["reduced_last"]),
        loss_best_last=jnp.where(is_check[i], loss_best, s["loss_best_last"]))

  return jax.lax.fori_loop(0, count, body, state, unroll=unroll)


# ------------------------------------------------------- L1 (Croce & Hein 2021)
def uses_large_eps(cfg: APGDConfig) -> bool:
  """Whether a run follows the large-ε schedule (L1 only; 'auto' = on)."""
  return cfg.norm == "l1" and cfg.large_eps in ("auto", True)


def large_eps_schedule(num_steps: int) -> tuple[tuple[float, int], ...]:
  """(ε multiplier, steps) per stage of the large-ε schedule: 3ε, 2ε, ε for
  ⌈0.3 N⌉, ⌈0.3 N⌉ and the remaining N − 2⌈0.3 N⌉ steps (Croce & Hein 2021;
  the fractions as the authors' code computes them in floating point).
  The last stage may have 0 steps (N = 2, 4): its start, the projection of
  the previous best point onto the ε-ball, is then the result."""
  n = int(num_steps)
  first = math.ceil(0.3 * n)
  return ((3.0, first), (2.0, first), (1.0, n - 2 * first))


def l1_stages(cfg: APGDConfig) -> tuple[tuple[float, int], ...]:
  """The stages of an L1 run: the large-ε schedule or one stage at ε."""
  if uses_large_eps(cfg):
    return large_eps_schedule(cfg.num_steps)
  return ((1.0, int(cfg.num_steps)),)


def l1_check_interval(stage_steps: int) -> int:
  """Steps between L1 checkpoints in a stage of N steps: max(⌊0.04 N⌋, 1)."""
  return max(int(0.04 * stage_steps), 1)


def l1_tables(cfg: APGDConfig) -> dict[str, np.ndarray]:
  """Static per-step tables `[num_steps]` of an L1 run, indexed by the step
  counter i (step i + 1): 'mult' the stage's ε multiplier, 'check' whether
  a checkpoint follows the step, 'stage_end' whether the next stage starts
  after it, 'next_mult' that stage's multiplier."""
  n = int(cfg.num_steps)
  out = dict(mult=np.ones(n, np.float32), check=np.zeros(n, bool),
             stage_end=np.zeros(n, bool), next_mult=np.ones(n, np.float32))
  stages = l1_stages(cfg)
  i = 0
  for j, (mult, steps) in enumerate(stages):
    k = l1_check_interval(steps)
    for local in range(1, steps + 1):
      out["mult"][i] = mult
      out["check"][i] = local % k == 0
      i += 1
    if j + 1 < len(stages):
      out["stage_end"][i - 1] = True
      out["next_mult"][i - 1] = stages[j + 1][0]
  return out


def l1_direction(grad: jax.Array, topk: jax.Array) -> jax.Array:
  """L1-APGD's sparse step direction (Croce & Hein 2021), like `grad`: the
  signs of the coordinates with |g_i| ≥ q, q the ⌊(1 − t)·d⌋-th smallest
  |g_i| (index clipped to [0, d − 1]), divided by their count (unit L1
  norm). topk: t `[batch]`, the fraction of coordinates to move."""
  b = grad.shape[0]
  flat = grad.reshape(b, -1)
  d = flat.shape[-1]
  mag = jnp.abs(flat)
  index = jnp.clip((1.0 - topk.astype(jnp.float32)) * d, 0, d - 1)
  q = jnp.take_along_axis(jnp.sort(mag, -1),
                          index.astype(jnp.int32)[:, None], -1)
  sign = jnp.sign(flat) * (mag >= q)
  unit = sign / (jnp.sum(jnp.abs(sign), -1, keepdims=True) + 1e-10)
  return unit.reshape(grad.shape)


def _l0(v: jax.Array) -> jax.Array:
  """Nonzero coordinates per example `[batch]` float32."""
  return jnp.sum(v.reshape(v.shape[0], -1) != 0, -1).astype(jnp.float32)


def _l1_start(loss_and_grad, x, x0, eps, from_point: bool) -> dict:
  """An L1 stage's state at its start x0 (in the ball of radius `eps`):
  from a random start t = 0.2 and the last L0 count d; from a given point
  (the large-ε schedule) t = ‖x0 − x‖₀/(1.5 d) and that count."""
  loss0, fooled0, g0 = loss_and_grad(x0)
  b = x.shape[0]
  d = float(np.prod(x.shape[1:]))
  if from_point:
    sp = _l0(x0 - x)
    topk = sp / d / 1.5
  else:
    sp = jnp.full((b,), d, jnp.float32)
    topk = jnp.full((b,), 0.2, jnp.float32)
  return dict(x=x0, grad=g0, step=jnp.full((b,), eps, x.dtype),
              x_best=x0, grad_best=g0, loss_best=loss0, x_adv=x0,
              fooled=fooled0, topk=topk, sp_old=sp)


def _l1_init(logits_fn, x, y, rng, cfg, y_target) -> dict:
  """L1 start: N(0, 1) noise projected onto the first stage's ball ∩ box."""
  mult = l1_stages(cfg)[0][0]
  eps0 = cfg.epsilon * mult
  x0 = attacks.random_init(rng, x, eps0, "l1", "uniform", 0.0)
  return _l1_start(_loss_and_grad(logits_fn, cfg, y, y_target), x, x0, eps0,
                   uses_large_eps(cfg))


def _l1_steps(logits_fn, x, y, state, cfg, y_target, start, count,
              unroll) -> dict:
  """L1-APGD steps `start + 1 … start + count` (see `apgd_steps`)."""
  count = cfg.num_steps if count is None else count
  tables = {k: jnp.asarray(v) for k, v in l1_tables(cfg).items()}
  staged = len(l1_stages(cfg)) > 1
  loss_and_grad = _loss_and_grad(logits_fn, cfg, y, y_target)
  d = float(np.prod(x.shape[1:]))

  def body(k, s):
    i = start + k
    eps = cfg.epsilon * tables["mult"][i]
    x_new = attacks.project(
        s["x"] + _bcast(s["step"], x) * l1_direction(s["grad"], s["topk"]),
        x, eps, "l1")
    loss, fooled_now, g = loss_and_grad(x_new)
    better = loss > s["loss_best"]
    x_best = jnp.where(_bcast(better, x), x_new, s["x_best"])
    grad_best = jnp.where(_bcast(better, x), g, s["grad_best"])
    # Checkpoint (elementwise; applied where tables['check'][i]).
    check = tables["check"][i]
    sp = _l0(x_best - x)
    sparser = sp / s["sp_old"] < 0.95      # the best point got sparser
    step = jnp.clip(jnp.where(sparser, eps, s["step"] / 1.5), eps / 10, eps)
    back = check & sparser
    out = dict(
        x=jnp.where(_bcast(back, x), x_best, x_new),
        grad=jnp.where(_bcast(back, x), grad_best, g),
        step=jnp.where(check, step, s["step"]).astype(s["step"].dtype),
        x_best=x_best, grad_best=grad_best,
        loss_best=jnp.where(better, loss, s["loss_best"]),
        x_adv=jnp.where(_bcast(fooled_now, x), x_new, s["x_adv"]),
        fooled=s["fooled"] | fooled_now,
        topk=jnp.where(check, sp / d / 1.5, s["topk"]),
        sp_old=jnp.where(check, sp, s["sp_old"]))
    if not staged:
      return out

    def next_stage(o):
      eps_next = cfg.epsilon * tables["next_mult"][i]
      x0 = attacks.project(o["x_best"], x, eps_next, "l1")
      return _l1_start(loss_and_grad, x, x0, eps_next, True)

    return jax.lax.cond(tables["stage_end"][i], next_stage, lambda o: o, out)

  return jax.lax.fori_loop(0, count, body, state, unroll=unroll)


def apgd_result(state: dict, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x_adv, fooled) of a finished search: the last misclassified iterate
  where one was found, else the highest-loss point x_max."""
  x_adv = jnp.where(_bcast(state["fooled"], x), state["x_adv"], state["x_best"])
  return jax.lax.stop_gradient(x_adv), state["fooled"]


def apgd_run(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
             y: jax.Array, rng: jax.Array, cfg: APGDConfig,
             y_target: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """One APGD run from a random start (traceable; call inside `jax.jit`):
  `apgd_init`, all steps in one loop (`cfg.unroll`), `apgd_result`.

  Args:
    logits_fn: `[batch, H, W, C] -> [batch, classes]`.
    x: clean images in [0, 1] `[batch, H, W, C]`; y: labels `[batch]`.
    rng: key for the random start.
    cfg: settings; y_target `[batch]` is needed by 'dlr_targeted'.

  Returns:
    (x_adv, fooled): `x_adv` is the last misclassified iterate where one was
    found, else the highest-loss point x_max; `fooled` `[batch]` bool says
    whether any iterate (the start included) was misclassified.
  """
  state = apgd_init(logits_fn, x, y, rng, cfg, y_target)
  state = apgd_steps(logits_fn, x, y, state, cfg, y_target,
                     unroll=attacks.resolve_unroll(cfg.unroll))
  return apgd_result(state, x)


def apgd(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
         y: jax.Array, rng: jax.Array, cfg: APGDConfig) -> jax.Array:
  """Full APGD (all restarts; all target classes for 'dlr_targeted') inside
  one traced function: `x_adv` `[batch, H, W, C]`, the first fooling point
  found per example. Same signature as `evaluation.AttackFn`.

  Every run is unrolled into the graph; for many steps × targets prefer
  `run_suite`, which compiles one run and loops on the host.
  """
  clean_logits = logits_fn(x)
  best = fooled = None
  for r, rank in _runs(cfg, clean_logits.shape[-1]):
    y_t = attacks.target_classes(clean_logits, rank) if rank else None
    xa, f = apgd_run(logits_fn, x, y, jax.random.fold_in(rng, r), cfg, y_t)
    if best is None:
      best, fooled = xa, f
      continue
    best = jnp.where(_bcast(f & ~fooled, x), xa, best)
    fooled = fooled | f
  return best


def _runs(cfg: APGDConfig, num_classes: int) -> list[tuple[int, int]]:
  """(restart, target rank or 0) pairs: the host/trace loop of one attack."""
  if cfg.loss == "dlr_targeted":
    if num_classes < 4:
      raise UserError(f"APGD-T needs at least 4 classes, the model has "
                      f"{num_classes}")
    ranks = range(2, min(cfg.num_target_classes, num_classes - 1) + 2)
    return [(i * cfg.restarts + r, t) for i, t in enumerate(ranks)
            for r in range(cfg.restarts)]
  if cfg.loss == "dlr" and num_classes < 3:
    raise UserError(f"the DLR loss needs at least 3 classes, the model has "
                    f"{num_classes}")
  return [(r, 0) for r in range(cfg.restarts)]


def _program(cfg: APGDConfig, logits_of: Callable) -> Callable:
  """One run `(variables, rank, r, x, y, key) -> (fooled, size)`: the target
  (APGD-T) from the clean logits, then the search — one jitted program, or
  with `steps_per_call` > 0 (CPU's default) a host loop over compiled,
  unrolled pieces of that many steps (`attacks.in_pieces`)."""
  targeted = cfg.loss == "dlr_targeted"
  per_call = attacks.resolve_per_call(cfg.steps_per_call)

  def init(logits_fn, rank, r, x, y, key):
    del r
    y_t = attacks.target_classes(logits_fn(x), rank) if targeted else None
    return apgd_init(logits_fn, x, y, key, cfg, y_t), y_t

  if 0 < per_call < cfg.num_steps:
    unroll = attacks.resolve_unroll(cfg.unroll)

    def steps(logits_fn, x, y, y_t, state, first, count):
      return apgd_steps(logits_fn, x, y, state, cfg, y_t, start=first,
                        count=count, unroll=unroll)

    return attacks.in_pieces(logits_of, cfg.num_steps, per_call, init, steps,
                             lambda x, state: apgd_result(state, x)[0],
                             cfg.norm)

  def run(variables, rank, r, x, y, key):
    logits_fn = logits_of(variables)
    y_t = attacks.target_classes(logits_fn(x), rank) if targeted else None
    x_adv, _ = apgd_run(logits_fn, x, y, key, cfg, y_t)
    return attacks.outcome(logits_fn, x, x_adv, y, cfg.norm)

  return jax.jit(run)
