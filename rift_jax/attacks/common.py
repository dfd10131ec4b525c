"""Projected gradient attacks on inputs, composed of small pure parts.

An attack is: an init (where the search starts inside the ball), a loss to
maximise (`ce`, `kl` for TRADES, `se` for SCORE, `margin` for evaluation), a step (sign of the
gradient for L-inf, normalised gradient for L2, the largest coordinate for
L1), a projection (onto the ε-ball around the clean image, then onto the
[0, 1] box; for L1 the exact projection onto their intersection,
`l1_box_projection`), a loop, and restarts with a per-example worst case.
Every function here is traceable: call it inside
`jax.jit` (the train step, the evaluator) and it is compiled once per shape.

`logits_fn(x) -> [batch, classes]` closes over the model variables and the
BatchNorm mode the caller chose; the attack never sees the model.

Loop form: XLA:CPU runs while-loop bodies several times slower than
straight-line code (the convolutions inside a while-loop body do not take
XLA's fast library path; docs/performance.md), so `unroll='auto'` unrolls the step loop
on CPU and keeps a rolled `fori_loop` on GPU/TPU, where it compiles faster and
runs as fast. `benchmarks/base.py` measures both.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp

from rift_jax import sharding
from rift_jax.errors import UserError, check_choice, check_range

NORMS = ("linf", "l2", "l1")
INITS = ("uniform", "normal", "zero")


# ---------------------------------------------------------------- losses
def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example CE `[batch]` for integer labels `[batch]`."""
  logp = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def kl_divergence(logits: jax.Array, target_logits: jax.Array) -> jax.Array:
  """Per-example KL(p_target ‖ p) `[batch]`, p = softmax(logits).

  This is TRADES' inner objective with target = the clean prediction.
  """
  logp_t = jax.nn.log_softmax(target_logits)
  logp = jax.nn.log_softmax(logits)
  return jnp.sum(jnp.exp(logp_t) * (logp_t - logp), axis=-1)


def softmax_squared_error(logits: jax.Array, target_logits: jax.Array) -> jax.Array:
  """Per-example ‖p − p_target‖² `[batch]` on softmax outputs (SCORE's attack)."""
  d = jax.nn.softmax(logits) - jax.nn.softmax(target_logits)
  return jnp.sum(d * d, axis=-1)


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """CW margin `max_{j≠y} z_j − z_y` `[batch]`: positive iff misclassified."""
  z_y = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool),
                     -jnp.inf, logits)
  return jnp.max(others, axis=-1) - z_y


