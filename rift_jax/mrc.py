"""RiFT step 1: Module Robust Criticality (MRC), paper §3.3 / Algorithm 1.

    MRC(i) = max_{‖Δw_i‖_F ≤ ε‖w_i‖_F}  L_rob(θ + Δw_i) − L_rob(θ)

L_rob is the mean cross-entropy on a FIXED set of adversarial examples,
crafted once against θ (`fixed_adversarial_set`, PGD in inference mode). The
maximum is approximated by gradient ascent on Δw_i (SGD, lr 1, no momentum,
the official code's optimiser) with projection back onto the Frobenius ball:

- `projection='per_pass'` (default, the official code that made the paper's
  figures): one projection after each pass over the fixed set;
- `projection='per_step'` (the paper's Algorithm 1): after every step.

The loss is always evaluated at projected points, so both give a lower bound
of the true MRC (and the value is ≥ 0: Δw = 0 is feasible). Per module we
report the MRC, the robust-accuracy drop (percentage points) at the point
that attained it, and ‖Δw‖/‖w‖ there.

How the masks work: Δ is a pytree shaped like `params`; a per-leaf scalar
mask (1 at module i's kernel, 0 elsewhere) multiplies it, so the perturbed
model is θ + m ⊙ Δ and ∂L/∂Δ is zero outside module i — only module i moves.
Because the mask is data, not structure, ONE compiled step serves every
module, and `mode='vmap'` scores a stack of modules at once by vmapping over
(Δ, mask). Both modes run the same arithmetic and agree (tests check it).
Normalisation layers and biases are never perturbed (only Conv/Dense kernels
are modules, see `models.perturbable_modules`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from rift_jax import attacks, data, models, sharding
from rift_jax.errors import check_choice, check_range

ApplyFn = Callable[[Any, jax.Array], jax.Array]  # (variables, x) -> logits


@dataclasses.dataclass(frozen=True)
class MRCResult:
  mrc: float            # max loss increase found (≥ 0)
  adv_acc_drop: float   # robust accuracy at θ minus at the MRC point, in pp
  relative_norm: float  # ‖Δw‖_F / ‖w‖_F at the MRC point (≤ ε)
  base_loss: float      # L_rob(θ)
  base_acc: float       # robust accuracy of θ on the fixed set, in %
  loss_per_pass: tuple[float, ...] = ()

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


# ------------------------------------------------------------- fixed set
def fixed_adversarial_set(apply_fn: ApplyFn, variables, split: data.Split,
                          attack: attacks.PGDConfig, rng: jax.Array,
                          batch_size: int, mesh=None, progress: bool = False
                          ) -> tuple[np.ndarray, np.ndarray]:
  """Adversarial examples crafted once against θ in inference mode.

  Returns (x_adv float32 `[N, H, W, C]`, labels int32 `[N]`) on the host.
  """
  mesh = mesh or sharding.make_mesh()
  sharding.check_batch_size(batch_size, mesh, "rift.mrc.batch_size")
  craft = jax.jit(lambda v, x, y, k: attacks.pgd(lambda xa: apply_fn(v, xa),
                                                 x, y, k, attack))
  v = sharding.replicate(variables, mesh)
  out = []
  n_batches = -(-len(split) // batch_size)
  rows = sharding.process_rows(mesh, batch_size)
  for i, (x, y, _) in enumerate(tqdm(
      data.eval_batches(split, batch_size, rows), total=n_batches,
      disable=not progress, desc="fixed adversarial set", leave=False)):
    xs, ys = sharding.shard_batch(mesh, x, y)
    x_adv = craft(v, xs, ys, jax.random.fold_in(rng, i))
    valid = min(batch_size, len(split) - i * batch_size)  # drop the padding
    out.append(sharding.to_host(x_adv)[:valid])  # every host keeps the whole set
  return np.concatenate(out), split.labels.copy()


# ------------------------------------------------------- pure pieces
def _perturbed(params, delta, mask):
  return jax.tree_util.tree_map(lambda w, d, m: w + m * d, params, delta, mask)


def _tree_sq_norm(tree) -> jax.Array:
  return sum(jnp.sum(jnp.square(l)) for l in jax.tree_util.tree_leaves(tree))


def masked_norms(params, delta, mask) -> tuple[jax.Array, jax.Array]:
  """(‖m ⊙ Δ‖_F, ‖m ⊙ w‖_F): the perturbation's and the module's norms."""
  md = jax.tree_util.tree_map(lambda d, m: m * d, delta, mask)
  mw = jax.tree_util.tree_map(lambda w, m: m * w, params, mask)
  return jnp.sqrt(_tree_sq_norm(md)), jnp.sqrt(_tree_sq_norm(mw))


def project_to_ball(params, delta, mask, epsilon: float):
  """Δ ← m ⊙ Δ · min(1, ε‖w_i‖ / ‖m ⊙ Δ‖): onto the relative Frobenius ball."""
  d_norm, w_norm = masked_norms(params, delta, mask)
  scale = jnp.minimum(1.0, epsilon * w_norm / jnp.maximum(d_norm, 1e-12))
  return jax.tree_util.tree_map(lambda d, m: m * d * scale, delta, mask)


def _batch_loss(apply_fn, variables, delta, mask, x, y, w):
  """Weighted mean CE and the number of correct predictions on one batch."""
  v = dict(variables)
  v["params"] = _perturbed(variables["params"], delta, mask)
  logits = apply_fn(v, x)
  ce = attacks.cross_entropy(logits, y)
  loss = jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)
  correct = jnp.sum((jnp.argmax(logits, -1) == y) * w)
  return loss, (jnp.sum(ce * w), correct)


def ascent_step(apply_fn, variables, delta, mask, x, y, w, *, learning_rate,
                epsilon, project: bool):
  """One SGD ascent step on Δ (only module i moves); optionally projected."""
  grad = jax.grad(_batch_loss, argnums=2, has_aux=True)(
      apply_fn, variables, delta, mask, x, y, w)[0]
  delta = jax.tree_util.tree_map(lambda d, g, m: d + learning_rate * m * g,
                                 delta, grad, mask)
  if project:
    delta = project_to_ball(variables["params"], delta, mask, epsilon)
  return delta


def _loss_sums(apply_fn, variables, delta, mask, x, y, w):
  _, (ce_sum, correct) = _batch_loss(apply_fn, variables, delta, mask, x, y, w)
  return ce_sum, correct


# ---------------------------------------------------------------- driver
PROJECTIONS = ("per_pass", "per_step")
MODES = ("sequential", "vmap")


def module_robust_criticality(
    apply_fn: ApplyFn, variables, x_adv, y, *, modules: Sequence[str] | None = None,
    epsilon: float = 0.1, learning_rate: float = 1.0, num_passes: int = 10,
    batch_size: int = 512, projection: str = "per_pass", mode: str = "sequential",
    vmap_chunk: int = 4, mesh=None, progress: bool = False,
    on_step: Callable[[str, int, float], None] | None = None,
) -> dict[str, MRCResult]:
  """Scores every module (or `modules`) of `variables['params']`.

  Args:
    apply_fn: `(variables, x) -> logits`, inference mode (e.g.
      `lambda v, x: model.apply(v, x, train=False)`).
    variables: θ, `{'params': ..., 'batch_stats': ...}`.
    x_adv: the fixed adversarial set `[N, H, W, C]`; y: labels `[N]`.
    modules: names from `models.perturbable_modules` (default: all).
    epsilon: relative radius ε of the ball ‖Δw‖_F ≤ ε‖w‖_F.
    learning_rate: ascent step size (official code: 1.0, plain SGD).
    num_passes: passes over the fixed set (official code: 10 epochs).
    batch_size: ascent batch size (official code: 512); the last batch is
      padded and masked so every step has the same shape.
    projection: 'per_pass' (official code) or 'per_step' (paper Algorithm 1).
    mode: 'sequential' (one module at a time) or 'vmap' (`vmap_chunk` modules
      at once); the same numbers either way.
    on_step: called as on_step(module, pass, relative_norm) after each
      projection-bearing point (tests use it to check the constraint).

  Returns {module name: MRCResult} in network order.
  """
  check_range("rift.mrc.epsilon", epsilon, 0.0, low_open=True)
  check_range("rift.mrc.learning_rate", learning_rate, 0.0, low_open=True)
  check_range("rift.mrc.num_passes", num_passes, 1)
  check_range("rift.mrc.batch_size", batch_size, 1)
  check_choice("rift.mrc.projection", projection, PROJECTIONS)
  check_choice("rift.mrc.mode", mode, MODES)
  params = variables["params"]
  names = models.resolve_modules(params, list(modules) if modules else None)
  mesh = mesh or sharding.make_mesh()
  sharding.check_batch_size(batch_size, mesh, "rift.mrc.batch_size")

  # Fixed batches, padded + weighted, put on device once.
  x_adv, y = np.asarray(x_adv, np.float32), np.asarray(y, np.int32)
  batches = []
  rows = sharding.process_rows(mesh, batch_size)
  for x, yy, m in data.eval_batches(data.Split(x_adv, y), batch_size, rows):
    batches.append(sharding.shard_batch(mesh, x, yy, m.astype(np.float32)))
  n = float(len(y))
  variables = sharding.replicate(variables, mesh)

  per_step = projection == "per_step"

  def step_fn(v, d, m, x, yy, w):
    return ascent_step(apply_fn, v, d, m, x, yy, w, learning_rate=learning_rate,
                       epsilon=epsilon, project=per_step)

  def proj_fn(v, d, m):
    return project_to_ball(v["params"], d, m, epsilon)

  def sums_fn(v, d, m, x, yy, w):
    return _loss_sums(apply_fn, v, d, m, x, yy, w)

  def rel_fn(v, d, m):
    d_norm, w_norm = masked_norms(v["params"], d, m)
    return d_norm / jnp.maximum(w_norm, 1e-12)

  # Variables are arguments (not closed-over constants) so the compiled
  # functions are reused for any θ of the same shapes.
  axes = (None, 0, 0) if mode == "vmap" else None
  wrap = ((lambda f, extra: jax.jit(jax.vmap(f, in_axes=axes + (None,) * extra)))
          if mode == "vmap" else (lambda f, extra: jax.jit(f)))
  step, proj = wrap(step_fn, 3), wrap(proj_fn, 0)
  sums, rel = wrap(sums_fn, 3), wrap(rel_fn, 0)

  def evaluate(delta, mask):
    total_ce, total_correct = 0.0, 0.0
    for x, yy, w in batches:
      ce, c = sums(variables, delta, mask, x, yy, w)
      total_ce, total_correct = total_ce + ce, total_correct + c
    return np.asarray(total_ce) / n, 100.0 * np.asarray(total_correct) / n

  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  groups = ([[nm] for nm in names] if mode == "sequential" else
            [names[i:i + vmap_chunk] for i in range(0, len(names), vmap_chunk)])
  results: dict[str, MRCResult] = {}
  bar = tqdm(total=len(names), desc="MRC", disable=not progress, leave=False)
  for group in groups:
    masks = [_scalar_mask(params, nm) for nm in group]
    if mode == "vmap":
      mask = jax.tree_util.tree_map(lambda *ms: jnp.stack(ms), *masks)
      delta = jax.tree_util.tree_map(
          lambda z: jnp.zeros((len(group),) + z.shape, z.dtype), zeros)
    else:
      mask, delta = masks[0], zeros
    base_loss, base_acc = evaluate(delta, mask)
    best = [(0.0, 0.0, 0.0)] * len(group)  # (mrc, acc drop, rel norm) at Δ=0
    curve = [[] for _ in group]
    for p in range(num_passes):
      for x, yy, w in batches:
        delta = step(variables, delta, mask, x, yy, w)
      if not per_step:
        delta = proj(variables, delta, mask)
      loss, acc = evaluate(delta, mask)
      r = np.asarray(rel(variables, delta, mask))
      loss, acc, r = (np.atleast_1d(a) for a in (loss, acc, r))
      for j, nm in enumerate(group):
        b_loss = np.atleast_1d(base_loss)[j]
        b_acc = np.atleast_1d(base_acc)[j]
        inc = float(loss[j] - b_loss)
        curve[j].append(float(loss[j]))
        if on_step is not None:
          on_step(nm, p, float(r[j]))
        if inc > best[j][0]:
          best[j] = (inc, float(b_acc - acc[j]), float(r[j]))
    for j, nm in enumerate(group):
      results[nm] = MRCResult(mrc=best[j][0], adv_acc_drop=best[j][1],
                              relative_norm=best[j][2],
                              base_loss=float(np.atleast_1d(base_loss)[j]),
                              base_acc=float(np.atleast_1d(base_acc)[j]),
                              loss_per_pass=tuple(curve[j]))
    bar.update(len(group))
  bar.close()
  return {nm: results[nm] for nm in names}


def _scalar_mask(params, name: str):
  """Per-leaf float32 scalars: 1.0 at `name`'s kernel, 0.0 elsewhere."""
  bool_mask = models.module_mask(params, [name])
  return jax.tree_util.tree_map(lambda b: jnp.asarray(1.0 if b else 0.0, jnp.float32),
                                bool_mask)


def least_critical(results: dict[str, MRCResult], k: int = 1) -> list[str]:
  """The k modules with the lowest MRC (RiFT's non-robust-critical modules)."""
  return sorted(results, key=lambda nm: results[nm].mrc)[:k]


def most_critical(results: dict[str, MRCResult], k: int = 1) -> list[str]:
  return sorted(results, key=lambda nm: -results[nm].mrc)[:k]
