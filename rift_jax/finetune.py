"""RiFT step 2: fine-tune only the chosen module(s) on clean data.

Every parameter except the chosen kernels is frozen with an optax mask: the
frozen leaves get exactly zero update and no weight decay (weight decay 5e-4
applies to the trainable kernel only). Loss: plain cross-entropy on clean,
augmented training images. Defaults follow the paper: SGD momentum 0.9,
lr 1e-3, batch 128, 10 epochs, lr ×0.1 after epoch 5.

BatchNorm statistics: the official code fine-tunes in train mode, so every
BN layer's running mean/var follows the clean training data although BN
affine parameters are frozen; θ_FT then differs from θ_AT in the kernel AND
in all BN statistics. `update_batch_stats=True` (default) reproduces that;
False keeps the statistics of θ_AT.

Model selection: the epoch with the best VALIDATION clean accuracy (the
official code used test accuracy).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from rift_jax import attacks, data, evaluate, models, objectives, sharding, train
from rift_jax.errors import UserError, check_range


@dataclasses.dataclass
class FinetuneResult:
  variables: Any          # θ_FT: best epoch by validation clean accuracy
  modules: list[str]
  best_epoch: int
  best_val_clean: float
  history: list[dict]


def default_optim() -> ml_collections.ConfigDict:
  """The paper's fine-tuning recipe (ALGORITHMS.md §1, step 2)."""
  return ml_collections.ConfigDict(dict(
      lr=1e-3, momentum=0.9, weight_decay=5e-4, nesterov=False, batch_size=128,
      epochs=10, schedule="piecewise", lr_decay_epochs=(5,), lr_decay_factor=0.1))


def finetune(fns: models.ModelFns, variables, dataset: data.Dataset,
             modules: Sequence[str], optim: ml_collections.ConfigDict | None = None,
             *, update_batch_stats: bool = True, augment: bool = True,
             seed: int = 0, eval_batch_size: int = 256, mesh=None,
             progress: bool = True) -> FinetuneResult:
  """Fine-tunes `modules` of θ (`variables`) with clean CE; returns θ_FT.

  `modules` are names from `models.perturbable_modules` (validated here).
  """
  optim = optim or default_optim()
  params = variables["params"]
  modules = models.resolve_modules(params, list(modules))
  mesh = mesh or sharding.make_mesh()
  batch_size = int(optim.batch_size)
  check_range("rift.finetune.batch_size", batch_size, 1)
  check_range("rift.finetune.epochs", int(optim.epochs), 1)
  sharding.check_batch_size(batch_size, mesh, "rift.finetune.batch_size")
  if len(dataset.train) < batch_size:
    raise UserError(f"rift.finetune.batch_size={batch_size} is larger than the "
                    f"{len(dataset.train)} training images")
  steps_per_epoch = len(dataset.train) // batch_size
  mask = models.module_mask(params, modules)
  tx = train.make_optimizer(optim, steps_per_epoch, mask=mask)
  # The train step donates its state: copy, so θ_AT's buffers stay valid.
  own = jax.tree_util.tree_map(jnp.copy, variables)
  state = sharding.replicate(
      train.create_state(own, tx, jax.random.PRNGKey(seed)), mesh)
  # The attack in the context is unused by the natural objective.
  ctx = objectives.Context(fns=fns, attack=attacks.PGDConfig())
  step = train.make_train_step(ctx, tx, objectives.natural, dataset.info,
                               augment=augment,
                               update_batch_stats=update_batch_stats)
  evaluator = evaluate.Evaluator(fns, None, eval_batch_size, mesh)
  start = float(evaluator(variables, dataset.val, jax.random.PRNGKey(0))["clean"])
  # θ_AT itself (epoch 0) is recorded but is not a candidate: θ_FT is the best
  # fine-tuned epoch, even when fine-tuning does not raise validation accuracy.
  best, best_epoch, best_vars = -1.0, 0, None
  history = [{"epoch": 0, "val_clean": start}]
  epochs = int(optim.epochs)
  for epoch in tqdm(range(1, epochs + 1), desc=f"fine-tune {','.join(modules)}",
                    disable=not progress, leave=False):
    losses = []
    for x, y in data.train_batches(dataset.train, batch_size, seed, epoch,
                                   sharding.process_rows(mesh, batch_size)):
      x, y = sharding.shard_batch(mesh, x, y)
      state, metrics = step(state, x, y)
      losses.append(metrics["loss"])
    loss = float(np.mean(jax.device_get(losses)))
    if not np.isfinite(loss):
      raise train.NonFiniteLoss(f"fine-tuning loss is {loss} at epoch {epoch}; "
                                "lower rift.finetune.lr")
    val = float(evaluator(state.variables, dataset.val, jax.random.PRNGKey(0))["clean"])
    history.append({"epoch": epoch, "train_loss": loss, "val_clean": val})
    if val > best:
      best, best_epoch, best_vars = val, epoch, jax.device_get(state.variables)
  return FinetuneResult(best_vars, modules, best_epoch, float(best), history)