def dlr(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Difference of logits ratio (Croce & Hein 2020) `[batch]`:

    DLR = −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12),

  z_π1 ≥ z_π2 ≥ ... the sorted logits. Shift- and scale-invariant in z, so
  logit rescaling cannot mask gradients. Needs ≥ 3 classes.
  """
  z = jnp.sort(logits, axis=-1)
  return margin(logits, labels) / (z[:, -1] - z[:, -3] + 1e-12)


def dlr_targeted(logits: jax.Array, labels: jax.Array, targets: jax.Array
                 ) -> jax.Array:
  """Targeted DLR `[batch]`: −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12).

  Maximising it pushes the target class t above the true class y. Needs ≥ 4
  classes.
  """
  z = jnp.sort(logits, axis=-1)
  z_y = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  z_t = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
  return (z_t - z_y) / (z[:, -1] - 0.5 * (z[:, -3] + z[:, -4]) + 1e-12)


# Every loss an attack maximises: name -> f(logits, labels, target_logits)
# -> per-example loss `[batch]`. 'kl' and 'se' compare with the clean
# prediction (`target_logits`); the others use the labels.
LOSSES = {
    "ce": lambda z, y, t: cross_entropy(z, y),
    "kl": lambda z, y, t: kl_divergence(z, t),
    "se": lambda z, y, t: softmax_squared_error(z, t),
    "margin": lambda z, y, t: margin(z, y),
    "dlr": lambda z, y, t: dlr(z, y),
}


def _attack_loss(name: str, logits, labels, target_logits):
  check_choice("attack loss", name, tuple(LOSSES))
  return LOSSES[name](logits, labels, target_logits)


# ------------------------------------------------------- geometry (per norm)
def _per_example_norm(v: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))


def l1_box_projection(x: jax.Array, delta: jax.Array, epsilon) -> jax.Array:
  """Euclidean projection of perturbations onto the L1 ball inside the box:

    argmin_δ' ‖δ' − δ‖₂  subject to  ‖δ'‖₁ ≤ ε,  0 ≤ x + δ' ≤ 1,

  per example (Croce & Hein, "Mind the box: l1-APGD for sparse adversarial
  attacks on image classifiers", ICML 2021, Sec. 3: the projection onto
  the intersection, not the L1 ball followed by a clip).

  Args:
    x: points in [0, 1] `[batch, ...]` (the centre of the ball);
    delta: perturbations like x; epsilon: radius, a scalar or `[batch]`
      (may be traced).

  Returns:
    δ' like `delta`. Pure and jittable: one sort and cumulative sums per
    example, no loop.

  The solution keeps each sign and shrinks each magnitude: with
  m_i = |δ_i| and the box room r_i = 1 − x_i (δ_i ≥ 0) or x_i (δ_i < 0),
  |δ'_i| = m_i − s_i, s_i = clip(α, a_i, m_i), a_i = max(m_i − r_i, 0) (the
  shrink the box forces). The KKT conditions give one α ≥ 0 for all
  coordinates: α = 0 if the box clip alone is inside the ball
  (Σ a_i ≥ Σ m_i − ε), else the root of h(α) = Σ_i clip(α, a_i, m_i) =
  Σ m_i − ε. h is piecewise linear and nondecreasing with kinks at the 2d
  values {a_i} ∪ {m_i}: sorted, its value at each kink is a cumulative sum
  of slope × width (slope = #{a_i < α} − #{m_i < α}), the root lies on the
  first segment where h reaches the target, and one Newton step on the
  result's norm removes the rounding of the cumulative sums.
  """
  shape, dtype = delta.shape, delta.dtype
  b = shape[0]
  xf = x.reshape(b, -1).astype(jnp.float32)
  d = delta.reshape(b, -1).astype(jnp.float32)
  eps = jnp.broadcast_to(jnp.asarray(epsilon, jnp.float32), (b,))
  mag = jnp.abs(d)
  room = jnp.maximum(jnp.where(d >= 0, 1.0 - xf, xf), 0.0)
  low = jnp.maximum(mag - room, 0.0)                    # a_i ≤ m_i
  target = jnp.sum(mag, -1) - eps                       # Σ s_i must reach it
  kinks = jnp.concatenate([low, mag], -1)
  turns = jnp.concatenate([jnp.ones_like(low), -jnp.ones_like(mag)], -1)
  kinks, turns = jax.lax.sort((kinks, turns), dimension=-1, num_keys=1)
  slope = jnp.cumsum(turns, -1)              # on (kink_j, kink_{j+1})
  rise = slope[:, :-1] * (kinks[:, 1:] - kinks[:, :-1])
  h0 = jnp.sum(low, -1)                      # h at the smallest kink
  h = h0[:, None] + jnp.concatenate(
      [jnp.zeros((b, 1), jnp.float32), jnp.cumsum(rise, -1)], -1)
  k = jnp.clip(jnp.sum(h < target[:, None], -1), 1, kinks.shape[-1] - 1)
  take = lambda v, i: jnp.take_along_axis(v, i[:, None], -1)[:, 0]
  alpha = take(kinks, k - 1) + (target - take(h, k - 1)) / jnp.maximum(
      take(slope, k - 1), 1.0)
  # One Newton step on the result's norm Σ_i (m_i − s_i) − ε summed
  # directly (no cancellation of the large Σ m_i; exact slope on alpha's
  # segment).
  excess = jnp.sum(jnp.minimum(jnp.maximum(mag - alpha[:, None], 0.0),
                               mag - low), -1) - eps
  free = jnp.sum((low < alpha[:, None]) & (alpha[:, None] < mag), -1)
  alpha = alpha + excess / jnp.maximum(free, 1).astype(jnp.float32)
  alpha = jnp.where(h0 >= target, 0.0, jnp.maximum(alpha, 0.0))
  shrink = jnp.clip(alpha[:, None], low, mag)
  return (jnp.sign(d) * (mag - shrink)).reshape(shape).astype(dtype)


def project(x_adv: jax.Array, x: jax.Array, epsilon: float, norm: str) -> jax.Array:
  """Closest point to `x_adv` in {‖δ‖ ≤ ε} ∩ [0, 1] (L-inf and L1 exactly,
  L1 by `l1_box_projection`; L2 ball then box)."""
  delta = x_adv - x
  if norm == "linf":
    delta = jnp.clip(delta, -epsilon, epsilon)
  elif norm == "l1":
    delta = l1_box_projection(x, delta, epsilon)
  else:
    n = _per_example_norm(delta)
    delta = delta * jnp.minimum(1.0, epsilon / jnp.maximum(n, 1e-12))
  return jnp.clip(x + delta, 0.0, 1.0)


def ascent_step(x_adv: jax.Array, grad: jax.Array, step_size: float,
                norm: str) -> jax.Array:
  """Steepest ascent step of length `step_size` in the attack's norm (L1:
  the whole step on the coordinate of largest |gradient|; APGD's L1 step is
  its own sparse step, `apgd.l1_direction`)."""
  if norm == "linf":
    return x_adv + step_size * jnp.sign(grad)
  if norm == "l1":
    flat = grad.reshape(grad.shape[0], -1)
    top = jax.nn.one_hot(jnp.argmax(jnp.abs(flat), -1), flat.shape[-1],
                         dtype=grad.dtype)
    return x_adv + step_size * (jnp.sign(flat) * top).reshape(grad.shape)
  return x_adv + step_size * grad / jnp.maximum(_per_example_norm(grad), 1e-12)


def random_init(rng: jax.Array, x: jax.Array, epsilon: float, norm: str,
                init: str, init_std: float) -> jax.Array:
  """Starting point: uniform in the ball, x + init_std·N(0, 1) (TRADES), or x.

  L1 'uniform': standard normal noise projected onto the ball ∩ box
  (`l1_box_projection`), the random start of Croce & Hein 2021 (a sparse
  point on the sphere, not a uniform draw)."""
  if init == "zero":
    return x
  if init == "normal":
    return jnp.clip(x + init_std * jax.random.normal(rng, x.shape, x.dtype), 0, 1)
  if norm == "l1":
    noise = jax.random.normal(rng, x.shape, x.dtype)
    return jnp.clip(x + l1_box_projection(x, noise, epsilon), 0.0, 1.0)
  if norm == "linf":
    delta = jax.random.uniform(rng, x.shape, x.dtype, -epsilon, epsilon)
  else:
    k1, k2 = jax.random.split(rng)
    direction = jax.random.normal(k1, x.shape, x.dtype)
    direction = direction / jnp.maximum(_per_example_norm(direction), 1e-12)
    radius = jax.random.uniform(k2, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
    delta = epsilon * radius * direction
  return jnp.clip(x + delta, 0.0, 1.0)


def resolve_unroll(unroll) -> bool | int:
  """'auto' -> fully unrolled on CPU, rolled elsewhere; bools/ints pass through."""
  if unroll == "auto":
    return sharding.cpu_paths()
  return unroll


# Steps per compiled program of APGD / FAB on XLA:CPU (a host loop over
# unrolled pieces; docs/performance.md has the measurements).
CPU_STEPS_PER_CALL = 5


def check_per_call(label: str, value) -> None:
  """'auto' or an integer >= 0 (0 = all in one compiled program)."""
  if not (value == "auto" or (isinstance(value, int) and not isinstance(value, bool)
                              and value >= 0)):
    raise UserError(f"{label}={value!r} is not allowed; use 'auto' or an "
                    "integer >= 0 (0 = all in one compiled program)")


def resolve_per_call(per_call, cpu_value: int = CPU_STEPS_PER_CALL) -> int:
  """Steps (or queries) per compiled program: 'auto' -> `cpu_value` on CPU,
  0 (one program) elsewhere; integers pass through."""
  if per_call == "auto":
    return cpu_value if sharding.cpu_paths() else 0
  return int(per_call)


def target_classes(clean_logits: jax.Array, rank: int | jax.Array) -> jax.Array:
  """The class with the `rank`-th largest clean logit `[batch]` (rank 2 = the
  runner-up): APGD-T's target for its (rank − 1)-th run."""
  order = jnp.argsort(clean_logits, axis=-1)
  return jnp.take(order, clean_logits.shape[-1] - rank, axis=-1)


