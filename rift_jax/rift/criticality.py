"""RiFT step 1: Module Robust Criticality (MRC), paper §3.3 / Algorithm 1.

`rift_jax.mrc(fns, variables, x_adv, y)` scores every module; this module
holds it and its parts.

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

Two routes use the per-module parameter mask, with the same arithmetic
(tests check that they agree module by module):

- `route='static'` (default, sequential): the mask is used statically — the
  params pytree is partitioned into module i's kernel and the rest, Δ has the
  kernel's shape, and only Δ is differentiated while every other parameter is
  a constant. XLA then computes ONE weight gradient and the backward pass
  stops at module i: the cost of a step falls with the module's depth, as the
  paper notes (App. D). One compiled step per module.
- `route='mask'`: Δ is a pytree shaped like `params` and a per-leaf scalar
  mask (1 at module i's kernel, 0 elsewhere) multiplies it, so the perturbed
  model is θ + m ⊙ Δ and ∂L/∂Δ is zero outside module i. The mask is data,
  so ONE compiled step serves every module, and `mode='vmap'` scores a
  stack of modules at once by vmapping over (Δ, mask) — but every step
  computes every layer's weight gradient and backpropagates through the
  whole network.

Normalisation layers and biases are never perturbed (only Conv/Dense kernels
are modules, see `models.perturbable_modules`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from rift_jax import attacks, data, evaluation, models, sharding
from rift_jax.errors import UserError, check_choice, check_range


@dataclasses.dataclass(frozen=True)
class MRCResult:
  mrc: float            # max loss increase found (≥ 0)
  adv_acc_drop: float   # robust accuracy at θ minus at the MRC point, in pp
  relative_norm: float  # ‖Δw‖_F / ‖w‖_F at the MRC point (≤ ε)
  base_loss: float      # L_rob(θ)
  base_acc: float       # robust accuracy of θ on the fixed set, in %
  loss_per_pass: tuple[float, ...] = ()
  steps_per_pass: int = 0  # ascent steps in one pass over the fixed set

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


# ------------------------------------------------------------- fixed set
def fixed_adversarial_set(fns: models.ModelFns, variables, split: data.Split,
                          attack: attacks.PGDConfig, rng: jax.Array,
                          batch_size: int, mesh=None, progress: bool = False
                          ) -> tuple[np.ndarray, np.ndarray]:
  """Adversarial examples crafted once against θ in inference mode.

  Returns (x_adv float32 `[N, H, W, C]`, labels int32 `[N]`) on every host.
  """
  def craft(v, x, y, key):
    return attacks.pgd(lambda xa: fns.logits(v, xa, train=False), x, y, key,
                       attack)

  batches = evaluation.Batches(split, batch_size, mesh, "rift.mrc.batch_size")
  x_adv = evaluation.per_example(
      jax.jit(craft), batches, consts=(sharding.replicate(variables, batches.mesh),),
      rng=rng, desc="fixed adversarial set" if progress else None)
  return x_adv, split.labels.copy()


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


def _per_example_loss(fns, variables, delta, mask, x, y):
  """CE `[batch]` and correctness `[batch]` of θ + m ⊙ Δ (inference mode)."""
  v = dict(variables)
  v["params"] = _perturbed(variables["params"], delta, mask)
  logits = fns.logits(v, x, train=False)
  return attacks.cross_entropy(logits, y), jnp.argmax(logits, -1) == y


def _batch_loss(fns, variables, delta, mask, x, y, w):
  """Weighted mean CE on one batch (w: 1 for real rows, 0 for padding)."""
  ce, _ = _per_example_loss(fns, variables, delta, mask, x, y)
  return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)


def weight_ascent_step(fns, variables, delta, mask, x, y, w, *, learning_rate,
                epsilon, project: bool):
  """One SGD ascent step on Δ (only module i moves); optionally projected."""
  grad = jax.grad(_batch_loss, argnums=2)(fns, variables, delta, mask, x, y, w)
  delta = jax.tree_util.tree_map(lambda d, g, m: d + learning_rate * m * g,
                                 delta, grad, mask)
  if project:
    delta = project_to_ball(variables["params"], delta, mask, epsilon)
  return delta


# ---------------------------------------------------------------- routes
class _MaskRoute:
  """Δ = params-shaped pytree, mask as data: one program for every module
  (vmapped over a chunk of modules with `vmapped`)."""

  def __init__(self, fns, params, lr, eps, per_step, vmapped):
    self.params, self.vmapped = params, vmapped

    def step_fn(v, d, m, x, y, w):
      return weight_ascent_step(fns, v, d, m, x, y, w, learning_rate=lr, epsilon=eps,
                         project=per_step)

    def rel_fn(v, d, m):
      d_norm, w_norm = masked_norms(v["params"], d, m)
      return d_norm / jnp.maximum(w_norm, 1e-12)

    # Variables are arguments (not closed-over constants) so the compiled
    # functions are reused for any θ of the same shapes.
    def wrap(f, extra):
      if not vmapped:
        return jax.jit(f)
      return jax.jit(jax.vmap(f, in_axes=(None, 0, 0) + (None,) * extra))
    self._step = wrap(step_fn, 3)
    self._proj = wrap(lambda v, d, m: project_to_ball(v["params"], d, m, eps), 0)
    self._loss = wrap(lambda v, d, m, x, y: _per_example_loss(fns, v, d, m, x, y), 2)
    self._rel = wrap(rel_fn, 0)

  def prepare(self, v, group, batches):
    del v, group
    return batches

  def start(self, group):
    masks = [_scalar_mask(self.params, nm) for nm in group]
    zeros = jax.tree_util.tree_map(jnp.zeros_like, self.params)
    if not self.vmapped:
      return zeros, masks[0]
    return (jax.tree_util.tree_map(
        lambda z: jnp.zeros((len(group),) + z.shape, z.dtype), zeros),
            jax.tree_util.tree_map(lambda *ms: jnp.stack(ms), *masks))

  def step(self, v, state, x, y, w):
    return self._step(v, *state, x, y, w), state[1]

  def project(self, v, state):
    return self._proj(v, *state), state[1]

  def losses(self, v, state):
    return self._loss, (v, *state)

  def rel(self, v, state):
    return self._rel(v, *state)


class _StaticRoute:
  """Δ = module i's kernel, the rest of θ constant: one weight gradient and
  a backward pass that stops at module i. The ascent step is compiled per
  module; the projection and norms per kernel shape.

  Reused prefix (`prefix_cache_mb` > 0): Δ on module i cannot change what
  the network computes before the root submodule that holds it (a ResNet
  block, a WRN group, a stem layer), so `prepare` runs that prefix once over
  the fixed set and the passes start from its output (`ModelFns.features` /
  `logits_after`): the forward passes, which dominate MRC, skip the prefix.
  Used when the features fit in `prefix_cache_mb` and reproduce the whole
  network's loss on the first batch; otherwise the passes run on the images.
  """

  def __init__(self, fns, params, lr, eps, per_step, prefix_cache_mb=0.0):
    self.fns, self.params, self.lr = fns, params, lr
    self.eps, self.per_step = eps, per_step
    self.cache_bytes = float(prefix_cache_mb) * 2**20
    self.paths = models.perturbable_modules(params)
    self.zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    self._full_loss = jax.jit(
        lambda v, d, m, x, y: _per_example_loss(fns, v, d, m, x, y))
    self._features = jax.jit(fns.features, static_argnums=2)
    self._compiled = {}
    self._order = None
    self._kept = (None, None)  # (cut, its features or None if it failed the check)
    self.cut = None          # the current module's cut (None: from the images)
    self.image_shape = None

  # -- the network as the current module sees it
  def _logits(self, v, path, d, x, cut):
    p = models.set_path(v["params"], path, models.get_path(v["params"], path) + d)
    v = {**v, "params": p}
    if cut is None:
      return self.fns.logits(v, x, train=False)
    return self.fns.logits_after(v, x, cut, self.image_shape)

  def _programs(self, name):
    """(ascent step, per-example loss) for module `name` at the current cut,
    compiled once (one module at a time). From the images the loss is the
    whole network's, one program for every module (`losses`)."""
    key = (name, self.cut)
    if key not in self._compiled:
      path, lr, eps, cut = self.paths[name], self.lr, self.eps, self.cut

      def per_example(v, d, x, y):
        logits = self._logits(v, path, d, x, cut)
        return attacks.cross_entropy(logits, y), jnp.argmax(logits, -1) == y

      def batch_loss(d, v, x, y, w):
        ce, _ = per_example(v, d, x, y)
        return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)

      def step(v, d, x, y, w):
        d = d + lr * jax.grad(batch_loss)(d, v, x, y, w)
        if self.per_step:
          d = _project_kernel(d, models.get_path(v["params"], path), eps)
        return d

      self._compiled = {key: (jax.jit(step), jax.jit(per_example))}
    return self._compiled[key]

  def _kernel(self, v, name):
    return models.get_path(v["params"], self.paths[name])

  def prepare(self, v, group, batches):
    """-> what the passes of `group` run on: `batches`, or the features at
    the cut before the module (module docstring)."""
    (name,) = group
    self.cut = None
    x0, y0 = next(iter(batches))
    self.image_shape = tuple(x0.shape[1:])
    if self.cache_bytes <= 0:
      return batches
    if self._order is None:
      self._order = self.fns.call_order(v, x0)
    top = self.paths[name][0]
    i = self._order.index(top) if top in self._order else 0
    if i == 0:
      return batches
    cut = self._order[i - 1]
    if self._kept[0] == cut:      # consecutive modules behind the same cut
      kept = self._kept[1]
      self.cut = None if kept is None else cut
      return batches if kept is None else kept
    self._kept = (None, None)     # free the previous cut's features first
    shape = jax.eval_shape(self._features, v, x0, cut)
    if math.prod(shape.shape) * shape.dtype.itemsize * len(batches) > self.cache_bytes:
      return batches
    feats = _Features([(self._features(v, x, cut), y) for x, y in batches], batches)
    # The cut network must give the whole network's loss (a root whose later
    # layers also read an earlier value would not): else use the images.
    self.cut = cut
    ce_cut, _ = self._programs(name)[1](v, jnp.zeros(self._kernel(v, name).shape),
                                        feats.pairs[0][0], y0)
    ce_full, _ = self._full_loss(v, self.zeros, _scalar_mask(self.params, name), x0, y0)
    if not np.allclose(np.asarray(ce_cut), np.asarray(ce_full), rtol=1e-4, atol=1e-5):
      self.cut, feats = None, None
    self._kept = (cut, feats)
    return batches if feats is None else feats

  def start(self, group):
    (name,) = group
    return name, jnp.zeros_like(models.get_path(self.params, self.paths[name]))

  def step(self, v, state, x, y, w):
    name, d = state
    return name, self._programs(name)[0](v, d, x, y, w)

  def project(self, v, state):
    name, d = state
    return name, _project_kernel_jit(d, self._kernel(v, name), self.eps)

  def losses(self, v, state):
    name, d = state
    if self.cut is None:
      delta = models.set_path(self.zeros, self.paths[name], d)
      return self._full_loss, (v, delta, _scalar_mask(self.params, name))
    return self._programs(name)[1], (v, d)

  def rel(self, v, state):
    name, d = state
    return _relative_norm(d, self._kernel(v, name))


