"""Speed of the compiled attack and AT step, side by side with PyTorch eager.

  python -m launch.benchmark --out=benchmark.json            # ~5-8 min on 2 CPU cores
  python -m launch.benchmark --out=/tmp/b.json --reduced     # seconds (tests)

One process measures, on the SAME CIFAR ResNet-18 (post-activation BasicBlock,
3x3 stride-1 stem; width 64, 32x32x3 inputs, batch 128, float32, same thread
count) in JAX and in PyTorch with torchattacks (the stack the RiFT authors
used); the torch model gets the JAX weights, and the logits are checked to
agree:

- PGD-10 attack (L-inf, ε 8/255, step 2/255, random start, BN in eval mode):
  JAX jitted unrolled and rolled loops vs `torchattacks.PGD`.
- PGD-10 AT train step (attack with BN in train mode, SGD momentum, weight
  decay): `rift_jax.train.make_train_step` vs torchattacks + a standard
  PyTorch step. Its compile time (trace + lower + XLA compile).
- Achieved FLOP/s of the attack (XLA cost analysis of the compiled attack)
  over the FLOP/s of a 2048x2048 float32 matmul on this machine.
- MRC seconds per module (`rift_jax.mrc`, one pass over one fixed batch) and
  interpolation seconds per α (`rift_jax.interpolate`: θ(α) and a clean +
  PGD-10 evaluation of one batch), both compiled beforehand.
- Peak resident memory.

Times are the best of `--reps` runs after a warm-up run (all runs listed).

A/B switches: `--conv_impl=xla` (XLA's own strided-conv input gradient) and
`RIFT_JAX_XLA_DEFAULTS=0` (XLA:CPU's YNNPACK convolutions; see
rift_jax/__init__.py). One device per core:
`XLA_FLAGS=--xla_force_host_platform_device_count=2` (batch sharded).
"""
from __future__ import annotations

import os
import platform
import resource
import sys
import time

from launch import common
from absl import flags

flags.DEFINE_string("out", None, "Where to write the JSON results.")
flags.DEFINE_bool("reduced", False, "Small width, small batch, one repetition "
                  "(checks that every key is written; the numbers mean little).")
flags.DEFINE_integer("width", 64, "ResNet-18 base width.")
flags.DEFINE_integer("batch_size", 128, "Images per batch.")
flags.DEFINE_integer("num_steps", 10, "PGD steps.")
flags.DEFINE_integer("reps", 2, "Timed repetitions after the warm-up.")
flags.DEFINE_integer("threads", 0, "Threads for PyTorch (0: os.cpu_count(), "
                     "which is what XLA:CPU uses).")
flags.DEFINE_bool("rolled", True, "Also time the rolled (fori_loop) JAX attack.")
flags.DEFINE_string("conv_impl", "auto", "Input-gradient rule of the JAX "
                    "convolutions: auto | phase | xla (rift_jax.conv).")
FLAGS = flags.FLAGS

EPSILON, STEP_SIZE = 8 / 255, 2 / 255
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
NUM_CLASSES = 10


# ----------------------------------------------------------------- timing
def _timed(fn, reps: int, warmup: bool = True
           ) -> tuple[float, list[float], float]:
  """Runs fn once to warm up (not needed for a function compiled ahead of
  time with `.lower().compile()`), then `reps` times: (best, all) wall seconds and
  the least process CPU seconds of a run (all threads; on a machine shared
  with other jobs the CPU time is the steadier measure of the work)."""
  if warmup:
    fn()
  times, cpu = [], []
  for _ in range(reps):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return min(times), times, min(cpu)


_T0 = time.perf_counter()


def _log(what: str) -> None:
  print(f"[{time.perf_counter() - _T0:6.1f} s] {what}", file=sys.stderr, flush=True)


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -------------------------------------------------------- PyTorch model
def torch_twin(width: int, variables):
  """The PyTorch ResNet-18 of the cross-checks (`rift_jax/torch_models.py`,
  same layers and names as `rift_jax.models.ResNet`) holding `variables`."""
  import torch
  from rift_jax import convert
  from rift_jax import torch_models
  model = torch_models.ResNet18(num_classes=NUM_CLASSES, width=width,
                                   mean=CIFAR_MEAN, std=CIFAR_STD)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in
                         convert.to_state_dict(variables).items()})
  return model


