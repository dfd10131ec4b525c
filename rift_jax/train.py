"""Training: a small train state, a compiled step, and the epoch loop.

`train_and_evaluate(config, workdir)` is what `launch/train.py` runs:
clean or adversarial training (the objective named by `config.method`), each
epoch a validation pass (clean + PGD), Orbax checkpoints of the latest epoch
and of the best validation score, metrics to JSONL and TensorBoard, a progress
bar. A killed run started again with the same workdir resumes from the latest
checkpoint; the batch order depends only on (seed, epoch), so the resumed run
ends with the same parameters as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from rift_jax import attacks, checkpoint, data, evaluate, models, objectives, sharding
from rift_jax.errors import UserError, check_choice, check_range


class NonFiniteLoss(RuntimeError):
  """The training loss became NaN/inf; the last good checkpoint is kept."""


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


# ------------------------------------------------------------- optimiser
SCHEDULES = ("piecewise", "cosine", "constant")


def make_schedule(optim: ml_collections.ConfigDict, steps_per_epoch: int
                  ) -> optax.Schedule:
  """Learning rate per step from `optim` (epochs-based boundaries)."""
  name = optim.get("schedule", "piecewise")
  check_choice("optim.schedule", name, SCHEDULES + tuple(EXTRA_SCHEDULES))
  total = int(optim.epochs) * steps_per_epoch
  if name == "piecewise":
    bounds = {int(e) * steps_per_epoch: float(optim.lr_decay_factor)
              for e in optim.lr_decay_epochs if 0 < int(e) < int(optim.epochs)}
    return optax.piecewise_constant_schedule(float(optim.lr), bounds)
  if name == "cosine":
    return optax.cosine_decay_schedule(float(optim.lr), max(total, 1))
  if name == "constant":
    return optax.constant_schedule(float(optim.lr))
  return EXTRA_SCHEDULES[name](optim, steps_per_epoch)


# Other modules register schedules here (e.g. AFT's slow-start-fast-decay).
EXTRA_SCHEDULES: dict[str, Callable[[Any, int], optax.Schedule]] = {}


def make_optimizer(optim: ml_collections.ConfigDict, steps_per_epoch: int,
                   mask: Any = None) -> optax.GradientTransformation:
  """SGD with momentum and PyTorch-style weight decay (added to the gradient
  before momentum). With `mask` (bool pytree), only True leaves are updated and
  decayed: every other leaf gets exactly zero update."""
  check_range("optim.lr", float(optim.lr), 0.0, low_open=True)
  check_range("optim.momentum", float(optim.momentum), 0.0, 1.0, high_open=True)
  check_range("optim.weight_decay", float(optim.weight_decay), 0.0)
  tx = optax.chain(
      optax.add_decayed_weights(float(optim.weight_decay)),
      optax.sgd(make_schedule(optim, steps_per_epoch),
                momentum=float(optim.momentum) or None,
                nesterov=bool(optim.get("nesterov", False))))
  if mask is None:
    return tx
  frozen = jax.tree_util.tree_map(lambda m: not m, mask)
  return optax.chain(optax.masked(tx, mask),
                     optax.masked(optax.set_to_zero(), frozen))


def create_state(variables, tx, rng, extra=None) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(variables["params"]), rng=rng, extra=extra)


# ------------------------------------------------------------ train step
def make_train_step(ctx: objectives.Context, tx: optax.GradientTransformation,
                    objective: Callable, info: data.DatasetInfo | None,
                    augment: bool = True, update_batch_stats: bool = True,
                    steps_per_epoch: int | None = None):
  """Returns `step(state, x, y) -> (state, metrics)`, jitted, state donated.

  x: `[batch, H, W, C]` float32 in [0, 1]; y: `[batch]` int32.
  `objective` is an `objectives.Method` (or a plain objective function). One
  step, in order:
    1. x' = method.craft(θ)                  (inner maximisation, against θ)
    2. v = method.perturb_weights(θ, x')     (AWP; else v = 0)
    3. g = ∇_θ loss(θ + v; x, x')
    4. g = g ⊙ method.grad_mask(θ, x')       (CURE's conserve/update split)
    5. θ ← θ + optimiser(g, θ)               (v is not added back: removed)
    6. extra ← method.update_extra(extra, θ) (CURE's revision model)
  `steps_per_epoch` gives the hooks the (0-based) epoch (AWP's warm-up).
  """
  method = objectives.from_objective(objective)
  method.check(ctx)
  spe = max(int(steps_per_epoch or 1), 1)

  def step(state: TrainState, x, y):
    rng, k_aug, k_obj = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
    if augment and info is not None:
      x = data.augment(k_aug, x, info.crop_padding, info.flip)
    batch = objectives.Batch(x, y, None, k_obj)
    if method.craft is not None:
      batch = batch._replace(x_adv=method.craft(ctx, state.variables, x, y, k_obj))
    at = state.params
    if method.perturb_weights is not None:
      epoch = state.step // spe if steps_per_epoch else jnp.zeros((), jnp.int32)
      v = method.perturb_weights(ctx, state.params, state.batch_stats, batch, epoch)
      at = jax.tree_util.tree_map(jnp.add, state.params, v)
    grad_fn = jax.value_and_grad(
        lambda p: method.loss(ctx, p, state.batch_stats, batch, state.extra),
        has_aux=True)
    (loss, (batch_stats, metrics)), grads = grad_fn(at)
    if method.grad_mask is not None:
      mask = method.grad_mask(ctx, state.params, state.batch_stats, batch)
      grads = jax.tree_util.tree_map(jnp.multiply, grads, mask)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    extra = state.extra
    if method.update_extra is not None:
      extra = method.update_extra(ctx, extra, params, state.step + 1, rng)
    if not update_batch_stats:
      batch_stats = state.batch_stats
    new = state.replace(step=state.step + 1, params=params,
                        batch_stats=batch_stats, opt_state=opt_state, extra=extra)
    return new, metrics

  return jax.jit(step, donate_argnums=0)


# ------------------------------------------------------------ config glue
def model_meta(config, info: data.DatasetInfo) -> dict:
  return {"name": config.model.name, "width": config.model.get("width"),
          "num_classes": info.num_classes, "image_shape": list(info.image_shape)}


def build_model(config, info: data.DatasetInfo):
  return models.create_model(config.model.name, num_classes=info.num_classes,
                             width=config.model.get("width"), mean=info.mean,
                             std=info.std,
                             conv_impl=config.model.get("conv_impl", "auto"))


def attack_config(cfg, prefix: str) -> attacks.PGDConfig:
  return attacks.PGDConfig.from_config(cfg, prefix)


def objective_context(config, fns) -> objectives.Context:
  check_choice("method", config.method, tuple(objectives.OBJECTIVES))
  check_choice("attack.bn_mode", config.attack.get("bn_mode", "train"),
               ("train", "eval"))
  hp = config.get(config.method, None)
  hparams = tuple(sorted(hp.to_dict().items())) if hp is not None else ()
  return objectives.Context(fns=fns, attack=attack_config(config.attack, "attack"),
                            attack_bn=config.attack.get("bn_mode", "train"),
                            hparams=hparams)


def load_init_variables(init_from: str, target, expect_model: dict | None = None):
  """Variables to start training from (`config.init_from`): a launch/train
  workdir (its best-by-validation checkpoint) or a variables folder
  (`checkpoint.save_variables`). Shaped like `target`; the recorded model
  must match `expect_model`."""
  path = os.path.abspath(os.path.expanduser(init_from))
  best_dir = os.path.join(path, "checkpoints", "best")
  variables, _ = checkpoint.load_variables(
      best_dir if os.path.isdir(best_dir) else path, target, expect_model)
  return variables


def prepare_workdir(workdir: str) -> str:
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    # One probe per process: hosts sharing a file system must not race.
    probe = os.path.join(workdir, f".write_test.{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"workdir={workdir!r} is not writable: {e.strerror}") from None
  return workdir


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (temp file + rename): never a half-written file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
  os.replace(tmp, path)


def _json_default(o):
  if isinstance(o, (np.generic,)):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  return str(o)


class MetricWriter:
  """JSONL (one record a line) and TensorBoard event files in the workdir."""

  def __init__(self, workdir: str, resume_epoch: int | None = None):
    self.path = os.path.join(workdir, "metrics.jsonl")
    if (resume_epoch is not None and os.path.exists(self.path)
        and jax.process_index() == 0):
      # Drop records newer than the checkpoint we resume from.
      with open(self.path) as f:
        keep = [l for l in f if l.strip() and
                json.loads(l).get("epoch", 0) <= resume_epoch]
      with open(self.path, "w") as f:
        f.writelines(keep)
    self._tb = None
    if jax.process_index() == 0:
      try:
        from flax.metrics import tensorboard
        self._tb = tensorboard.SummaryWriter(os.path.join(workdir, "tensorboard"))
      except Exception:  # TensorBoard is optional; JSONL is the record.
        self._tb = None

  def write(self, record: dict) -> None:
    if jax.process_index() != 0:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record, default=_json_default) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if isinstance(v, (int, float)) and k != "epoch":
          self._tb.scalar(k, v, record["epoch"])
      self._tb.flush()


# ------------------------------------------------------------ main loop
@dataclasses.dataclass
class TrainResult:
  variables: Any      # best-by-validation variables
  best_epoch: int
  history: list
  info: data.DatasetInfo
  dataset: data.Dataset


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       dataset: data.Dataset | None = None,
                       stop_after_epoch: int | None = None) -> TrainResult:
  """Trains `config` into `workdir` (resuming if a checkpoint is there).

  `stop_after_epoch` ends the run early after that epoch (used to test that a
  killed run resumes exactly).
  """
  workdir = prepare_workdir(workdir)
  dataset = dataset or data.load(config.data)
  info = dataset.info
  mesh = sharding.make_mesh()
  batch_size = int(config.optim.batch_size)
  check_range("optim.batch_size", batch_size, 1)
  check_range("optim.epochs", int(config.optim.epochs), 1)
  sharding.check_batch_size(batch_size, mesh, "optim.batch_size")
  if len(dataset.train) < batch_size:
    raise UserError(f"optim.batch_size={batch_size} is larger than the "
                    f"{len(dataset.train)} training images")
  steps_per_epoch = len(dataset.train) // batch_size

  model = build_model(config, info)
  fns = models.ModelFns(model)
  ctx = objective_context(config, fns)
  objective = objectives.OBJECTIVES[config.method]
  tx = make_optimizer(config.optim, steps_per_epoch)
  schedule = make_schedule(config.optim, steps_per_epoch)  # for the lr log
  rng = jax.random.PRNGKey(int(config.seed))
  k_init, k_state, k_eval = jax.random.split(rng, 3)
  objective.check(ctx)
  init_from = config.get("init_from", "") or ""
  if objective.starts_from_pretrained and not init_from:
    raise UserError(f"method={config.method!r} fine-tunes a naturally trained "
                    "model: set --config.init_from to a natural run's workdir "
                    "or a variables folder")
  variables = models.init_variables(model, k_init, info.image_shape)
  meta_model = model_meta(config, info)
  if init_from:
    variables = load_init_variables(init_from, variables, meta_model)
  extra_init = objectives.EXTRA_STATE.get(config.method)
  state = create_state(variables, tx, k_state,
                       extra_init(variables) if extra_init else None)

  # Replicated before restoring, so Orbax restores straight into the mesh
  # layout on every host.
  state = sharding.replicate(state, mesh)
  latest = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints", "latest"))
  best = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints", "best"))
  start_epoch, best_score, best_epoch = 0, -math.inf, 0
  if latest.latest_step() is not None:
    state, meta = latest.restore(state, meta_model)
    start_epoch = int(meta["epoch"])
    best_score, best_epoch = float(meta["best_score"]), int(meta["best_epoch"])
    print(f"resuming {workdir} from epoch {start_epoch}")
  else:
    if jax.process_index() == 0:
      write_json(os.path.join(workdir, "config.json"), config.to_dict())
  writer = MetricWriter(workdir, start_epoch if start_epoch else None)

  train_step = make_train_step(ctx, tx, objective, info,
                               augment=bool(config.get("augment", True)),
                               steps_per_epoch=steps_per_epoch)
  eval_attack = attack_config(config.eval.attack, "eval.attack")
  evaluator = evaluate.Evaluator(fns, evaluate.pgd_attack_fn(eval_attack),
                                 int(config.eval.batch_size), mesh)
  select = "clean" if config.method == "natural" else "adv"
  history = []
  log_every = int(config.get("log_every", 10))
  epochs = int(config.optim.epochs)

  for epoch in range(start_epoch + 1, epochs + 1):
    t0 = time.time()
    sums, count, last = None, 0, None
    bar = tqdm(data.train_batches(dataset.train, batch_size, int(config.seed), epoch,
                                  sharding.process_rows(mesh, batch_size)),
               total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", leave=False,
               disable=jax.process_index() != 0)
    for i, (x, y) in enumerate(bar):
      x, y = sharding.shard_batch(mesh, x, y)
      state, metrics = train_step(state, x, y)
      if last is not None and (i % log_every == 0 or i == steps_per_epoch - 1):
        m = jax.device_get(last)
        if not np.isfinite(m["loss"]):
          raise NonFiniteLoss(f"training loss is {m['loss']} at epoch {epoch} step "
                              f"{i}; stopped, the last good checkpoint is kept in "
                              f"{latest.directory}")
        bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['acc']:.3f}",
                        img_s=f"{(i * batch_size) / (time.time() - t0):.0f}")
      last = metrics
      sums = metrics if sums is None else jax.tree_util.tree_map(jnp.add, sums,
                                                                 metrics)
      count += 1
    epoch_metrics = {k: float(v) / count for k, v in jax.device_get(sums).items()}
    if not math.isfinite(epoch_metrics["loss"]):
      raise NonFiniteLoss(f"training loss is {epoch_metrics['loss']} in epoch "
                          f"{epoch}; stopped, the last good checkpoint is kept in "
                          f"{latest.directory}")
    train_time = time.time() - t0
    val = evaluator(state.variables, dataset.val, jax.random.fold_in(k_eval, epoch),
                    desc="validation")
    record = {"epoch": epoch, "train_loss": epoch_metrics["loss"],
              "train_acc": 100 * epoch_metrics["acc"], "val_clean": val["clean"],
              "val_adv": val["adv"], "train_s": train_time,
              "img_per_s": steps_per_epoch * batch_size / train_time,
              "lr": float(schedule(epoch * steps_per_epoch - 1))}
    history.append(record)
    writer.write(record)
    if val[select] > best_score:
      best_score, best_epoch = val[select], epoch
      best.save(epoch, state.variables, {"model": meta_model, "epoch": epoch,
                                         "val": val})
    latest.save(epoch, state, {"model": meta_model, "epoch": epoch,
                               "best_score": best_score, "best_epoch": best_epoch})
    print(f"epoch {epoch}: loss {record['train_loss']:.4f} "
          f"val clean {val['clean']:.2f}% val PGD {val['adv']:.2f}% "
          f"({record['img_per_s']:.0f} img/s)")
    if stop_after_epoch is not None and epoch >= stop_after_epoch:
      break

  best_vars, _ = best.restore(jax.device_get(state.variables), meta_model)
  latest.close()
  best.close()
  return TrainResult(best_vars, best_epoch, history, info, dataset)


# AFT registers its slow-start-fast-decay schedule in EXTRA_SCHEDULES.
from rift_jax import aft as _aft  # noqa: E402,F401