class _Features:
  """The fixed set's batches as features at a cut: same order, padding and
  sharding as the `evaluation.Batches` they came from (what `evaluation.
  per_example` and the ascent loop iterate over)."""

  def __init__(self, pairs, batches):
    self.pairs, self._batches = pairs, batches

  def __len__(self) -> int:
    return len(self.pairs)

  def __iter__(self):
    return iter(self.pairs)

  def sizes(self):
    return self._batches.sizes()


def _project_kernel(d, w, eps):
  """Δ ← Δ·min(1, ε‖w‖_F/‖Δ‖_F) for one kernel."""
  return d * jnp.minimum(1.0, eps * jnp.linalg.norm(w)
                         / jnp.maximum(jnp.linalg.norm(d), 1e-12))


_project_kernel_jit = jax.jit(_project_kernel, static_argnums=2)


@jax.jit
def _relative_norm(d, w):
  return jnp.linalg.norm(d) / jnp.maximum(jnp.linalg.norm(w), 1e-12)


# ---------------------------------------------------------------- driver
PROJECTIONS = ("per_pass", "per_step")
MODES = ("sequential", "vmap")
ROUTES = ("static", "mask")


def check_settings(*, epsilon: float, learning_rate: float, num_passes: int,
                   batch_size: int, projection: str, mode: str,
                   route: str = "static", prefix_cache_mb: float = 0.0,
                   prefix: str = "rift.mrc") -> None:
  """One clear error for a bad MRC setting (also used to validate configs
  before any work)."""
  check_range(f"{prefix}.epsilon", epsilon, 0.0, low_open=True)
  check_range(f"{prefix}.learning_rate", learning_rate, 0.0, low_open=True)
  check_range(f"{prefix}.num_passes", num_passes, 1)
  check_range(f"{prefix}.batch_size", batch_size, 1)
  check_choice(f"{prefix}.projection", projection, PROJECTIONS)
  check_choice(f"{prefix}.mode", mode, MODES)
  check_choice(f"{prefix}.route", route, ROUTES)
  check_range(f"{prefix}.prefix_cache_mb", prefix_cache_mb, 0.0)
  if mode == "vmap" and route != "mask":
    raise UserError(f"{prefix}.mode='vmap' needs {prefix}.route='mask' (the "
                    "static route compiles one program per module)")