# -------------------------------------------------------------- JAX parts
def matmul_flops_per_s(n: int, reps: int) -> tuple[float, float]:
  """FLOP/s of an n x n float32 matmul: per wall second, per CPU second."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  best, _, cpu = _timed(lambda: f(a, b).block_until_ready(), max(reps, 3))
  return 2.0 * n**3 / best, 2.0 * n**3 / cpu


def _cost_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", 0.0))


def run(width: int, batch: int, num_steps: int, reps: int, threads: int,
        rolled: bool, matmul_n: int, mrc_modules: int = 3,
        conv_impl: str = "auto", save=lambda out: None) -> dict:
  """All measurements; `save(partial_results)` runs after each phase, so a
  run cut short still leaves what it measured."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  import torchattacks
  from configs import common as config_common
  from rift_jax import (attacks, conv, criticality, evaluate, interpolation,
                        models, objectives, sharding, train)

  torch.set_num_threads(threads)
  out: dict = {"config": dict(model="resnet18", width=width, batch_size=batch,
                              image_shape=[32, 32, 3], dtype="float32",
                              pgd_steps=num_steps, epsilon=EPSILON,
                              step_size=STEP_SIZE, reps=reps)}
  out["versions"] = dict(jax=jax.__version__, torch=torch.__version__,
                         torchattacks=torchattacks.__version__,
                         python=platform.python_version())
  out["threads"] = dict(cpu_count=os.cpu_count(), torch=torch.get_num_threads(),
                        jax_devices=jax.device_count(),
                        xla_flags=os.environ.get("XLA_FLAGS", ""))
  out["conv_impl"] = conv.resolve_impl(conv_impl)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(batch, mesh, "--batch_size")

  # Model, weights and one fixed batch shared by both frameworks.
  model = models.create_model("resnet18", num_classes=NUM_CLASSES, width=width,
                              mean=CIFAR_MEAN, std=CIFAR_STD, conv_impl=conv_impl)
  fns = models.ModelFns(model)
  variables = models.init_variables(model, jax.random.PRNGKey(0), (32, 32, 3))
  rng = np.random.default_rng(0)
  x_np = rng.uniform(0, 1, (batch, 32, 32, 3)).astype(np.float32)
  y_np = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
  v = sharding.replicate(variables, mesh)
  x, y = sharding.shard_batch(mesh, x_np, y_np)
  key = jax.random.PRNGKey(1)

  _log("matmul")
  peak, peak_cpu = matmul_flops_per_s(matmul_n, reps)
  out["matmul_gflops_per_s"] = peak / 1e9
  out["matmul_gflops_per_cpu_s"] = peak_cpu / 1e9
  out["matmul_size"] = matmul_n

  _log("JAX PGD attack, unrolled ('auto' on CPU) and rolled")
  def make_attack(unroll):
    cfg = attacks.PGDConfig(epsilon=EPSILON, step_size=STEP_SIZE,
                            num_steps=num_steps, unroll=unroll)
    return jax.jit(lambda v_, x_, y_, k_: attacks.pgd(
        lambda z: fns.logits(v_, z, train=False), x_, y_, k_, cfg))

  unroll = attacks.resolve_unroll("auto")
  t0 = time.perf_counter()
  pgd_compiled = make_attack(unroll).lower(v, x, y, key).compile()
  out["pgd_compile_s"] = time.perf_counter() - t0
  flops = _cost_flops(pgd_compiled)
  last = [None]  # the adversarial batch, reused as MRC's fixed set
  best, times, cpu_pgd = _timed(lambda: last.__setitem__(
      0, pgd_compiled(v, x, y, key).block_until_ready()), reps, warmup=False)
  out["jax_pgd_cpu_s_per_batch"] = cpu_pgd
  out["jax_pgd_unroll"] = str(unroll)
  out["jax_pgd_s_per_batch"] = best
  out["jax_pgd_s_all"] = times
  out["jax_pgd_img_per_s"] = batch / best
  out["pgd_flops_per_batch"] = flops
  out["pgd_achieved_gflops_per_s"] = flops / best / 1e9
  out["pgd_flops_fraction_of_peak"] = flops / best / peak
  # The same ratio in CPU time (matmul peak and attack both per CPU-second).
  out["pgd_flops_fraction_of_peak_cpu_time"] = (flops / cpu_pgd) / peak_cpu
  if rolled:
    rolled_c = make_attack(False).lower(v, x, y, key).compile()
    t_rolled, all_rolled, _ = _timed(lambda: rolled_c(v, x, y, key).block_until_ready(),
                                  1)
    out["jax_pgd_rolled_s_per_batch"] = t_rolled
    out["jax_pgd_rolled_s_all"] = all_rolled
    out["unrolled_speedup_vs_rolled"] = t_rolled / best

  _log("JAX PGD-AT train step (BN in train mode while attacking)")
  optim = config_common.base_config().optim
  tx = train.make_optimizer(optim, 100)
  ctx = objectives.Context(fns=fns, attack=attacks.PGDConfig(
      epsilon=EPSILON, step_size=STEP_SIZE, num_steps=num_steps), attack_bn="train")
  step = train.make_train_step(ctx, tx, objectives.pgd_at, None,
                               augment=False)
  # A copy: the step donates its state, which must not delete `variables`.
  state = sharding.replicate(train.create_state(
      jax.tree_util.tree_map(jnp.copy, variables), tx, jax.random.PRNGKey(2)),
      mesh)
  t0 = time.perf_counter()
  lowered = step.lower(state, x, y)
  t1 = time.perf_counter()
  step_c = lowered.compile()
  t2 = time.perf_counter()
  out["at_step_trace_lower_s"] = t1 - t0
  out["at_step_xla_compile_s"] = t2 - t1
  out["at_step_compile_s"] = t2 - t0
  holder = [state]

  def jax_at():
    holder[0], m = step_c(holder[0], x, y)
    m["loss"].block_until_ready()
  best_at, times_at, cpu_at = _timed(jax_at, reps, warmup=False)
  out["jax_at_step_cpu_s"] = cpu_at
  out["jax_at_step_s"] = best_at
  out["jax_at_step_s_all"] = times_at
  out["jax_at_img_per_s"] = batch / best_at
  del holder, state

  out["peak_rss_mb_before_torch"] = _rss_mb()
  save(out)
  _log("PyTorch eager: the same model, weights and batch")
  tmodel = torch_twin(width, variables)
  tmodel.eval()
  xt = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy())
  yt = torch.from_numpy(y_np.astype(np.int64))
  with torch.no_grad():
    t_logits = tmodel(xt).numpy()
  j_logits = np.asarray(fns.logits(variables, x_np, train=False))
  out["logits_max_abs_diff_jax_vs_torch"] = float(np.max(np.abs(t_logits - j_logits)))

  atk = torchattacks.PGD(tmodel, eps=EPSILON, alpha=STEP_SIZE, steps=num_steps,
                         random_start=True)
  best_t, times_t, cpu_t = _timed(lambda: atk(xt, yt), reps)
  out["torch_pgd_cpu_s_per_batch"] = cpu_t
  out["pgd_speedup_vs_torch_cpu_time"] = cpu_t / cpu_pgd
  out["torch_pgd_s_per_batch"] = best_t
  out["torch_pgd_s_all"] = times_t
  out["torch_pgd_img_per_s"] = batch / best_t
  out["pgd_speedup_vs_torch"] = best_t / best

  _log("PyTorch AT step")
  tmodel.train()
  opt = torch.optim.SGD(tmodel.parameters(), lr=float(optim.lr),
                        momentum=float(optim.momentum),
                        weight_decay=float(optim.weight_decay))
  atk_train = torchattacks.PGD(tmodel, eps=EPSILON, alpha=STEP_SIZE,
                               steps=num_steps, random_start=True)
  atk_train.set_model_training_mode(model_training=True, batchnorm_training=True)

  def torch_at():
    x_adv_t = atk_train(xt, yt)
    tmodel.train()
    loss = torch.nn.functional.cross_entropy(tmodel(x_adv_t), yt)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
  best_tat, times_tat, cpu_tat = _timed(torch_at, reps)
  out["torch_at_step_cpu_s"] = cpu_tat
  out["at_step_speedup_vs_torch_cpu_time"] = cpu_tat / cpu_at
  out["torch_at_step_s"] = best_tat
  out["torch_at_step_s_all"] = times_tat
  out["torch_at_img_per_s"] = batch / best_tat
  out["at_step_speedup_vs_torch"] = best_tat / best_at
  save(out)

  _log("MRC: seconds per module, after the first (compiling) module")
  x_adv = sharding.to_host(last[0])
  modules = models.resolve_modules(variables["params"],
                                   ["layer2.1.conv2", "layer3.1.conv2",
                                    "layer4.1.conv1", "linear"][:mrc_modules])
  stamps = []
  criticality.mrc(
      fns, variables, x_adv, y_np,
      modules=modules, num_passes=1, batch_size=batch, mesh=mesh,
      on_step=lambda *_: stamps.append(time.perf_counter()))
  per_module = np.diff(stamps)
  out["mrc_seconds_per_module"] = float(np.min(per_module))
  out["mrc_seconds_per_module_all"] = per_module.tolist()
  out["mrc_setting"] = ("rift_jax.mrc, 1 pass over a "
                        f"fixed set of {batch} adversarial images, batch {batch}: "
                        "ascent step, projection, loss/accuracy evaluation; "
                        "compiled before timing")

  _log("interpolation: θ(α), clean + PGD evaluation of one batch per α")
  from rift_jax import data
  theta_ft = jax.tree_util.tree_map(lambda a: a * 1.01, variables)
  split = data.Split((x_np * 255).astype(np.uint8), y_np)
  evaluator = evaluate.Evaluator(fns, evaluate.pgd_attack_fn(attacks.PGDConfig(
      epsilon=EPSILON, step_size=STEP_SIZE, num_steps=num_steps)), batch, mesh,
      stacked=True)
  alpha = jnp.asarray([0.5], jnp.float32)
  stack = jax.jit(interpolation.mix_stack)

  def one_alpha():
    evaluator(stack(variables, theta_ft, alpha), split, key)
  out["interpolation_seconds_per_alpha"], out["interpolation_s_all"], _ = _timed(
      one_alpha, reps)
  out["interpolation_setting"] = (
      "rift_jax.interpolation.mix_stack + evaluate.Evaluator(stacked=True) "
      f"(as evaluate_alphas with chunk=1): clean + PGD-{num_steps} on {batch} "
      "images; compiled before timing")
  save(out)

  out["peak_rss_mb"] = _rss_mb()
  return out


