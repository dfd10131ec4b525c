"""Clean and adversarial accuracy over a data split, compiled once per shape.

`Evaluator` holds one jitted function per attack setting; batches are padded
to a fixed size (masked) and sharded over the mesh, so a whole split runs
without recompiling. Counting happens on device; one host transfer per batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from rift_jax import attacks, data, sharding
from rift_jax.models import ModelFns

AttackFn = Callable[[Callable, jax.Array, jax.Array, jax.Array], jax.Array]


def pgd_attack_fn(cfg: attacks.PGDConfig) -> AttackFn:
  """Adapter: an attack as `(logits_fn, x, y, rng) -> x_adv`."""
  return lambda logits_fn, x, y, rng: attacks.pgd(logits_fn, x, y, rng, cfg)


@dataclasses.dataclass
class Evaluator:
  """Counts correct predictions, clean and under an attack (eval-mode BN)."""
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
    counts = (jax.vmap(self._counts, in_axes=(0, None, None, None, None))
              if self.stacked else self._counts)
    self._step = jax.jit(counts)

  def _counts(self, variables, x, y, mask, rng):
    logits_fn = lambda xa: self.fns.logits(variables, xa, train=False)
    clean_ok = jnp.argmax(logits_fn(x), -1) == y
    clean = jnp.sum(clean_ok & mask)
    if self.attack is None:
      return clean, clean
    x_adv = self.attack(logits_fn, x, y, rng)
    # Robust = correct on the clean image AND on the attacked one (as
    # AutoAttack counts): a clean mistake is never a robust success.
    adv = jnp.sum((jnp.argmax(logits_fn(x_adv), -1) == y) & clean_ok & mask)
    return clean, adv

  def __call__(self, variables, split: data.Split, rng: jax.Array,
               desc: str | None = None) -> dict[str, float]:
    """Accuracy in percent: {'clean', 'adv', 'n'} ('adv' = clean without attack).

    With `stacked`, 'clean' and 'adv' are arrays with one value per model.
    """
    variables = sharding.replicate(variables, self.mesh)
    totals = 0
    pending = []
    batches = data.eval_batches(split, self.batch_size,
                                sharding.process_rows(self.mesh, self.batch_size))
    n_batches = -(-len(split) // self.batch_size)
    for i, (x, y, mask) in enumerate(tqdm(batches, total=n_batches, desc=desc,
                                          disable=desc is None, leave=False)):
      x, y, mask = sharding.shard_batch(self.mesh, x, y, mask)
      pending.append(self._step(variables, x, y, mask, jax.random.fold_in(rng, i)))
      if len(pending) > 2:  # keep the device busy; fetch with a lag
        totals = totals + np.stack(jax.device_get(pending.pop(0)), -1)
    for p in pending:
      totals = totals + np.stack(jax.device_get(p), -1)
    totals = np.asarray(totals, np.float64)
    n = len(split)
    return {"clean": 100.0 * totals[..., 0] / n, "adv": 100.0 * totals[..., 1] / n,
            "n": n}