def mrc(fns: models.ModelFns, variables, x_adv, y, *,
        modules: Sequence[str] | None = None, epsilon: float = 0.1,
        learning_rate: float = 1.0, num_passes: int = 10, batch_size: int = 512,
        projection: str = "per_pass", mode: str = "sequential",
        route: str = "static", vmap_chunk: int = 4, mesh=None,
        prefix_cache_mb: float = 2048.0, progress: bool = False,
        on_step: Callable[[str, int, float], None] | None = None,
        ) -> dict[str, MRCResult]:
  """RiFT step 1: scores every module (or `modules`) of `variables['params']`.

  Args:
    fns: the model (`models.ModelFns`); it runs in inference mode.
    variables: θ, `{'params': ..., 'batch_stats': ...}`.
    x_adv: the fixed adversarial set `[N, H, W, C]` (`fixed_adversarial_set`);
      y: labels `[N]`.
    modules: names from `models.perturbable_modules` (default: all).
    epsilon: relative radius ε of the ball ‖Δw‖_F ≤ ε‖w‖_F.
    learning_rate: ascent step size (official code: 1.0, plain SGD).
    num_passes: passes over the fixed set (official code: 10 epochs).
    batch_size: ascent batch size (official code: 512); the last batch is
      padded and masked so every step has the same shape.
    projection: 'per_pass' (official code) or 'per_step' (paper Algorithm 1).
    mode: 'sequential' (one module at a time) or 'vmap' (`vmap_chunk` modules
      at once, `route='mask'` only); the same numbers either way.
    route: 'static' (differentiate only module i's kernel) or 'mask' (a
      params-shaped Δ times a data mask); the same numbers either way.
    prefix_cache_mb: static route: the most memory the reused prefix's
      features may take (`_StaticRoute`; 0: always run the whole network);
      the same numbers either way, to float rounding.
    on_step: called as on_step(module, pass, relative_norm) after each
      projection-bearing point (tests use it to check the constraint).

  Returns {module name: MRCResult} in network order.
  """
  check_settings(epsilon=epsilon, learning_rate=learning_rate,
                 num_passes=num_passes, batch_size=batch_size,
                 projection=projection, mode=mode, route=route,
                 prefix_cache_mb=prefix_cache_mb)
  params = variables["params"]
  names = models.resolve_modules(params, list(modules) if modules else None)
  # The fixed set, padded + weighted, put on device once.
  batches = evaluation.Batches(
      data.Split(np.asarray(x_adv, np.float32), np.asarray(y, np.int32)),
      batch_size, mesh, "rift.mrc.batch_size", keep=True)
  weights = batches.weights()
  n = float(batches.n)
  variables = sharding.replicate(variables, batches.mesh)
  per_step = projection == "per_step"
  vmapped = mode == "vmap"
  if route == "static":
    impl = _StaticRoute(fns, variables["params"], learning_rate, epsilon, per_step,
                        prefix_cache_mb)
  else:
    impl = _MaskRoute(fns, variables["params"], learning_rate, epsilon, per_step,
                      vmapped)

  def loss_and_acc(state, inputs):
    fn, consts = impl.losses(variables, state)
    ce, ok = evaluation.per_example(fn, inputs, consts=consts,
                                  axis=1 if vmapped else 0)
    return (np.atleast_1d(np.sum(ce, -1, dtype=np.float64) / n),
            np.atleast_1d(100.0 * np.sum(ok, -1, dtype=np.float64) / n))

  groups = ([names[i:i + vmap_chunk] for i in range(0, len(names), vmap_chunk)]
            if vmapped else [[nm] for nm in names])
  results: dict[str, MRCResult] = {}
  bar = tqdm(total=len(names), desc="MRC", disable=not progress, leave=False)
  for group in groups:
    inputs = impl.prepare(variables, group, batches)
    state = impl.start(group)
    base_loss, base_acc = loss_and_acc(state, inputs)
    best = [(0.0, 0.0, 0.0)] * len(group)  # (mrc, acc drop, rel norm) at Δ=0
    curve = [[] for _ in group]
    for p in range(num_passes):
      for (x, yy), w in zip(inputs, weights):
        state = impl.step(variables, state, x, yy, w)
      if not per_step:
        state = impl.project(variables, state)
      loss, acc = loss_and_acc(state, inputs)
      r = np.atleast_1d(np.asarray(impl.rel(variables, state)))
      for j, nm in enumerate(group):
        inc = float(loss[j] - base_loss[j])
        curve[j].append(float(loss[j]))
        if on_step is not None:
          on_step(nm, p, float(r[j]))
        if inc > best[j][0]:
          best[j] = (inc, float(base_acc[j] - acc[j]), float(r[j]))
    for j, nm in enumerate(group):
      results[nm] = MRCResult(mrc=best[j][0], adv_acc_drop=best[j][1],
                              relative_norm=best[j][2],
                              base_loss=float(base_loss[j]),
                              base_acc=float(base_acc[j]),
                              loss_per_pass=tuple(curve[j]),
                              steps_per_pass=len(weights))
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
