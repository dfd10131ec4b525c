"""RiFT step 2: fine-tune only the chosen module(s) on clean data.

`rift_jax.finetune(fns, variables, dataset, modules)` returns θ_FT.

Every parameter except the chosen kernels is frozen with an optax mask
(`training.make_optimizer(..., mask=...)`, `optax.multi_transform`): the frozen
leaves get exactly zero update and no weight decay (weight decay 5e-4
applies to the trainable kernel only). Loss: plain cross-entropy on clean,
augmented training images. Defaults follow the paper: SGD momentum 0.9,
lr 1e-3, batch 128, 10 epochs, lr ×0.1 after epoch 5. The epochs run in the
project's one epoch loop (`training.fit`).

Augmentation: `augment` (config `rift.finetune.augment`) should match how θ
was trained — fine-tuning a model trained without crops/flips with them
makes it unlearn (measured on an imported model: validation clean accuracy
fell instead of rising).

BatchNorm statistics: the official code fine-tunes in train mode, so every
BN layer's running mean/var follows the clean training data although BN
affine parameters are frozen; θ_FT then differs from θ_AT in the kernel AND
in all BN statistics. `update_batch_stats=True` (default) reproduces that;
False keeps the statistics of θ_AT.

Model selection: the epoch with the best VALIDATION clean accuracy (the
official code used test accuracy).

Which module: `target_modules` turns a target (RiFT's lowest-MRC module,
or the paper's Table 3 ablations) into module names, choosing among the
`candidates` preset ('all' modules as the paper, or 'conv3x3': only 3×3
convolutions, the kind of module the paper's chosen layers are).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from rift_jax import attacks, data, evaluation, models, sharding, training
from rift_jax.models import checkpoint
from rift_jax.training import objectives
from rift_jax.errors import UserError, check_choice

TARGETS = ("non_robust_critical", "robust_critical", "all", "last", "topk",
           "modules")
CANDIDATES = ("all", "conv3x3")


@dataclasses.dataclass
class FinetuneResult:
  variables: Any          # θ_FT: best epoch by validation clean accuracy
  modules: list[str]
  best_epoch: int
  best_val_clean: float
  history: list[dict]     # epoch 0 = θ, then one record per epoch


def default_optim() -> training.Optim:
  """The paper's fine-tuning recipe (RiFT §4, implementation details)."""
  return training.Optim(lr=1e-3, momentum=0.9, weight_decay=5e-4,
                        batch_size=128, epochs=10, schedule="piecewise",
                        lr_decay_epochs=(5,), lr_decay_factor=0.1)


def candidate_modules(params, preset: str = "all") -> list[str]:
  """Modules a target may pick from: every Conv/Dense kernel ('all') or the
  3×3 convolutions inside the network ('conv3x3': not the stem, the 1×1
  shortcuts or the head), in network order."""
  check_choice("rift.finetune.candidates", preset, CANDIDATES)
  names = models.perturbable_modules(params)
  if preset == "all":
    return list(names)
  shapes = {n: tuple(models.get_path(params, path).shape)
            for n, path in names.items()}
  # 4-D: a Dense kernel [in 3, out 3] also starts with (3, 3). The stem (the
  # first convolution, reading the image) is left out even when it is 3×3,
  # as on CIFAR ResNets: the paper's chosen modules are block convolutions.
  convs = [n for n, s in shapes.items() if len(s) == 4]
  return [n for n in convs[1:] if shapes[n][:2] == (3, 3)]


def target_modules(target: str, scores: dict, candidates: Sequence[str], k: int,
                   explicit: Sequence[str] = ()) -> list[str]:
  """Which modules a fine-tuning target means (paper Table 3 ablations).

  scores: {module: criticality.MRCResult}, every scored module in network
  order; candidates: the modules an MRC-ranked target (non_robust_critical,
  robust_critical, topk) may pick (`candidate_modules`). 'all' and 'last'
  are the paper's "all layers" and "last layer": every scored module, and
  the last one (the classifier), whatever the candidates.
  """
  check_choice("rift.finetune.target", target, TARGETS)
  ranked = sorted((m for m in candidates if m in scores),
                  key=lambda m: scores[m].mrc)
  if target in ("non_robust_critical", "topk", "robust_critical") and not ranked:
    raise UserError("no MRC score for any candidate module; widen "
                    "rift.mrc.include or rift.finetune.candidates")
  if target == "non_robust_critical":
    return ranked[:1]
  if target == "topk":
    return ranked[:k]
  if target == "robust_critical":
    return ranked[-1:]
  if target == "all":
    return list(scores)
  if target == "last":
    return [list(scores)[-1]]
  return list(explicit)