# ---------------------------------------------------------------- PGD
@dataclasses.dataclass(frozen=True)
class PGDConfig:
  """Static attack settings (hashable, so a jitted caller compiles once)."""
  epsilon: float = 8 / 255
  step_size: float = 2 / 255
  num_steps: int = 10
  norm: str = "linf"
  loss: str = "ce"
  init: str = "uniform"
  init_std: float = 0.001
  restarts: int = 1
  unroll: bool | int | str = "auto"

  def runs(self, num_classes: int) -> list[tuple[int, int]]:
    """(run index, target rank or 0) pairs: one per restart."""
    del num_classes
    return [(r, 0) for r in range(self.restarts)]

  def passes(self, num_classes: int) -> dict[str, int]:
    """Model passes per example in one run: 'grad' (forward + backward)
    and 'forward' (forward only)."""
    del num_classes
    return {"grad": self.num_steps, "forward": 0}

  def validate(self, prefix: str = "attack") -> "PGDConfig":
    check_range(f"{prefix}.epsilon", self.epsilon, 0.0,
                None if self.norm == "l1" else 1.0, low_open=True)
    check_range(f"{prefix}.step_size", self.step_size, 0.0, low_open=True)
    check_range(f"{prefix}.num_steps", self.num_steps, 1)
    check_range(f"{prefix}.restarts", self.restarts, 1)
    check_choice(f"{prefix}.norm", self.norm, NORMS)
    check_choice(f"{prefix}.loss", self.loss, tuple(LOSSES))
    check_choice(f"{prefix}.init", self.init, INITS)
    return self

  @classmethod
  def from_config(cls, cfg, prefix: str = "attack") -> "PGDConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in dict(cfg).items() if k in fields}
    for k in ("num_steps", "restarts"):
      if k in kw:
        kw[k] = int(kw[k])
    return cls(**kw).validate(prefix)

  # One run as a suite runs it (see `outcome`).
  black_box: ClassVar[bool] = False

  def single_run(self) -> "PGDConfig":
    return dataclasses.replace(self, restarts=1)

  def program(self, logits_of: Callable, restarts: int) -> Callable:
    """One compiled run (PGD's restarts differ only by their key)."""
    del restarts

    def run(variables, rank, r, x, y, key):
      del rank, r
      logits_fn = logits_of(variables)
      return outcome(logits_fn, x, pgd(logits_fn, x, y, key, self), y,
                     self.norm)

    return jax.jit(run)


