"""FAB and FAB-T: the fast adaptive boundary attack (Croce & Hein, ICML 2020).

FAB looks for the smallest perturbation (in L∞, L2 or L1) that changes the
prediction, starting at the clean image x_0 (or near it) and staying in
the [0, 1] box. One iteration at the current point x_k (paper, Sec. 3 and
Algorithm 1):

  1. Linearise: for a class l the decision boundary {f_l = f_y} is
     approximated by the hyperplane π_l = {z : F_l + ⟨∇F_l, z − x_k⟩ = 0},
     F_l = f_l − f_y at x_k. Untargeted FAB takes the hyperplane nearest
     to x_k, l = argmin_{l≠y} |F_l| / ‖∇F_l‖_* (‖·‖_* the dual norm: L1 for
     L∞, L2 for L2, L∞ for L1); FAB-T takes l = the target class.
  2. Project x_k and x_0 onto π_l inside the box
     (`box_hyperplane_projection`): δ_k = proj(x_k) − x_k,
     δ_0 = proj(x_0) − x_0.
  3. Biased step towards the original image:
       α = min(‖δ_k‖ / (‖δ_k‖ + ‖δ_0‖), α_max)
       x_{k+1} = clip_[0,1]((1 − α)(x_k + η δ_k) + α (x_0 + η δ_0)),
     η > 1 overshoots the linearised boundary a little.
  4. If x_{k+1} is misclassified: keep it when ‖x_{k+1} − x_0‖ is the
     smallest seen, then step back: x_{k+1} ← x_0 + β (x_{k+1} − x_0)
     (the search then tightens from the adversarial side).

An example is broken at radius ε iff the smallest adversarial found has
norm ≤ ε. Defaults as the paper and AutoAttack: 100 iterations, α_max = 0.1,
η = 1.05, β = 0.9; restart 0 starts at x_0, later restarts at a random
point x_0 + (ε/2)·u/‖u‖ (u uniform in [−1, 1]^d for L∞, Gaussian for L2
and L1).
FAB-T (AutoAttack's standard version) runs once per target: the classes
ranked 2nd, 3rd, ..., 10th by the clean logits (`attacks.target_classes`).
On a linear model (box inactive) every iterate lies on the segment from x_0
to its projection, and these constants find 1.0052 x the minimal norm at the
second iterate (tests/test_fab.py derives the factor).

Facts checked against the authors' code (fra31/auto-attack, fab_base.py,
fab_projections.py): the adversarial test uses the argmax (any wrong class,
also in FAB-T); the projection's sign is chosen so that the point always
moves towards the hyperplane (from either side); when the hyperplane does not
meet the box the projection goes to the box corner that moves ⟨w, z⟩ furthest
towards it; α is computed with both norms floored at 1e-8; step 4 compares
strictly (<). The authors find the projection's breakpoint by bisection; here
it is a count over the sorted breakpoints (same result, no loop at all).

Cost per iteration: one forward + one backward per class (untargeted; the
Jacobian of all logits, as `jax.vmap` over vector-Jacobian products) or one
backward (FAB-T), plus one forward for the adversarial test.

Loop form: on CPU `autoattack.run_suite` runs FAB as a host loop over one
compiled unrolled program of `FABConfig.steps_per_call` steps; `fab_search`
/ `fab` traced inside a caller's jit keep one rolled loop (`unroll`).
Measurements, and the speed against torchattacks: docs/performance.md.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp

from rift_jax import attacks
from rift_jax.errors import UserError, check_choice, check_range

# An L2 weight below this is treated as zero by the projection (as the
# authors' code does), so 1/|w| cannot overflow.
_TINY_WEIGHT = 1e-8


# ------------------------------------------------------------ projection
def _smallest_level(weight: jax.Array, breakpoint: jax.Array,
                    target: jax.Array) -> jax.Array:
  """Smallest λ ≥ 0 with g(λ) = Σ_i w_i·min(λ, β_i) ≥ target, per row.

  Args:
    weight: w `[n, d]` ≥ 0; breakpoint: β `[n, d]` ≥ 0; target `[n]` ≥ 0.

  Returns:
    λ `[n]`; +inf where even g(∞) = Σ_i w_i β_i < target.

  g is nondecreasing and piecewise linear with kinks at the sorted
  breakpoints β_(1) ≤ ... ≤ β_(d):
    g(β_(k)) = Σ_{j<k} w_(j) β_(j) + β_(k) Σ_{j≥k} w_(j).
  With k the first index where g(β_(k)) ≥ target (a count, since g is
  monotone), λ lies in [β_(k−1), β_(k)] where g is linear:
    λ = (target − Σ_{j<k} w_(j) β_(j)) / Σ_{j≥k} w_(j).
  """
  bp, w = jax.lax.sort((breakpoint, weight), dimension=-1, num_keys=1)
  wbp = w * bp
  below = jnp.cumsum(wbp, axis=-1) - wbp                     # Σ_{j<k} w β
  tail = jnp.flip(jnp.cumsum(jnp.flip(w, -1), axis=-1), -1)  # Σ_{j≥k} w
  at_kink = below + bp * tail
  k = jnp.sum(at_kink < target[:, None], axis=-1)
  d = bp.shape[-1]
  kc = jnp.minimum(k, d - 1)[:, None]
  below_k = jnp.take_along_axis(below, kc, axis=-1)[:, 0]
  tail_k = jnp.take_along_axis(tail, kc, axis=-1)[:, 0]
  # tail_k = 0 only when target ≤ 0 (nothing to move): λ = 0.
  lam = jnp.where(tail_k > 0,
                  (target - below_k) / jnp.where(tail_k > 0, tail_k, 1.0), 0.0)
  return jnp.where(k >= d, jnp.inf, jnp.maximum(lam, 0.0))


def box_hyperplane_projection(t: jax.Array, w: jax.Array, b: jax.Array,
                              norm: str) -> jax.Array:
  """Minimal-norm step from t onto the hyperplane ⟨w, z⟩ = b inside [0, 1]^d.

  Args:
    t: points `[n, d]` in [0, 1]; w: normals `[n, d]`; b: offsets `[n]`.
    norm: 'linf', 'l2' or 'l1'.

  Returns:
    δ `[n, d]` = argmin ‖δ‖ subject to ⟨w, t + δ⟩ = b, t + δ ∈ [0, 1]^d
    (Croce & Hein 2020, Sec. 3: projection onto a hyperplane with box
    constraints). Where no box point lies on the hyperplane, δ moves to the
    box corner that brings ⟨w, z⟩ closest to b (as the authors' code).

  With c = ⟨w, t⟩ − b, signs are flipped so that c ≥ 0: the step must lower
  ⟨w, z⟩ by c, coordinate i moves by −sign(w_i)·m_i with room
  ρ_i = t_i (w_i > 0) or 1 − t_i (w_i < 0), and Σ|w_i| m_i = c.
    L∞: m_i = min(λ, ρ_i), λ the smallest with Σ|w_i| min(λ, ρ_i) ≥ c.
    L2 (KKT, δ = clip(−a·w) to the box): m_i = min(a|w_i|, ρ_i)
        = |w_i|·min(a, ρ_i/|w_i|), a the smallest with
        Σ w_i² min(a, ρ_i/|w_i|) ≥ c.
  Both are one `_smallest_level` call: a sort and cumulative sums.
    L1 (a linear programme: coordinate i lowers ⟨w, z⟩ by |w_i| per unit of
        ‖δ‖₁, at most |w_i| ρ_i): move the coordinates in order of
        decreasing |w_i| all the way to the box (m_i = ρ_i) until the next
        one covers the rest of c, that one partly; the others stay
        (`_l1_moves`: a sort, a cumulative sum, a count).
  """
  c = jnp.sum(w * t, axis=-1) - b
  side = jnp.where(c >= 0, 1.0, -1.0).astype(t.dtype)
  w = w * side[:, None]
  c = c * side
  room = jnp.where(w > 0, t, 1.0 - t)
  mag = jnp.abs(w)
  if norm == "linf":
    active = mag > 0
    bp = jnp.where(active, room, 0.0)
    lam = _smallest_level(jnp.where(active, mag, 0.0), bp, c)
    move = jnp.minimum(lam[:, None], bp)
  elif norm == "l1":
    move = _l1_moves(mag, room, c)
  else:
    active = mag > _TINY_WEIGHT
    bp = jnp.where(active, room / jnp.where(active, mag, 1.0), 0.0)
    lam = _smallest_level(jnp.where(active, mag * mag, 0.0), bp, c)
    move = jnp.where(active, mag * jnp.minimum(lam[:, None], bp), 0.0)
  return -jnp.sign(w) * move


def _l1_moves(mag: jax.Array, room: jax.Array, c: jax.Array) -> jax.Array:
  """The L1 projection's magnitudes m `[n, d]`: minimise Σ m_i subject to
  Σ mag_i·m_i = c (≥ 0), 0 ≤ m_i ≤ room_i. Greedy by decreasing mag_i
  (the LP's ratio rule): the first k coordinates (k = how many prefixes of
  capacity mag_i·room_i stay below c) move fully, coordinate k + 1 covers
  the rest; if all together cannot reach c, all move fully (the box
  corner). Weights ≤ `_TINY_WEIGHT` never move."""
  n, d = mag.shape
  active = mag > _TINY_WEIGHT
  mag = jnp.where(active, mag, 0.0)
  room = jnp.where(active, room, 0.0)
  order = jnp.broadcast_to(jnp.arange(d, dtype=jnp.int32), (n, d))
  _, m_s, r_s, idx = jax.lax.sort((-mag, mag, room, order), dimension=-1,
                                  num_keys=1)
  cap = m_s * r_s
  cum = jnp.cumsum(cap, -1)
  k = jnp.sum(cum < c[:, None], -1)           # coordinates moved fully
  kc = jnp.minimum(k, d - 1)[:, None]
  rest = (c - jnp.take_along_axis(cum - cap, kc, -1)[:, 0])
  m_k = jnp.take_along_axis(m_s, kc, -1)[:, 0]
  part = jnp.where(m_k > 0, rest / jnp.where(m_k > 0, m_k, 1.0), 0.0)
  pos = jnp.arange(d)[None]
  moves = jnp.where(pos < k[:, None], r_s,
                    jnp.where(pos == k[:, None], part[:, None], 0.0))
  moves = jnp.where((k >= d)[:, None], r_s, moves)  # unreachable: the corner
  _, moves = jax.lax.sort((idx, moves), dimension=-1, num_keys=1)
  return moves


# --------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class FABConfig:
  """Static FAB settings (hashable: a jitted caller compiles once).

  `epsilon` only decides success (and the radius of random starts): FAB
  itself minimises the norm. `targeted` selects FAB-T with
  `num_target_classes` targets (ranks 2, 3, ... of the clean logits).
  """
  epsilon: float = 8 / 255
  norm: str = "linf"
  num_steps: int = 100
  restarts: int = 1
  alpha_max: float = 0.1
  eta: float = 1.05
  beta: float = 0.9
  targeted: bool = False
  num_target_classes: int = 9
  unroll: bool | int | str = "auto"
  # Steps per compiled program when `autoattack.run_suite` runs the attack
  # (0 = all in one): 'auto' = `attacks.CPU_STEPS_PER_CALL` unrolled steps
  # per program on CPU (a host loop over them), 0 elsewhere.
  steps_per_call: int | str = "auto"

  def runs(self, num_classes: int) -> list[tuple[int, int]]:
    return runs(self, num_classes)

  def passes(self, num_classes: int) -> dict[str, int]:
    """Model passes per example in one run: per step the linearisation
    (FAB-T: one gradient of f_t − f_y; FAB: the Jacobian of every logit, one
    backward per class) and the adversarial check; one forward at the start."""
    per_step = 1 if self.targeted else num_classes
    return {"grad": self.num_steps * per_step, "forward": self.num_steps + 1}

  def validate(self, prefix: str = "fab") -> "FABConfig":
    check_choice(f"{prefix}.norm", self.norm, attacks.NORMS)
    check_range(f"{prefix}.epsilon", self.epsilon, 0.0,
                1.0 if self.norm == "linf" else None, low_open=True)
    check_range(f"{prefix}.num_steps", self.num_steps, 1)
    check_range(f"{prefix}.restarts", self.restarts, 1)
    check_range(f"{prefix}.alpha_max", self.alpha_max, 0.0, 1.0)
    check_range(f"{prefix}.eta", self.eta, 0.0, low_open=True)
    check_range(f"{prefix}.beta", self.beta, 0.0, 1.0, low_open=True)
    check_range(f"{prefix}.num_target_classes", self.num_target_classes, 1)
    check_choice(f"{prefix}.targeted", self.targeted, (False, True))
    if not (self.unroll == "auto" or isinstance(self.unroll, bool) or (
        isinstance(self.unroll, int) and self.unroll >= 1)):
      raise UserError(f"{prefix}.unroll={self.unroll!r} is not allowed; use "
                      "'auto', True, False or a positive int")
    attacks.check_per_call(f"{prefix}.steps_per_call", self.steps_per_call)
    return self

  # One run as a suite runs it (`attacks.common.outcome`).
  black_box: ClassVar[bool] = False

  def single_run(self) -> "FABConfig":
    return dataclasses.replace(self, restarts=1, num_target_classes=1)

  def program(self, logits_of: Callable, restarts: int) -> Callable:
    """`restarts`: the attack's own count, which decides the random starts
    (`uses_random_start`)."""
    return _program(self, logits_of, restarts)


def resolve_unroll(unroll) -> bool | int:
  """'auto' -> 1 (a rolled loop) on every backend: measured on XLA:CPU,
  unrolling a whole search compiles slower (docs/performance.md); on
  GPU/TPU a rolled loop is the usual choice. Bools and ints pass through."""
  return 1 if unroll == "auto" else unroll


# ------------------------------------------------------------ geometry
def _norm(v: jax.Array, norm: str) -> jax.Array:
  """Per-row norm `[n]` of flat `[n, d]` vectors."""
  if norm == "linf":
    return jnp.max(jnp.abs(v), axis=-1)
  if norm == "l1":
    return jnp.sum(jnp.abs(v), axis=-1)
  return jnp.sqrt(jnp.sum(v * v, axis=-1))


def _dual_norm(v: jax.Array, norm: str) -> jax.Array:
  """‖v‖_* over the last axis: L1 for the L∞ attack, L2 for L2, L∞ for L1."""
  if norm == "linf":
    return jnp.sum(jnp.abs(v), axis=-1)
  if norm == "l1":
    return jnp.max(jnp.abs(v), axis=-1)
  return jnp.sqrt(jnp.sum(v * v, axis=-1))


def random_start_point(rng: jax.Array, x: jax.Array, epsilon: float,
                       norm: str) -> jax.Array:
  """FAB's restart point `[batch, ...]`: x + (ε/2)·u/‖u‖ clipped to [0, 1],
  u uniform in [−1, 1]^d (L∞) or standard normal (L2, L1), as the authors."""
  flat = x.reshape(x.shape[0], -1)
  if norm == "linf":
    u = jax.random.uniform(rng, flat.shape, flat.dtype, -1.0, 1.0)
  else:
    u = jax.random.normal(rng, flat.shape, flat.dtype)
  u = u / jnp.maximum(_norm(u, norm), 1e-12)[:, None]
  return jnp.clip(flat + 0.5 * epsilon * u, 0.0, 1.0).reshape(x.shape)


# -------------------------------------------------------- linearisation
def _nearest_boundary(logits_fn, z, y, norm):
  """Untargeted step 1: (F_l, ∇F_l) `[batch]`, `[batch, d]` of the
  hyperplane nearest to z, l = argmin_{l≠y} |F_l| / ‖∇F_l‖_*.

  All class gradients come from one forward pass and a vmap of its
  vector-Jacobian product over the cotangents e_l − e_y.
  """
  shape = z.shape
  logits, vjp = jax.vjp(logits_fn, z)
  k = logits.shape[-1]
  onehot_y = jax.nn.one_hot(y, k, dtype=logits.dtype)
  cot = jnp.eye(k, dtype=logits.dtype)[:, None, :] - onehot_y[None]
  (grads,) = jax.vmap(vjp)(cot)                        # [k, batch, ...]
  grads = jnp.moveaxis(grads.reshape((k, shape[0], -1)), 0, 1)
  diff = logits - jnp.sum(logits * onehot_y, -1, keepdims=True)
  dist = jnp.abs(diff) / (_dual_norm(grads, norm) + 1e-12)
  dist = jnp.where(onehot_y > 0, jnp.inf, dist)
  l = jnp.argmin(dist, axis=-1)
  f = jnp.take_along_axis(diff, l[:, None], axis=-1)[:, 0]
  g = jnp.take_along_axis(grads, l[:, None, None], axis=1)[:, 0]
  return f, g


def _target_boundary(logits_fn, z, y, y_target):
  """FAB-T step 1: F = f_t − f_y `[batch]` and its gradient `[batch, d]`."""
  def diff(v):
    logits = logits_fn(v)
    f = (jnp.take_along_axis(logits, y_target[:, None], -1)
         - jnp.take_along_axis(logits, y[:, None], -1))[:, 0]
    return jnp.sum(f), f
  (_, f), g = jax.value_and_grad(diff, has_aux=True)(z)
  return f, g.reshape(z.shape[0], -1)


# ------------------------------------------------------------- one run
def fab_init(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
             y: jax.Array, rng: jax.Array, cfg: FABConfig,
             random_start: bool | jax.Array = False) -> tuple:
  """The search state before step 1: (x_k, x_best, best_norm), images
  flattened `[batch, d]`; best_norm is 0 where x is already misclassified,
  else +inf."""
  b = x.shape[0]
  x_start = jnp.where(random_start,
                      random_start_point(rng, x, cfg.epsilon, cfg.norm),
                      x).reshape(b, -1)
  clean_wrong = jnp.argmax(logits_fn(x), axis=-1) != y
  best0 = jnp.where(clean_wrong, 0.0, jnp.inf).astype(x.dtype)
  return x_start, x.reshape(b, -1), best0


def fab_steps(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
              y: jax.Array, state: tuple, cfg: FABConfig,
              y_target: jax.Array | None = None, count: int | None = None,
              unroll: bool | int = 1) -> tuple:
  """`count` FAB iterations from `state` (default `cfg.num_steps`;
  traceable). The iteration does not depend on its index, so consecutive
  calls equal one call over all steps."""
  norm = cfg.norm
  b = x.shape[0]
  x0 = x.reshape(b, -1)
  unflat = lambda v: v.reshape(x.shape)

  def linearise(z):
    if y_target is None:
      return _nearest_boundary(logits_fn, unflat(z), y, norm)
    return _target_boundary(logits_fn, unflat(z), y, y_target)

  def body(_, s):
    xk, x_best, best = s
    f, w = linearise(xk)
    offset = jnp.sum(w * xk, axis=-1) - f            # π: ⟨w, z⟩ = offset
    # Both projections (from x_k and from x_0) in one call, each example's
    # pair in adjacent rows: a batch sharded over devices stays where it is
    # (a concatenation along the batch made GSPMD move rows between devices
    # every step). The projection is row by row, so the order changes no bit.
    pair = lambda u, v: jnp.stack([u, v], axis=1).reshape((2 * b,) + u.shape[1:])
    delta = box_hyperplane_projection(
        pair(xk, x0), pair(w, w), pair(offset, offset), norm).reshape(b, 2, -1)
    d_k, d_0 = delta[:, 0], delta[:, 1]
    n_k = jnp.maximum(_norm(d_k, norm), 1e-8)[:, None]
    n_0 = jnp.maximum(_norm(d_0, norm), 1e-8)[:, None]
    alpha = jnp.clip(n_k / (n_k + n_0), 0.0, cfg.alpha_max)
    x_new = jnp.clip((1 - alpha) * (xk + cfg.eta * d_k)
                     + alpha * (x0 + cfg.eta * d_0), 0.0, 1.0)
    adv = jnp.argmax(logits_fn(unflat(x_new)), axis=-1) != y
    dist = _norm(x_new - x0, norm)
    better = adv & (dist < best)
    x_best = jnp.where(better[:, None], x_new, x_best)
    best = jnp.where(better, dist, best)
    xk = jnp.where(adv[:, None], x0 + cfg.beta * (x_new - x0), x_new)
    return xk, x_best, best

  count = cfg.num_steps if count is None else count
  return jax.lax.fori_loop(0, count, body, tuple(state), unroll=unroll)


def fab_search(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
               y: jax.Array, rng: jax.Array, cfg: FABConfig,
               y_target: jax.Array | None = None,
               random_start: bool | jax.Array = False
               ) -> tuple[jax.Array, jax.Array]:
  """FAB as a minimum-norm attack: one run (traceable; call inside `jax.jit`):
  `fab_init`, all steps in one loop (`cfg.unroll`).

  Args:
    logits_fn: `[batch, H, W, C] -> [batch, classes]`.
    x: clean images in [0, 1] `[batch, H, W, C]`; y: labels `[batch]`.
    rng: key for the random start; cfg: settings (`cfg.epsilon` sets the
      random start's radius only).
    y_target: `[batch]` target classes (FAB-T) or None (untargeted).
    random_start: start at `random_start_point(...)` instead of x (a Python
      or traced bool: restart 0 and later restarts share one compilation).

  Returns:
    (x_best, best_norm): the misclassified point of smallest norm found
    `[batch, H, W, C]` (x where none) and its distance ‖x_best − x‖ `[batch]`
    (+inf where none, 0 where x itself is misclassified).
  """
  state = fab_init(logits_fn, x, y, rng, cfg, random_start)
  _, x_best, best = fab_steps(logits_fn, x, y, state, cfg, y_target,
                              unroll=resolve_unroll(cfg.unroll))
  return jax.lax.stop_gradient(x_best.reshape(x.shape)), best


def fab_result(x: jax.Array, x_best: jax.Array, best: jax.Array,
               cfg: FABConfig) -> tuple[jax.Array, jax.Array]:
  """(x_adv, fooled) at radius ε from a search's (x_best, best_norm)."""
  fooled = best <= cfg.epsilon
  x_adv = jnp.where(fooled.reshape((-1,) + (1,) * (x.ndim - 1)),
                    x_best.reshape(x.shape), x)
  return jax.lax.stop_gradient(x_adv), fooled


def fab_run(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
            y: jax.Array, rng: jax.Array, cfg: FABConfig,
            y_target: jax.Array | None = None,
            random_start: bool | jax.Array = False
            ) -> tuple[jax.Array, jax.Array]:
  """One FAB run judged at radius ε (traceable; call inside `jax.jit`).

  Args: as `fab_search` (`random_start`: see `uses_random_start`).

  Returns:
    (x_adv, fooled): `fooled` `[batch]` bool = an adversarial example with
    ‖x_adv − x‖ ≤ ε was found; `x_adv` `[batch, H, W, C]` is that point
    (the smallest found), x elsewhere.
  """
  x_best, best = fab_search(logits_fn, x, y, rng, cfg, y_target, random_start)
  return fab_result(x, x_best, best, cfg)


# ------------------------------------------------------- runs and all
def runs(cfg: FABConfig, num_classes: int) -> list[tuple[int, int]]:
  """(run index r, target rank or 0) pairs in the authors' order: for FAB-T
  every restart of target rank 2, then of rank 3, ...; r = i·restarts +
  restart, so restart = r % restarts (`uses_random_start`)."""
  if num_classes < 2:
    raise UserError(f"FAB needs at least 2 classes, the model has "
                    f"{num_classes}")
  if not cfg.targeted:
    return [(r, 0) for r in range(cfg.restarts)]
  ranks = range(2, min(cfg.num_target_classes, num_classes - 1) + 2)
  return [(i * cfg.restarts + r, t) for i, t in enumerate(ranks)
          for r in range(cfg.restarts)]


def uses_random_start(cfg: FABConfig, r: int | jax.Array) -> bool | jax.Array:
  """Run r starts at a random point iff it is not the first restart of its
  target (as the authors: `use_rand_start = counter > 0`)."""
  return r % cfg.restarts > 0


def fab(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
        y: jax.Array, rng: jax.Array, cfg: FABConfig) -> jax.Array:
  """All FAB runs (restarts; targets for FAB-T) inside one traced function:
  `x_adv` `[batch, H, W, C]`, per example the first point found within ε
  (x where none). Same signature as `evaluate.AttackFn`; run r uses key
  fold_in(rng, r).

  Every run is unrolled into the graph; for many targets prefer a host loop
  over `runs(...)` with one compiled `fab_run` (as `autoattack.run_suite`).
  """
  clean_logits = logits_fn(x)
  best = fooled = None
  for r, rank in runs(cfg, clean_logits.shape[-1]):
    y_t = attacks.target_classes(clean_logits, rank) if rank else None
    xa, f = fab_run(logits_fn, x, y, jax.random.fold_in(rng, r), cfg, y_t,
                    uses_random_start(cfg, r))
    if best is None:
      best, fooled = xa, f
      continue
    best = jnp.where((f & ~fooled).reshape((-1,) + (1,) * (x.ndim - 1)),
                     xa, best)
    fooled = fooled | f
  return best


def _program(cfg: FABConfig, logits_of: Callable, restarts: int) -> Callable:
  """One run `(variables, rank, r, x, y, key) -> (fooled, size)`; run r
  starts at a random point iff r % restarts > 0. One jitted program, or
  with `steps_per_call` > 0 (CPU's default) a host loop over compiled
  pieces (`attacks.in_pieces`; FAB's iteration does not depend on its
  index; each piece is short, so unrolled unless the config says
  otherwise)."""
  per_call = attacks.resolve_per_call(cfg.steps_per_call)

  def target(logits_fn, x, rank):
    return (attacks.target_classes(logits_fn(x), rank) if cfg.targeted
            else None)

  if 0 < per_call < cfg.num_steps:
    unroll = True if cfg.unroll == "auto" else cfg.unroll

    def init(logits_fn, rank, r, x, y, key):
      return fab_init(logits_fn, x, y, key, cfg,
                      random_start=r % restarts > 0), target(logits_fn, x, rank)

    def steps(logits_fn, x, y, y_t, state, first, count):
      del first
      return fab_steps(logits_fn, x, y, state, cfg, y_t, count=count,
                       unroll=unroll)

    def result(x, state):
      _, x_best, best = state
      return fab_result(x, x_best, best, cfg)[0]

    return attacks.in_pieces(logits_of, cfg.num_steps, per_call, init, steps,
                             result, cfg.norm)

  def run(variables, rank, r, x, y, key):
    logits_fn = logits_of(variables)
    x_adv, _ = fab_run(logits_fn, x, y, key, cfg, target(logits_fn, x, rank),
                       random_start=r % restarts > 0)
    return attacks.outcome(logits_fn, x, x_adv, y, cfg.norm)

  return jax.jit(run)
