"""Training: a small train state, a compiled step, and the one epoch loop.

`fit` is the epoch loop every trainer in the project uses (adversarial
training here, RiFT's fine-tuning in `rift_jax.rift.finetuning`): shuffled
batches whose order depends only on (seed, epoch), the compiled step, a
non-finite check, a validation pass after each epoch and best-by-validation
selection. `train_and_evaluate(config, workdir)` is what `launch/train.py`
runs: `fit` with Orbax checkpoints of the latest epoch and of the best
validation score, metrics to JSONL and TensorBoard (`clu.metric_writers`),
and resume: a killed run started again with the same workdir continues from
the latest checkpoint and ends with the same parameters as an uninterrupted
one.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from tqdm.auto import tqdm

from rift_jax import attacks, data, evaluation, models, sharding, workdir as wd
from rift_jax.models import checkpoint
from rift_jax.training import methods, objectives, schedules
from rift_jax.training.optim import Optim, make_optimizer
from rift_jax.errors import NonFiniteLoss, UserError


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  extra: Any = None  # method-specific state that must be checkpointed

  @property
  def variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats}


def create_state(variables, tx, rng, extra=None) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(variables["params"]), rng=rng, extra=extra)


# ------------------------------------------------------------ train step
def make_train_step(ctx: objectives.Context, tx: optax.GradientTransformation,
                    method: objectives.Method, info: data.DatasetInfo | None,
                    augment: bool = True, update_batch_stats: bool = True,
                    steps_per_epoch: int | None = None):
  """Returns `step(state, x, y) -> (state, metrics)`, jitted, state donated.

  x: `[batch, H, W, C]` float32 in [0, 1]; y: `[batch]` int32. One step, in
  order:
    1. x', s = method.craft(θ)               (inner maximisation, against θ;
                                              s: BN running averages after
                                              the attack's passes)
    2. v = method.perturb_weights(θ, x')     (AWP; else v = 0)
    3. g = ∇_θ loss(θ + v; x, x'), s ← the loss passes' averages (from s)
    4. g = g ⊙ method.grad_mask(θ, x')       (CURE's conserve/update split)
    5. θ ← θ + optimiser(g, θ)               (v is not added back: removed)
    6. s ← method.after_update(θ, s)         (BN statistics-only passes at the
                                              new θ, as PyTorch loops' logs)
    7. extra ← method.update_extra(extra, θ) (CURE's revision model)
  A `craft` that returns a bare x' leaves the running averages as they were.
  `update_batch_stats=False` keeps them as they were whatever the method
  does. The BatchNorm policy is in `rift_jax/training/objectives.py`.
  `steps_per_epoch` gives the hooks the (0-based) epoch (AWP's warm-up).
  """
  spe = max(int(steps_per_epoch or 1), 1)

  def step(state: TrainState, x, y):
    rng, k_aug, k_obj = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
    if augment and info is not None:
      x = data.augment(k_aug, x, info.crop_padding, info.flip)
    batch = objectives.Batch(x, y, None, k_obj)
    stats = state.batch_stats
    if method.craft is not None:
      # The attack also returns the BN statistics after its own train-mode
      # passes (unchanged unless the method's authors' attack updates them).
      x_adv, stats = method.craft(ctx, state.variables, x, y, k_obj)
      batch = batch._replace(x_adv=x_adv)
    at = state.params
    if method.perturb_weights is not None:
      epoch = state.step // spe if steps_per_epoch else jnp.zeros((), jnp.int32)
      v = method.perturb_weights(ctx, state.params, state.batch_stats, batch, epoch)
      at = jax.tree_util.tree_map(jnp.add, state.params, v)
    grad_fn = jax.value_and_grad(
        lambda p: method.loss(ctx, p, stats, batch, state.extra),
        has_aux=True)
    (loss, (batch_stats, metrics)), grads = grad_fn(at)
    if method.grad_mask is not None:
      mask = method.grad_mask(ctx, state.params, state.batch_stats, batch)
      grads = jax.tree_util.tree_map(jnp.multiply, grads, mask)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if method.after_update is not None and update_batch_stats:
      batch_stats = method.after_update(ctx, params, batch_stats, batch)
    extra = state.extra
    if method.update_extra is not None:
      extra = method.update_extra(ctx, extra, params, state.step + 1, rng)
    if not update_batch_stats:
      batch_stats = state.batch_stats
    new = state.replace(step=state.step + 1, params=params,
                        batch_stats=batch_stats, opt_state=opt_state, extra=extra)
    return new, metrics

  return jax.jit(step, donate_argnums=0)


# ------------------------------------------------------------ epoch loop
@dataclasses.dataclass
class FitResult:
  state: TrainState
  history: list          # one record per epoch run by this call
  best_epoch: int
  best_score: float


def fit(state: TrainState, train_step: Callable, split: data.Split, *,
        batch_size: int, seed: int, epochs: int, mesh,
        validate: Callable[[TrainState, int], dict], select: str,
        start_epoch: int = 0, best_score: float = -math.inf, best_epoch: int = 0,
        on_epoch: Callable[[TrainState, dict, int, float], None] | None = None,
        lr_schedule: Callable | None = None, log_every: int = 10,
        desc: str = "epoch", what: str = "training",
        nonfinite_hint: str = "", stop_after_epoch: int | None = None,
        progress: bool = True) -> FitResult:
  """The epoch loop: epochs `start_epoch + 1 .. epochs` of `train_step`.

  After each epoch, `validate(state, epoch)` returns the validation record
  fields (e.g. {'val_clean': 71.2, 'val_adv': 60.1}); the epoch is the new
  best if `record[select]` beats `best_score` (strictly). `on_epoch(state,
  record, best_epoch, best_score)` then runs (checkpointing, keeping the best
  variables: the epoch is the best so far iff `best_epoch == record['epoch']`).
  A non-finite loss raises `NonFiniteLoss` before anything of that epoch is
  kept ("{what} loss is nan at epoch e step i; stopped, {nonfinite_hint}").
  """
  steps_per_epoch = len(split) // batch_size
  rows = sharding.process_rows(mesh, batch_size)
  history = []

  def check(value, epoch, where):
    if not math.isfinite(value):
      raise NonFiniteLoss(f"{what} loss is {value} at epoch {epoch}{where}; "
                          f"stopped, {nonfinite_hint}")

  for epoch in range(start_epoch + 1, epochs + 1):
    t0 = time.time()
    sums, count, last = None, 0, None
    bar = tqdm(data.train_batches(split, batch_size, seed, epoch, rows),
               total=steps_per_epoch, desc=f"{desc} {epoch}/{epochs}", leave=False,
               disable=not progress or jax.process_index() != 0)
    for i, (x, y) in enumerate(bar):
      x, y = sharding.shard_batch(mesh, x, y)
      state, metrics = train_step(state, x, y)
      # The previous step's metrics: fetching them does not wait for this one.
      if last is not None and (i % log_every == 0 or i == steps_per_epoch - 1):
        m = jax.device_get(last)
        check(float(m["loss"]), epoch, f" step {i - 1}")
        bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['acc']:.3f}",
                        img_s=f"{(i * batch_size) / (time.time() - t0):.0f}")
      last = metrics
      sums = metrics if sums is None else jax.tree_util.tree_map(jnp.add, sums,
                                                                 metrics)
      count += 1
    mean = {k: float(v) / count for k, v in jax.device_get(sums).items()}
    check(mean["loss"], epoch, "")
    train_time = time.time() - t0
    record = {"epoch": epoch, "train_loss": mean["loss"],
              "train_acc": 100 * mean["acc"], **validate(state, epoch),
              "train_s": train_time,
              "img_per_s": steps_per_epoch * batch_size / train_time}
    if lr_schedule is not None:
      record["lr"] = float(lr_schedule(epoch * steps_per_epoch - 1))
    history.append(record)
    if record[select] > best_score:
      best_score, best_epoch = record[select], epoch
    if on_epoch is not None:
      on_epoch(state, record, best_epoch, best_score)
    if stop_after_epoch is not None and epoch >= stop_after_epoch:
      break
  return FitResult(state, history, best_epoch, best_score)


# ------------------------------------------------------------ main loop
@dataclasses.dataclass
class TrainResult:
  variables: Any      # best-by-validation variables
  best_epoch: int
  history: list
  info: data.DatasetInfo
  dataset: data.Dataset


def _metric_writer(workdir: str):
  """TensorBoard events (and absl logging) through `clu.metric_writers`;
  only process 0 writes."""
  from clu import metric_writers
  return metric_writers.create_default_writer(
      os.path.join(workdir, "tensorboard"),
      just_logging=jax.process_index() != 0, asynchronous=False)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       dataset: data.Dataset | None = None,
                       stop_after_epoch: int | None = None) -> TrainResult:
  """Trains `config` into `workdir` (resuming if a checkpoint is there).

  `stop_after_epoch` ends the run early after that epoch (used to test that a
  killed run resumes exactly).
  """
  workdir = wd.prepare(workdir)
  dataset = dataset or data.load(config.data)
  info = dataset.info
  mesh = sharding.make_mesh()
  optim = Optim.from_config(config.optim)
  batch_size = optim.batch_size
  sharding.check_batch_size(batch_size, mesh, "optim.batch_size")
  if len(dataset.train) < batch_size:
    raise UserError(f"optim.batch_size={batch_size} is larger than the "
                    f"{len(dataset.train)} training images")
  steps_per_epoch = len(dataset.train) // batch_size

  model = models.build_model(config, info)
  fns = models.ModelFns(model)
  ctx = methods.context(config, fns)
  method = methods.get(config.method)
  tx = make_optimizer(optim, steps_per_epoch)
  rng = jax.random.PRNGKey(int(config.seed))
  k_init, k_state, k_eval = jax.random.split(rng, 3)
  init_from = config.get("init_from", "") or ""
  variables = models.init_variables(model, k_init, info.image_shape)
  meta_model = models.model_meta(config, info)
  if init_from:  # a launch/train workdir, a variables folder or a PyTorch file
    variables, _ = checkpoint.load_model_variables(init_from, model, info,
                                                   meta_model)
  state = create_state(variables, tx, k_state,
                       method.init_extra(variables) if method.init_extra else None)

  # Replicated before restoring, so Orbax restores straight into the mesh
  # layout on every host.
  state = sharding.replicate(state, mesh)
  latest = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints", "latest"))
  best = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints", "best"))
  start_epoch, best_score, best_epoch = 0, -math.inf, 0
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if latest.latest_step() is not None:
    state, meta = latest.restore(state, meta_model)
    start_epoch = int(meta["epoch"])
    best_score, best_epoch = float(meta["best_score"]), int(meta["best_epoch"])
    if jax.process_index() == 0:
      wd.truncate_jsonl(metrics_path, start_epoch)
    print(f"resuming {workdir} from epoch {start_epoch}")
  elif jax.process_index() == 0:
    wd.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  writer = _metric_writer(workdir)

  train_step = make_train_step(ctx, tx, method, info,
                               augment=bool(config.get("augment", True)),
                               steps_per_epoch=steps_per_epoch)
  eval_attack = attacks.PGDConfig.from_config(config.eval.attack, "eval.attack")
  evaluator = evaluation.Evaluator(fns, evaluation.pgd_attack_fn(eval_attack),
                                 int(config.eval.batch_size), mesh)

  def validate(state, epoch):
    val = evaluator(state.variables, dataset.val, jax.random.fold_in(k_eval, epoch),
                    desc="validation")
    return {"val_clean": float(val["clean"]), "val_adv": float(val["adv"])}

  def on_epoch(state, record, best_epoch, best_score):
    if jax.process_index() == 0:
      wd.append_jsonl(metrics_path, record)
      writer.write_scalars(record["epoch"], {k: v for k, v in record.items()
                                             if k != "epoch"})
      writer.flush()
    val = {"clean": record["val_clean"], "adv": record["val_adv"]}
    if best_epoch == record["epoch"]:
      best.save(record["epoch"], state.variables,
                {"model": meta_model, "epoch": record["epoch"], "val": val})
    latest.save(record["epoch"], state,
                {"model": meta_model, "epoch": record["epoch"],
                 "best_score": best_score, "best_epoch": best_epoch})
    print(f"epoch {record['epoch']}: loss {record['train_loss']:.4f} "
          f"val clean {val['clean']:.2f}% val PGD {val['adv']:.2f}% "
          f"({record['img_per_s']:.0f} img/s)")

  result = fit(state, train_step, dataset.train, batch_size=batch_size,
               seed=int(config.seed), epochs=optim.epochs, mesh=mesh,
               validate=validate,
               select="val_clean" if config.method == "natural" else "val_adv",
               start_epoch=start_epoch,
               best_score=best_score, best_epoch=best_epoch, on_epoch=on_epoch,
               lr_schedule=schedules.make_schedule(optim, steps_per_epoch),
               log_every=int(config.get("log_every", 10)),
               nonfinite_hint=("the last good checkpoint is kept in "
                               f"{latest.directory}"),
               stop_after_epoch=stop_after_epoch)
  writer.close()
  best_vars, _ = best.restore(jax.device_get(result.state.variables), meta_model)
  latest.close()
  best.close()
  # Every epoch's record, also those of the runs this one resumed
  # (metrics.jsonl keeps them; the fit above only knows its own).
  history = wd.read_jsonl(metrics_path) or result.history
  return TrainResult(best_vars, result.best_epoch, history, info, dataset)
