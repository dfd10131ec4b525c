"""The one evaluation loop, and clean/adversarial accuracy built on it.

Everything that runs a compiled function over a whole split — evaluation,
the AutoAttack-style suite, crafting MRC's fixed adversarial set, MRC's loss
over it — goes through `per_example`:

    fixed-size batches (the last one padded) -> sharded over the mesh ->
    fn(*consts, x, y[, key_i]) with key_i = fold_in(rng, i) -> per-example
    outputs gathered to every host, padding dropped

so a split compiles once per batch shape, runs on one CPU, several GPUs or a
TPU slice alike, and every result is per example: accuracies are means of
the per-example correctness vectors the loop returns, and those vectors are
what `rift_jax.evaluation.records` stores for paired comparisons after the fact.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from rift_jax import attacks, data, sharding
from rift_jax.models import ModelFns

AttackFn = Callable[[Callable, jax.Array, jax.Array, jax.Array], jax.Array]


@functools.lru_cache(maxsize=None)
def pgd_attack_fn(cfg: attacks.PGDConfig) -> AttackFn:
  """Adapter: an attack as `(logits_fn, x, y, rng) -> x_adv`. The same
  config gives the same function, so evaluators of it share one compiled
  program."""
  return lambda logits_fn, x, y, rng: attacks.pgd(logits_fn, x, y, rng, cfg)


# -------------------------------------------------------------- the loop
class Batches:
  """A split as fixed-size, sharded batches `(x, y)` in order.

  x: float32 `[batch, H, W, C]` in [0, 1] (uint8 images are scaled, float
  images pass as they are), y: int32 `[batch]`; the last batch is padded
  with copies of its first row. Each process reads only its rows of every
  global batch (`sharding.process_rows`). `keep=True` keeps the device
  arrays after the first pass, for loops that go over the same batches many
  times (MRC's ascent).
  """

  def __init__(self, split: data.Split, batch_size: int, mesh=None,
               name: str = "eval.batch_size", keep: bool = False):
    self.split, self.batch_size = split, int(batch_size)
    self.mesh = mesh or sharding.make_mesh()
    sharding.check_batch_size(self.batch_size, self.mesh, name)
    self._kept = [] if keep else None

  def __len__(self) -> int:
    return -(-len(self.split) // self.batch_size)

  @property
  def n(self) -> int:
    return len(self.split)

  def sizes(self) -> Iterator[int]:
    """Real (unpadded) rows of each batch."""
    for start in range(0, self.n, self.batch_size):
      yield min(self.batch_size, self.n - start)

  def weights(self) -> list[jax.Array]:
    """Per batch, sharded float32 `[batch]`: 1 for real rows, 0 for padding
    (for losses that average over a batch, e.g. MRC's ascent)."""
    rows = sharding.process_rows(self.mesh, self.batch_size)
    return [sharding.shard_batch(self.mesh, (np.arange(self.batch_size) < size)
                                 .astype(np.float32)[rows])
            for size in self.sizes()]

  def __iter__(self):
    if self._kept is not None and len(self._kept) == len(self):
      yield from self._kept
      return
    kept = [] if self._kept is not None else None
    rows = sharding.process_rows(self.mesh, self.batch_size)
    for x, y, _ in data.eval_batches(self.split, self.batch_size, rows):
      batch = sharding.shard_batch(self.mesh, x, y)
      if kept is not None:
        kept.append(batch)
      yield batch
    if kept is not None:  # only a complete pass is kept
      self._kept = kept


def per_example(fn: Callable, batches: Batches, consts: Sequence[Any] = (),
                rng: jax.Array | None = None, axis: int = 0,
                desc: str | None = None, first: int = 0,
                on_batch: Callable[[int, Any], None] | None = None):
  """Runs `fn(*consts, x, y[, key])` on every batch; per-example outputs.

  Args:
    fn: a jitted function whose outputs (any pytree) have the batch along
      `axis` (e.g. `[batch]`, `[batch, H, W, C]`, or `[models, batch]` with
      axis=1 for a vmapped stack of models).
    batches: the split as `Batches`.
    consts: leading arguments, the same for every batch (variables, ...).
    rng: if given, batch i gets `jax.random.fold_in(rng, first + i)` as last
      argument (`first`: the index of the first batch, when a resumed loop
      passes the batches after those already done).
    desc: a progress bar label (None: no bar).
    on_batch: called as `on_batch(first + i, outputs of batch i)` (numpy,
      padding dropped), in order, as each batch's outputs reach the host.

  Returns:
    The outputs for the whole split as numpy arrays, batches concatenated
    along `axis` and the padding dropped: `[n, ...]`, on every host.
  """
  outs, pending = [], collections.deque()
  sizes = list(batches.sizes())

  def fetch():
    i, out = pending.popleft()
    out = jax.tree_util.tree_map(sharding.to_host, out)
    outs.append(jax.tree_util.tree_map(
        lambda a: np.take(a, np.arange(sizes[i]), axis=axis), out))
    if on_batch is not None:
      on_batch(first + i, outs[-1])

  bar = tqdm(batches, total=len(batches), desc=desc, disable=desc is None,
             leave=False)
  for i, (x, y) in enumerate(bar):
    args = (*consts, x, y) + ((jax.random.fold_in(rng, first + i),)
                              if rng is not None else ())
    pending.append((i, fn(*args)))
    if len(pending) > 2:  # keep the device busy; fetch with a lag
      fetch()
  while pending:
    fetch()
  if not outs:
    raise ValueError("per_example got an empty split")
  return jax.tree_util.tree_map(lambda *a: np.concatenate(a, axis=axis), *outs)


# ------------------------------------------------------- clean + attack
@functools.lru_cache(maxsize=None)
def _compiled_correct(fns: ModelFns, attack: AttackFn | None, stacked: bool):
  """jit of `(variables, x, y, rng) -> (clean_ok, adv_ok)`, bool `[batch]`
  (stacked: vmapped over a leading models axis of `variables`)."""

  def correct(variables, x, y, rng):
    logits_fn = lambda xa: fns.logits(variables, xa, train=False)
    clean = jnp.argmax(logits_fn(x), -1) == y
    if attack is None:
      return clean, clean
    x_adv = attack(logits_fn, x, y, rng)
    return clean, (jnp.argmax(logits_fn(x_adv), -1) == y) & clean

  if stacked:
    correct = jax.vmap(correct, in_axes=(0, None, None, None))
  return jax.jit(correct)


@dataclasses.dataclass
class Evaluator:
  """Per-example correctness, clean and under an attack (inference-mode BN).

  An example is robust only if it is classified correctly on the clean image
  AND on the attacked one (as AutoAttack counts): a clean mistake is never a
  robust success.
  """
  fns: ModelFns
  attack: AttackFn | None
  batch_size: int
  mesh: Any = None
  # stacked=True: `variables` carry a leading axis (e.g. one θ(α) per α) and
  # every model is evaluated on the same batches and attack keys with vmap.
  stacked: bool = False

  def __post_init__(self):
    self.mesh = self.mesh or sharding.make_mesh()
    sharding.check_batch_size(self.batch_size, self.mesh, "eval.batch_size")
    # Shared by every evaluator of the same model, attack and stacking: the
    # test of θ_AT and of θ* (and every epoch's validation) compile once.
    self._step = _compiled_correct(self.fns, self.attack, self.stacked)

  def per_example(self, variables, split: data.Split, rng: jax.Array,
                  desc: str | None = None) -> dict[str, np.ndarray]:
    """{'clean', 'adv'}: bool `[n]` (stacked: `[models, n]`); 'adv' is
    'clean' when there is no attack."""
    variables = sharding.replicate(variables, self.mesh)
    clean, adv = per_example(self._step, Batches(split, self.batch_size,
                                                 self.mesh),
                             consts=(variables,), rng=rng,
                             axis=1 if self.stacked else 0, desc=desc)
    return {"clean": clean, "adv": adv}

  def __call__(self, variables, split: data.Split, rng: jax.Array,
               desc: str | None = None) -> dict:
    """Accuracy in percent {'clean', 'adv', 'n'} and the per-example vectors
    under 'per_example'. With `stacked`, 'clean'/'adv' are arrays (one value
    per model)."""
    ok = self.per_example(variables, split, rng, desc)
    return {"clean": 100.0 * ok["clean"].mean(-1), "adv": 100.0 * ok["adv"].mean(-1),
            "n": len(split), "per_example": ok}
