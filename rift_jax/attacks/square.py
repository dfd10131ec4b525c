"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020).

A score-based black-box attack: random search over perturbations on the
boundary of the ε-ball, one square window at a time, keeping a candidate
only when it lowers the margin loss

  L(x) = f_y(x) − max_{j≠y} f_j(x)          (an example is broken at L ≤ 0)

(Andriushchenko et al., Sec. 3 and Algorithm 1; AutoAttack's untargeted
Square uses this margin).

L∞ (paper, Algorithm 2): start at vertical stripes, x + ε·s_{col,channel}
(one random sign per column and channel). Each query draws a window of
side h, the same position for the whole batch, and a random sign per
(example, channel); the window is set to x ± ε on that channel:
  x_new = clip_[0,1](clip_{[x−ε, x+ε]}(x_best + 2ε·sign·1_window)).
L2 (paper, Algorithm 3): start at a 5x5 grid of "concentric rectangles"
blocks η (each block ±η per channel), rescaled to ‖δ‖₂ = ε. Each query
moves the mass of window 1 and of a second window 2 into window 1: the
old content of window 1 (normalised) plus a new ±η pattern, rescaled so
the total stays ε; window 2 is zeroed.
L1 (Croce & Hein, "Mind the box", ICML 2021, the L1 Square of AutoAttack's
L1 version): as L2 with L1 norms throughout — rings weighted 1/(k+1)⁴,
unit L1 patterns (`l1_pattern`), window 1 gets (max(ε − ‖δ‖₁, 0)/C +
‖δ_{w1 ∪ w2}‖₁)·C of mass per channel — and instead of a rescaling, the
start and every candidate are projected onto the L1 ball of radius
ε(1 − 10⁻⁶) ∩ box (`attacks.l1_box_projection`), so the start (the block
grid, unit L1 per block) is the projection of a much larger perturbation.

The window side follows p, the fraction of pixels changed:
  h = max(round(√(p·n/c)), 1)      (L2, L1: ≥ 3 and odd), n = H·W·C features,