def finetune(fns: models.ModelFns, variables, dataset: data.Dataset,
             modules: Sequence[str], optim: training.Optim | None = None,
             *, update_batch_stats: bool = True, augment: bool = True,
             seed: int = 0, eval_batch_size: int = 256, mesh=None,
             progress: bool = True, checkpoint_dir: str | None = None,
             stop_after_epoch: int | None = None) -> FinetuneResult:
  """RiFT step 2: fine-tunes `modules` of θ (`variables`) with clean CE.

  `modules` are names from `models.perturbable_modules` (validated here).
  Returns θ_FT, the epoch with the best validation clean accuracy (θ itself,
  epoch 0, is recorded in the history but is not a candidate).
  `checkpoint_dir`: the train state is saved there after every epoch (and
  the best epoch's variables), and a call that finds one resumes after its
  epoch — the same numbers as an uninterrupted run. `stop_after_epoch`
  ends the call early after that epoch (a killed run, in tests).
  """
  optim = optim or default_optim()
  params = variables["params"]
  modules = models.resolve_modules(params, list(modules))
  mesh = mesh or sharding.make_mesh()
  batch_size = optim.batch_size
  sharding.check_batch_size(batch_size, mesh, "rift.finetune.optim.batch_size")
  if len(dataset.train) < batch_size:
    raise UserError(f"rift.finetune.optim.batch_size={batch_size} is larger "
                    f"than the {len(dataset.train)} training images")
  steps_per_epoch = len(dataset.train) // batch_size
  tx = training.make_optimizer(optim, steps_per_epoch,
                               mask=models.module_mask(params, modules))
  # The train step donates its state: copy, so θ's buffers stay valid.
  own = jax.tree_util.tree_map(jnp.copy, variables)
  state = sharding.replicate(
      training.create_state(own, tx, jax.random.PRNGKey(seed)), mesh)
  # The attack in the context is unused by the natural objective.
  ctx = objectives.Context(fns=fns, attack=attacks.PGDConfig())
  step = training.make_train_step(ctx, tx, objectives.natural, dataset.info,
                               augment=augment,
                               update_batch_stats=update_batch_stats)
  evaluator = evaluation.Evaluator(fns, None, eval_batch_size, mesh)

  def val_clean(v) -> float:
    return float(evaluator(v, dataset.val, jax.random.PRNGKey(0))["clean"])

  # history: epoch 0 (θ itself) and one record per epoch run so far.
  best_vars, latest, best = [None], None, None
  start_epoch, best_score, best_epoch, history = 0, -float("inf"), 0, None
  if checkpoint_dir:
    latest = checkpoint.Checkpointer(os.path.join(checkpoint_dir, "latest"))
    best = checkpoint.Checkpointer(os.path.join(checkpoint_dir, "best"))
    if latest.latest_step() is not None:
      state, meta = latest.restore(state)
      start_epoch, best_epoch = int(meta["epoch"]), int(meta["best_epoch"])
      best_score, history = float(meta["best_score"]), list(meta["history"])
      best_vars[0], _ = best.restore(jax.device_get(state.variables))
  history = history or [{"epoch": 0, "val_clean": val_clean(variables)}]

  def keep_best(state, record, best_epoch, best_score):
    history.append(record)
    if best_epoch == record["epoch"]:
      best_vars[0] = jax.device_get(state.variables)
      if best is not None:
        best.save(record["epoch"], state.variables, {"epoch": record["epoch"]})
    if latest is not None:
      latest.save(record["epoch"], state, {
          "epoch": record["epoch"], "best_epoch": best_epoch,
          "best_score": best_score, "history": history})

  result = training.fit(
      state, step, dataset.train, batch_size=batch_size, seed=seed,
      epochs=optim.epochs, mesh=mesh,
      validate=lambda s, e: {"val_clean": val_clean(s.variables)},
      select="val_clean", on_epoch=keep_best, desc=f"fine-tune {','.join(modules)}",
      what="fine-tuning", progress=progress, start_epoch=start_epoch,
      best_score=best_score, best_epoch=best_epoch,
      stop_after_epoch=stop_after_epoch, nonfinite_hint="θ is unchanged; lower rift.finetune.optim.lr")
  for c in (latest, best):
    if c is not None:
      c.close()
  return FinetuneResult(best_vars[0], modules, result.best_epoch,
                        float(result.best_score), history)