REQUIRED_KEYS = ("pgd_speedup_vs_torch", "at_step_speedup_vs_torch",
                 "pgd_flops_fraction_of_peak", "at_step_compile_s",
                 "mrc_seconds_per_module", "interpolation_seconds_per_alpha",
                 "peak_rss_mb")


def main():
  from rift_jax import workdir
  from rift_jax.errors import UserError
  if not FLAGS.out:
    raise UserError("--out is required (the JSON file to write)")
  if FLAGS.reduced:
    kw = dict(width=4, batch=8, num_steps=1, reps=1, matmul_n=512, mrc_modules=2)
  else:
    kw = dict(width=FLAGS.width, batch=FLAGS.batch_size, num_steps=FLAGS.num_steps,
              reps=FLAGS.reps, matmul_n=2048)
  for name in ("width", "batch", "num_steps", "reps"):
    if kw[name] < 1:
      raise UserError(f"--{name}={kw[name]} must be at least 1")
  out_path = os.path.abspath(FLAGS.out)
  if not os.path.isdir(os.path.dirname(out_path)):
    raise UserError(f"--out={FLAGS.out!r}: folder does not exist")
  def save(partial):
    workdir.write_json(out_path, dict(partial, reduced=FLAGS.reduced,
                                    peak_rss_mb=_rss_mb()))
  result = run(threads=FLAGS.threads or os.cpu_count(),
               rolled=FLAGS.rolled and not FLAGS.reduced, save=save,
               conv_impl=FLAGS.conv_impl, **kw)
  save(result)
  for k in REQUIRED_KEYS:
    print(f"{k}: {result[k]:.4g}")


if __name__ == "__main__":
  common.run(main)