with p = p_init halved after iterations 10, 50, 200, 500, 1000, 2000,
4000, 6000, 8000 (with `rescale_schedule` those are per 10,000 queries and
scaled to `num_queries`, as the authors' `resc_schedule`).

Compiled form: one `jax.lax.while_loop` per batch shape; it stops when every
example is broken or the budget is spent. The window side changes with the
iteration, so windows are full-size masks built from iota comparisons
(rows in [r, r + h), cols in [c, c + h)) and the L2 pattern for each side
is precomputed on the host and moved into place with a dynamic slice: one
loop body serves every side. Broken examples are not queried again
(masked: the update is discarded and the per-example query count, returned
by `square_run`, stops).

Loop form and speed against torchattacks: docs/performance.md.

Facts checked against the authors' code (fra31/auto-attack, square.py):
5,000 queries after the initial one, p_init = 0.8, candidates kept on a
strict decrease of the loss or when misclassified, one window position per
iteration for the whole batch, the L2 pattern transposed with probability
1/2 per iteration. Deliberate differences: (1) the window corner is drawn
from {0, ..., H − h} as the paper writes; the authors' code draws from
{0, ..., H − h − 1}, so it never changes the last row and column after
the initialisation; (2) the L∞ window sign is drawn per example and channel
as in the paper's Algorithm 2 (the authors' code shares it across the
batch; each example's search has the same distribution either way).
torchattacks 3.5.1's copy differs from the authors' in one place: its L2
step takes the norm of both windows over all channels at once, where the
authors' code (and this one) take it per channel; with one channel they are
the same (tests/test_square.py checks that case step by step).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from rift_jax import attacks
from rift_jax.attacks.common import l1_box_projection
from rift_jax.errors import UserError, check_choice, check_range

SQUARE_LOSSES = ("margin", "ce")
# Iterations (per 10,000 with rescale_schedule) after which p is halved.
P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


# --------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class SquareConfig:
  """Static Square settings (hashable: a jitted caller compiles once).

  loss: 'margin' (AutoAttack) or 'ce' (accept when the cross-entropy rises);
  success is always the margin ≤ 0.
  """
  epsilon: float = 8 / 255
  norm: str = "linf"
  num_queries: int = 5000
  p_init: float = 0.8
  restarts: int = 1
  rescale_schedule: bool = False
  loss: str = "margin"
  # Queries per compiled program when `autoattack.run_suite` runs the
  # attack: a host loop over unrolled programs of this many queries, with the
  # early exit checked between them (0 = one compiled while_loop).
  # 'auto': `CPU_QUERIES_PER_CALL` on CPU, 0 elsewhere.
  queries_per_call: int | str = "auto"

  def runs(self, num_classes: int) -> list[tuple[int, int]]:
    del num_classes
    return [(r, 0) for r in range(self.restarts)]

  def passes(self, num_classes: int) -> dict[str, int]:
    """Model passes per example in one run, at most: one forward per query
    and the initial one (a broken example stops being queried)."""
    del num_classes
    return {"grad": 0, "forward": self.num_queries + 1}

  def validate(self, prefix: str = "square") -> "SquareConfig":
    check_choice(f"{prefix}.norm", self.norm, attacks.NORMS)
    check_range(f"{prefix}.epsilon", self.epsilon, 0.0,
                1.0 if self.norm == "linf" else None, low_open=True)
    check_range(f"{prefix}.num_queries", self.num_queries, 1)
    check_range(f"{prefix}.p_init", self.p_init, 0.0, 1.0, low_open=True)
    check_range(f"{prefix}.restarts", self.restarts, 1)
    check_choice(f"{prefix}.rescale_schedule", self.rescale_schedule,
                 (False, True))
    check_choice(f"{prefix}.loss", self.loss, SQUARE_LOSSES)
    attacks.check_per_call(f"{prefix}.queries_per_call", self.queries_per_call)
    return self

  # One run as a suite runs it (`attacks.common.outcome`): outputs only.
  black_box: ClassVar[bool] = True

  def single_run(self) -> "SquareConfig":
    return dataclasses.replace(self, restarts=1)

  def program(self, logits_of: Callable, restarts: int) -> Callable:
    del restarts
    return _program(self, logits_of)


# Queries per compiled program on XLA:CPU (a host loop over unrolled
# pieces; docs/performance.md).
CPU_QUERIES_PER_CALL = 5


# ---------------------------------------------------- schedule (host side)
def p_level(i: int, num_queries: int, rescale: bool) -> int:
  """How many times p has been halved at iteration i (0-based):
  p_i = p_init / 2**p_level(i)."""
  it = int(i / num_queries * 10000) if rescale else i
  return sum(it > t for t in P_SCHEDULE)


def window_side(p: float, shape: tuple[int, int, int], norm: str) -> int:
  """Window side h for p on `[H, W, C]` images: max(round(√(p·H·W)), 1),
  for L2 and L1 at least 3 and odd; never more than min(H, W)."""
  hgt, wid, _ = shape
  s = int(round(math.sqrt(p * hgt * wid)))
  if norm == "linf":
    s = max(s, 1)
  else:
    s = max(s, 3)
    s += 1 - s % 2
  return min(s, hgt, wid)


def _side_table(cfg: SquareConfig, shape) -> np.ndarray:
  """Window side per iteration `[num_queries]` int32 (static)."""
  sides = [window_side(cfg.p_init / 2**l, shape, cfg.norm)
           for l in range(len(P_SCHEDULE) + 1)]
  levels = [p_level(i, cfg.num_queries, cfg.rescale_schedule)
            for i in range(cfg.num_queries)]
  return np.asarray([sides[l] for l in levels], np.int32)


def _unit(a: np.ndarray, norm: str) -> np.ndarray:
  if norm == "l1":
    return a / np.sum(np.abs(a))
  return a / np.sqrt(np.sum(a**2))


def _rectangles(rows: int, cols: int, norm: str = "l2") -> np.ndarray:
  """Concentric rectangles around the centre, ring k weighted 1/(k+1)²
  (L1: 1/(k+1)⁴), unit norm `[rows, cols]` (the authors' `eta_rectangles`)."""
  power = 4 if norm == "l1" else 2
  out = np.zeros((rows, cols))
  r0, c0 = rows // 2, cols // 2
  for k in range(max(rows // 2 + 1, cols // 2 + 1)):
    out[max(r0 - k, 0):min(r0 - k + 2 * k + 1, rows),
        max(c0 - k, 0):min(c0 - k + 2 * k + 1, cols)] += 1.0 / (k + 1)**power
  return _unit(out, norm)


def l2_pattern(s: int, norm: str = "l2") -> np.ndarray:
  """The L2 update η `[s, s]`: rectangles on the top half, minus rectangles
  on the bottom half, unit L2 norm (the authors' `eta`); norm='l1': the
  L1 update (`l1_pattern`)."""
  out = np.zeros((s, s))
  out[:s // 2] = _rectangles(s // 2, s, norm)
  out[s // 2:] = -_rectangles(s - s // 2, s, norm)
  return _unit(out, norm)


def l1_pattern(s: int) -> np.ndarray:
  """The L1 update η `[s, s]`: rings weighted 1/(k+1)⁴, each half and the
  whole of unit L1 norm."""
  return l2_pattern(s, "l1")


# ------------------------------------------------------------- helpers
def margin_and_loss(logits: jax.Array, y: jax.Array, loss: str
                    ) -> tuple[jax.Array, jax.Array]:
  """(margin, loss to minimise) `[batch]`: margin = f_y − max_{j≠y} f_j;
  loss = the margin or −CE."""
  margin = -attacks.margin(logits, y)
  if loss == "margin":
    return margin, margin
  return margin, -attacks.cross_entropy(logits, y)


def _bcast(v, x):
  return v.reshape((-1,) + (1,) * (x.ndim - 1))


def _sign(rng, shape, dtype):
  return jnp.where(jax.random.bernoulli(rng, 0.5, shape), 1.0,
                   -1.0).astype(dtype)


def _corner(rng, side, hgt, wid):
  """Top-left corner of a window of (traced) side `side`, uniform over
  {0..H−h} x {0..W−h}."""
  u = jax.random.uniform(rng, (2,))
  r = jnp.minimum(jnp.floor(u[0] * (hgt - side + 1)), hgt - side)
  c = jnp.minimum(jnp.floor(u[1] * (wid - side + 1)), wid - side)
  return r.astype(jnp.int32), c.astype(jnp.int32)


def _window(corner, side, hgt, wid):
  """`[H, W, 1]` bool mask of rows [r, r + h) x cols [c, c + h)."""
  r, c = corner
  rows = jax.lax.broadcasted_iota(jnp.int32, (hgt, wid, 1), 0)
  cols = jax.lax.broadcasted_iota(jnp.int32, (hgt, wid, 1), 1)
  return (rows >= r) & (rows < r + side) & (cols >= c) & (cols < c + side)


def _place(patterns, index, corner, hgt, wid):
  """patterns `[k, H, W]` (each at the top-left) -> pattern `index` moved
  to `corner` `[H, W, 1]`."""
  padded = jnp.pad(patterns[index], ((hgt, 0), (wid, 0)))
  r, c = corner
  out = jax.lax.dynamic_slice(padded, (hgt - r, wid - c), (hgt, wid))
  return out[..., None]


def _sq_norm(v, axes):
  return jnp.sum(v * v, axis=axes, keepdims=True)


# -------------------------------------------------------------- init
def _init_linf(rng, x, eps):
  """Vertical stripes: x + ε·s, one sign per (example, column, channel)."""
  b, _, wid, ch = x.shape
  return jnp.clip(x + eps * _sign(rng, (b, 1, wid, ch), x.dtype), 0.0, 1.0)


def _init_blocks(shape, norm: str = "l2") -> tuple[np.ndarray, np.ndarray]:
  """The L2 (L1) start's block grid: η(H // 5) at (sp + i·s, sp + j·s),
  each block alone in a `[blocks, H, W]` array, plain and transposed."""
  hgt, wid, _ = shape
  s = hgt // 5
  if s < 1:
    raise UserError(f"the {norm.upper()} Square attack needs images of at "
                    f"least 5x5 pixels, got {hgt}x{wid}")
  sp = (hgt - 5 * s) // 2
  eta = l2_pattern(s, norm)
  plain, transposed = [], []
  for i in range(hgt // s):
    for j in range(wid // s):
      r, c = sp + i * s, sp + j * s
      if r + s > hgt or c + s > wid:
        continue
      for out, pat in ((plain, eta), (transposed, eta.T)):
        block = np.zeros((hgt, wid))
        block[r:r + s, c:c + s] = pat
        out.append(block)
  return np.asarray(plain), np.asarray(transposed)


def _unit_l2(delta):
  return delta / (jnp.sqrt(_sq_norm(delta, (1, 2, 3))) + 1e-12)


def start_l2(x: jax.Array, eps: float, signs: jax.Array,
             transpose: jax.Array) -> jax.Array:
  """The L2 start `[batch, H, W, C]`: the block grid (`_init_blocks`),
  block n times `signs` `[batch, blocks, C]` and transposed where
  `transpose` `[blocks]`, rescaled to ‖δ‖₂ = ε and clipped to the box."""
  plain, transposed = (jnp.asarray(a, x.dtype)
                       for a in _init_blocks(x.shape[1:]))
  blocks = jnp.where(transpose[:, None, None], transposed, plain)
  delta = jnp.einsum("bnc,nhw->bhwc", signs, blocks)
  return jnp.clip(x + eps * _unit_l2(delta), 0.0, 1.0)


def _init_l2(rng, x, eps, norm="l2"):
  """`start_l2` (`start_l1`) with a random sign per (example, block,
  channel) and a random transposition per block (shared by the batch, as
  the authors)."""
  n = _init_blocks(x.shape[1:], norm)[0].shape[0]
  k_sign, k_t = jax.random.split(rng)
  start = start_l1 if norm == "l1" else start_l2
  return start(x, eps, _sign(k_sign, (x.shape[0], n, x.shape[-1]), x.dtype),
               jax.random.bernoulli(k_t, 0.5, (n,)))


# The L1 start and candidates are projected onto the ball of this radius
# times ε (as the authors), so they lie strictly inside it.
L1_SHRINK = 1.0 - 1e-6


def _project_l1(x, delta, eps):
  return jnp.clip(x + l1_box_projection(x, delta, eps * L1_SHRINK), 0.0, 1.0)


def start_l1(x: jax.Array, eps: float, signs: jax.Array,
             transpose: jax.Array) -> jax.Array:
  """The L1 start `[batch, H, W, C]`: the block grid of unit-L1 patterns
  (`l1_pattern`) with `signs` `[batch, blocks, C]`, transposed where
  `transpose` `[blocks]`, projected onto the ball of radius ε(1 − 10⁻⁶) ∩
  box (`attacks.l1_box_projection`; no rescaling first)."""
  plain, transposed = (jnp.asarray(a, x.dtype)
                       for a in _init_blocks(x.shape[1:], "l1"))
  blocks = jnp.where(transpose[:, None, None], transposed, plain)
  return _project_l1(x, jnp.einsum("bnc,nhw->bhwc", signs, blocks), eps)


# -------------------------------------------------------------- steps
def propose_linf(x: jax.Array, x_best: jax.Array, eps: float,
                 side: jax.Array, corner: tuple[jax.Array, jax.Array],
                 sign: jax.Array) -> jax.Array:
  """L∞ candidate `[batch, H, W, C]`: the window of side h at `corner` set to
  x ± ε per (example, channel), `sign` `[batch, 1, 1, C]` in {−1, +1}:
  clip_[0,1](clip_[x−ε, x+ε](x_best + 2ε·sign·1_window))."""
  _, hgt, wid, _ = x.shape
  mask = _window(corner, side, hgt, wid)
  x_new = jnp.clip(x_best + jnp.where(mask, 2 * eps * sign, 0.0),
                   x - eps, x + eps)
  return jnp.clip(x_new, 0.0, 1.0)


def propose_l2(x: jax.Array, x_best: jax.Array, eps: float,
               side: jax.Array, corner1, corner2, sign: jax.Array,
               eta: jax.Array) -> jax.Array:
  """L2 candidate `[batch, H, W, C]` (the paper's Algorithm 3).

  Per example and channel: window 1 gets its old content normalised,
  δ_w1/‖δ_w1‖, plus `sign` `[batch, 1, 1, C]` times the pattern `eta`
  `[H, W, 1]` (already placed at `corner1`), rescaled to
  √(max(ε² − ‖δ‖², 0)/C + ‖δ_{w1 ∪ w2}‖²): the mass of both windows (and
  any slack to ε) goes into window 1; window 2 is emptied. Then δ is
  rescaled to ‖δ‖₂ = ε and the box clip applied. Elementwise on
  full-size masks.
  """
  _, hgt, wid, ch = x.shape
  delta = x_best - x
  w1 = _window(corner1, side, hgt, wid)
  w2 = _window(corner2, side, hgt, wid)
  old1 = jnp.sqrt(_sq_norm(jnp.where(w1, delta, 0.0), (1, 2)))      # [b,1,1,c]
  both = jnp.sqrt(_sq_norm(jnp.where(w1 | w2, delta, 0.0), (1, 2)))
  total = jnp.sqrt(_sq_norm(delta, (1, 2, 3)))                      # [b,1,1,1]
  new = eta * sign + jnp.where(w1, delta, 0.0) / (1e-12 + old1)
  size = jnp.sqrt(jnp.maximum(eps**2 - total**2, 0.0) / ch + both**2)
  new = new / (1e-12 + jnp.sqrt(_sq_norm(new, (1, 2)))) * size
  delta = jnp.where(w1, new, jnp.where(w2, 0.0, delta))
  return jnp.clip(x + eps * _unit_l2(delta), 0.0, 1.0)


def _l1_norm(v, axes):
  return jnp.sum(jnp.abs(v), axis=axes, keepdims=True)


def propose_l1(x: jax.Array, x_best: jax.Array, eps: float,
               side: jax.Array, corner1, corner2, sign: jax.Array,
               eta: jax.Array) -> jax.Array:
  """L1 candidate `[batch, H, W, C]` (`propose_l2` with L1 norms): per
  example and channel, window 1 gets δ_w1/‖δ_w1‖₁ + `sign`·`eta` rescaled
  to L1 mass (max(ε − ‖δ‖₁, 0)/C + ‖δ_{w1 ∪ w2}‖₁)·C, window 2 is
  emptied, and the result is projected onto the ball of radius
  ε(1 − 10⁻⁶) ∩ box (the factor C as the authors' code)."""
  _, hgt, wid, ch = x.shape
  delta = x_best - x
  w1 = _window(corner1, side, hgt, wid)
  w2 = _window(corner2, side, hgt, wid)
  old1 = _l1_norm(jnp.where(w1, delta, 0.0), (1, 2))           # [b,1,1,c]
  both = _l1_norm(jnp.where(w1 | w2, delta, 0.0), (1, 2))
  total = _l1_norm(delta, (1, 2, 3))                           # [b,1,1,1]
  new = eta * sign + jnp.where(w1, delta, 0.0) / (1e-12 + old1)
  size = (jnp.maximum(eps - total, 0.0) / ch + both) * ch
  new = new / (1e-12 + _l1_norm(new, (1, 2))) * size
  delta = jnp.where(w1, new, jnp.where(w2, 0.0, delta))
  return _project_l1(x, delta, eps)


def _candidate(rng, x, x_best, cfg, side, pattern_index, patterns):
  """Draws the iteration's randomness and proposes: window corners shared
  by the batch, signs per (example, channel), the L2 pattern transposed
  with probability 1/2."""
  k1, k2, k_sign, k_t = jax.random.split(rng, 4)
  b, hgt, wid, ch = x.shape
  sign = _sign(k_sign, (b, 1, 1, ch), x.dtype)
  corner1 = _corner(k1, side, hgt, wid)
  if cfg.norm == "linf":
    return propose_linf(x, x_best, cfg.epsilon, side, corner1, sign)
  plain, transposed = patterns
  eta = jnp.where(jax.random.bernoulli(k_t, 0.5),
                  _place(transposed, pattern_index, corner1, hgt, wid),
                  _place(plain, pattern_index, corner1, hgt, wid))
  propose = propose_l1 if cfg.norm == "l1" else propose_l2
  return propose(x, x_best, cfg.epsilon, side, corner1,
                 _corner(k2, side, hgt, wid), sign, eta)


def _l2_patterns(cfg: SquareConfig, shape, dtype):
  """Per p-level η patterns `[levels, H, W]` at the top-left, plain and
  transposed, and the level index per iteration (L2 or L1 patterns, by
  `cfg.norm`)."""
  hgt, wid, _ = shape
  sides = [window_side(cfg.p_init / 2**l, shape, cfg.norm)
           for l in range(len(P_SCHEDULE) + 1)]
  plain = np.zeros((len(sides), hgt, wid))
  for l, s in enumerate(sides):
    plain[l, :s, :s] = l2_pattern(s, cfg.norm)
  transposed = np.transpose(plain, (0, 2, 1))
  levels = np.asarray([p_level(i, cfg.num_queries, cfg.rescale_schedule)
                       for i in range(cfg.num_queries)], np.int32)
  return (jnp.asarray(plain, dtype), jnp.asarray(transposed, dtype)), levels


# --------------------------------------------------------------- state
def square_init(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                y: jax.Array, rng: jax.Array, cfg: SquareConfig) -> dict:
  """The search state after the first query at the initial point.

  Keys: 'x_best' `[batch, H, W, C]`; 'margin', 'loss' `[batch]` at x_best
  (lowest so far); 'wrong' `[batch]` bool (argmax(x_best) ≠ y);
  'queries' `[batch]` int32; 'i' the iteration counter.
  """
  if cfg.norm == "linf":
    x_best = _init_linf(jax.random.fold_in(rng, 0), x, cfg.epsilon)
  else:
    x_best = _init_l2(jax.random.fold_in(rng, 0), x, cfg.epsilon, cfg.norm)
  logits = logits_fn(x_best)
  margin, loss = margin_and_loss(logits, y, cfg.loss)
  return dict(x_best=x_best, margin=margin, loss=loss,
              wrong=jnp.argmax(logits, -1) != y,
              queries=jnp.ones(x.shape[:1], jnp.int32), i=jnp.int32(0))


def square_step(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                y: jax.Array, rng: jax.Array, cfg: SquareConfig,
                state: dict) -> dict:
  """One query for every example not yet broken (margin > 0): propose a
  window update at iteration `state['i']` and keep it where the loss drops
  (or the example becomes misclassified). Traceable; the window side and
  pattern are looked up from static per-iteration tables."""
  i = state["i"]
  key = jax.random.fold_in(jax.random.fold_in(rng, 1), i)
  side = jnp.asarray(_side_table(cfg, x.shape[1:]))[i]
  patterns = index = None
  if cfg.norm != "linf":
    patterns, levels = _l2_patterns(cfg, x.shape[1:], x.dtype)
    index = jnp.asarray(levels)[i]
  x_new = _candidate(key, x, state["x_best"], cfg, side, index, patterns)
  logits = logits_fn(x_new)
  margin, loss = margin_and_loss(logits, y, cfg.loss)
  active = state["margin"] > 0
  lower = active & (loss < state["loss"])
  keep = lower | (active & (margin <= 0))
  return dict(
      x_best=jnp.where(_bcast(keep, x), x_new, state["x_best"]),
      margin=jnp.where(keep, margin, state["margin"]),
      loss=jnp.where(lower, loss, state["loss"]),
      wrong=jnp.where(keep, jnp.argmax(logits, -1) != y, state["wrong"]),
      queries=state["queries"] + active.astype(jnp.int32), i=i + 1)


# ------------------------------------------------------------- one run
def square_run(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
               y: jax.Array, rng: jax.Array, cfg: SquareConfig
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One Square run (traceable; call inside `jax.jit`).

  Args:
    logits_fn: `[batch, H, W, C] -> [batch, classes]` (only its outputs are
      used: no gradients).
    x: clean images in [0, 1] `[batch, H, W, C]`; y: labels `[batch]`.
    rng: key (the initialisation and every iteration fold it in).
    cfg: settings.

  Returns:
    (x_adv, fooled, queries): `x_adv` `[batch, H, W, C]` is the lowest-loss
    point found (inside the ε-ball and the box), `fooled` `[batch]` whether
    it is misclassified, `queries` `[batch]` int32 the model calls each
    example used (1 + iterations while it was unbroken).
  """
  state = square_init(logits_fn, x, y, rng, cfg)

  def cond(s):
    return (s["i"] < cfg.num_queries) & jnp.any(s["margin"] > 0)

  state = jax.lax.while_loop(
      cond, lambda s: square_step(logits_fn, x, y, rng, cfg, s), state)
  return (jax.lax.stop_gradient(state["x_best"]), state["wrong"],
          state["queries"])


def square_pieces(logits_fn_of: Callable, cfg: SquareConfig,
                  per_call: int) -> Callable:
  """`square_run` as a host loop: a compiled start (`square_init`), a
  compiled, unrolled piece of `per_call` queries (a shorter last piece
  compiles once more), the early exit checked on the host between pieces.
  Steps after every example is broken change nothing, so the result equals
  `square_run`'s. `logits_fn_of(variables)` is the model's logits function.
  -> `run(variables, x, y, rng) -> (x_adv, fooled, queries)`."""

  @jax.jit
  def start(variables, x, y, rng):
    return square_init(logits_fn_of(variables), x, y, rng, cfg)

  @functools.partial(jax.jit, static_argnums=5, donate_argnums=4)
  def piece(variables, x, y, rng, state, count):
    for _ in range(count):
      state = square_step(logits_fn_of(variables), x, y, rng, cfg, state)
    return state

  def run(variables, x, y, rng):
    state = start(variables, x, y, rng)
    for first in range(0, cfg.num_queries, per_call):
      if not bool(jnp.any(state["margin"] > 0)):
        break
      state = piece(variables, x, y, rng, state,
                    min(per_call, cfg.num_queries - first))
    return state["x_best"], state["wrong"], state["queries"]

  return run


def square(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
           y: jax.Array, rng: jax.Array, cfg: SquareConfig) -> jax.Array:
  """All restarts inside one traced function: `x_adv` `[batch, H, W, C]`,
  per example the first misclassified point found (else the last restart's
  lowest-loss point). Same signature as `evaluate.AttackFn`; restart r uses
  key fold_in(rng, r)."""
  best = fooled = None
  for r in range(cfg.restarts):
    xa, f, _ = square_run(logits_fn, x, y, jax.random.fold_in(rng, r), cfg)
    if best is None:
      best, fooled = xa, f
      continue
    best = jnp.where(_bcast(fooled, x), best, xa)
    fooled = fooled | f
  return best


def _program(cfg: SquareConfig, logits_of: Callable) -> Callable:
  """One run `(variables, rank, r, x, y, key) -> (fooled, size)`: the search
  (one jitted while loop, or with `queries_per_call` > 0, CPU's default,
  `square_pieces`), then the re-check of `attacks.outcome`."""
  per_call = attacks.resolve_per_call(cfg.queries_per_call,
                                      CPU_QUERIES_PER_CALL)
  if per_call > 0:
    search = square_pieces(logits_of, cfg, per_call)
    check = jax.jit(lambda variables, x, x_adv, y: attacks.outcome(
        logits_of(variables), x, x_adv, y, cfg.norm))

    def run(variables, rank, r, x, y, key):
      del rank, r
      x_adv, _, _ = search(variables, x, y, key)
      return check(variables, x, x_adv, y)

    return run

  def whole(variables, rank, r, x, y, key):
    del rank, r
    logits_fn = logits_of(variables)
    x_adv, _, _ = square_run(logits_fn, x, y, key, cfg)
    return attacks.outcome(logits_fn, x, x_adv, y, cfg.norm)

  return jax.jit(whole)