def pgd(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
        labels: jax.Array | None, rng: jax.Array, cfg: PGDConfig,
        target_logits: jax.Array | None = None) -> jax.Array:
  """Projected gradient ascent on the input; returns `x_adv` like `x`.

  Args:
    logits_fn: `[batch, H, W, C] -> [batch, classes]`.
    x: clean images in [0, 1], `[batch, H, W, C]`.
    labels: `[batch]` integer labels (unused by the 'kl' loss).
    rng: PRNG key; restart r uses `fold_in(rng, r)`, so restart 0 is the same
      run whatever the number of restarts.
    cfg: the attack settings.
    target_logits: clean logits `[batch, classes]` for the 'kl' and 'se' losses.

  With restarts > 1 the result keeps, per example, the restart that
  misclassifies it (if any), else the one with the highest loss: an example
  counts as robust only if it survives every restart. The result is passed
  through `stop_gradient`.
  """
  unroll = resolve_unroll(cfg.unroll)

  def loss_sum(xa):
    return jnp.sum(_attack_loss(cfg.loss, logits_fn(xa), labels, target_logits))

  grad_fn = jax.grad(loss_sum)

  def body(_, xa):
    return project(ascent_step(xa, grad_fn(xa), cfg.step_size, cfg.norm), x,
                   cfg.epsilon, cfg.norm)

  def one_run(key):
    x0 = random_init(key, x, cfg.epsilon, cfg.norm, cfg.init, cfg.init_std)
    x0 = project(x0, x, cfg.epsilon, cfg.norm)
    return jax.lax.fori_loop(0, cfg.num_steps, body, x0, unroll=unroll)

  if cfg.restarts == 1:
    return jax.lax.stop_gradient(one_run(jax.random.fold_in(rng, 0)))

  best = None
  for r in range(cfg.restarts):
    xa = one_run(jax.random.fold_in(rng, r))
    logits = logits_fn(xa)
    loss = _attack_loss(cfg.loss, logits, labels, target_logits)
    fooled = (jnp.argmax(logits, -1) != labels) if labels is not None else (
        jnp.zeros_like(loss, bool))
    best = keep_worst(best, xa, loss, fooled)
  return jax.lax.stop_gradient(best[0])


def keep_worst(best, x_adv, loss, fooled):
  """Restarts' per-example worst case: `best` (None or a previous
  (x_adv, loss, fooled)) updated with one more run — an example keeps a run
  that misclassifies it (of several, the one with the highest loss), else
  the highest-loss run.
  x_adv `[batch, ...]`, loss and fooled `[batch]`."""
  if best is None:
    return x_adv, loss, fooled
  b_x, b_loss, b_fooled = best
  better = (fooled & ~b_fooled) | ((fooled == b_fooled) & (loss > b_loss))
  pick = better.reshape((-1,) + (1,) * (x_adv.ndim - 1))
  return (jnp.where(pick, x_adv, b_x), jnp.where(better, loss, b_loss),
          fooled | b_fooled)


# ------------------------------------------- one run, as a suite runs it
# Every attack config (`PGDConfig`, `apgd.APGDConfig`, `fab.FABConfig`,
# `square.SquareConfig`) knows how to run itself for a suite runner such as
# `evaluation.autoattack.run_suite`: `runs(num_classes)` lists its (run,
# target rank) pairs, `single_run()` is the config of one of them, and
# `program(logits_of, restarts)` returns one compiled run
# `(variables, rank, r, x, y, key) -> (fooled [batch], size [batch])`, where
# `logits_of(variables)` is the model's logits function; `black_box` says
# whether it uses the model's outputs only.
def outcome(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
            x_adv: jax.Array, y: jax.Array, norm: str
            ) -> tuple[jax.Array, jax.Array]:
  """(fooled `[batch]`, ‖x_adv − x‖ `[batch]` in `norm`): the returned point
  re-checked (as AutoAttack does) and its size."""
  d = (x_adv - x).reshape(x.shape[0], -1)
  size = (jnp.max(jnp.abs(d), -1) if norm == "linf" else
          jnp.sum(jnp.abs(d), -1) if norm == "l1" else
          jnp.sqrt(jnp.sum(d * d, -1)))
  return jnp.argmax(logits_fn(x_adv), -1) != y, size


def in_pieces(logits_of: Callable, num_steps: int, per_call: int, init,
              steps, result, norm: str) -> Callable:
  """A run as a host loop: a compiled start, one compiled piece of
  `per_call` steps (the first step's index is an argument, so one program
  serves every piece; a shorter last piece compiles once more) and a
  compiled end with the re-check of `outcome`. The same numbers as one
  program over all steps; on XLA:CPU a straight-line piece runs faster than
  a loop body (`CPU_STEPS_PER_CALL`).

  init(logits_fn, rank, r, x, y, key) -> (state, aux);
  steps(logits_fn, x, y, aux, state, first, count) -> state;
  result(x, state) -> x_adv.
  """

  @jax.jit
  def start(variables, rank, r, x, y, key):
    return init(logits_of(variables), rank, r, x, y, key)

  @functools.partial(jax.jit, static_argnums=6, donate_argnums=4)
  def piece(variables, x, y, aux, state, first, count):
    return steps(logits_of(variables), x, y, aux, state, first, count)

  @jax.jit
  def end(variables, x, y, state):
    return outcome(logits_of(variables), x, result(x, state), y, norm)

  def run(variables, rank, r, x, y, key):
    state, aux = start(variables, rank, r, x, y, key)
    for first in range(0, num_steps, per_call):
      state = piece(variables, x, y, aux, state, jnp.int32(first),
                    min(per_call, num_steps - first))
    return end(variables, x, y, state)

  return run
