"""PGD-10 attack and PGD-AT train step: JAX against PyTorch + torchattacks.

  python -m benchmarks.base --out=base.json --reps=3

The same CIFAR ResNet-18 (post-activation BasicBlock, `--width`, 32x32x3,
batch `--batch_size`, float32, seeded random weights) in both frameworks,
the PyTorch twin holding the JAX weights (logits compared), the same thread
count. Measured, each the best of `--reps` runs after a warm-up (JAX
programs compiled ahead of time, compile seconds recorded):
- the attack (L∞ ε 8/255, step 2/255, random start, BN in eval mode): JAX
  unrolled ('auto' on CPU) and rolled loops vs `torchattacks.PGD`;
- the PGD-AT step (attack with BN in train mode, SGD momentum, weight decay):
  `rift_jax.training.make_train_step` vs torchattacks + a PyTorch step;
- the attack's achieved FLOP/s (XLA cost analysis) over a float32 matmul's;
- RiFT's interpolation, seconds per α (θ(α), clean + PGD evaluation of a batch);
- peak resident memory.
Why the numbers are what they are: docs/performance.md.
"""
from __future__ import annotations

import time

from absl import flags

from benchmarks import common

flags.adopt_module_key_flags(common)
flags.DEFINE_integer("width", 64, "ResNet-18 base width.", lower_bound=1)
flags.DEFINE_integer("batch_size", 128, "Images per batch.", lower_bound=1)
flags.DEFINE_integer("num_steps", 10, "PGD steps.", lower_bound=1)
flags.DEFINE_bool("rolled", True, "Also time the rolled (fori_loop) JAX attack.")
flags.DEFINE_enum("conv_impl", "auto", ["auto", "phase", "xla"], "Input-gradient "
                  "rule of the JAX convolutions (rift_jax.models.conv).")
flags.DEFINE_integer("matmul_size", 2048, "n of the n×n float32 matmul that "
                     "measures this machine's FLOP/s.", lower_bound=1)
FLAGS = flags.FLAGS

EPSILON, STEP_SIZE = 8 / 255, 2 / 255
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def matmul_flops_per_s(n: int, reps: int) -> tuple[float, float]:
  """FLOP/s of an n×n float32 matmul: per wall second, per CPU second."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  best, _, cpu = common.timed(lambda: f(a, b).block_until_ready(), max(reps, 3))
  return 2.0 * n**3 / best, 2.0 * n**3 / cpu


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", 0.0))


def measure(out: common.Record) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  import torchattacks
  from configs import common as config_common
  from rift_jax import attacks, data, evaluation, sharding, training
  from rift_jax.models import conv
  from rift_jax.rift import interpolation
  from rift_jax.training import objectives

  width, batch, steps, reps = (FLAGS.width, FLAGS.batch_size, FLAGS.num_steps,
                               FLAGS.reps)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(batch, mesh, "--batch_size")
  out["base_config"] = dict(model="resnet18", width=width, batch_size=batch,
                            image_shape=[32, 32, 3], dtype="float32",
                            pgd_steps=steps, epsilon=EPSILON, step_size=STEP_SIZE,
                            reps=reps, rolled=FLAGS.rolled)
  out["conv_impl"] = conv.resolve_impl(FLAGS.conv_impl)
  twins = common.resnet18_twins(width, (32, 32, 3), CIFAR_MEAN, CIFAR_STD,
                                conv_impl=FLAGS.conv_impl)
  fns, variables = twins.fns, twins.variables
  rng = np.random.default_rng(0)
  x_np = rng.uniform(0, 1, (batch, 32, 32, 3)).astype(np.float32)
  y_np = rng.integers(0, common.NUM_CLASSES, batch).astype(np.int32)
  v = sharding.replicate(variables, mesh)
  x, y = sharding.shard_batch(mesh, x_np, y_np)
  key = jax.random.PRNGKey(1)
  pgd_cfg = attacks.PGDConfig(epsilon=EPSILON, step_size=STEP_SIZE,
                              num_steps=steps)

  common.log("matmul")
  peak, peak_cpu = matmul_flops_per_s(FLAGS.matmul_size, reps)
  out["matmul_size"] = FLAGS.matmul_size
  out["matmul_gflops_per_s"] = peak / 1e9
  out["matmul_gflops_per_cpu_s"] = peak_cpu / 1e9

  common.log("JAX PGD attack")
  def compiled_attack(unroll):
    cfg = attacks.PGDConfig(epsilon=EPSILON, step_size=STEP_SIZE,
                            num_steps=steps, unroll=unroll)
    return jax.jit(lambda v_, x_, y_, k_: attacks.pgd(
        lambda z: fns.logits(v_, z, train=False), x_, y_, k_, cfg)
                   ).lower(v, x, y, key).compile()

  unroll = attacks.resolve_unroll("auto")
  t0 = time.perf_counter()
  pgd = compiled_attack(unroll)
  out["pgd_compile_s"] = time.perf_counter() - t0
  flops = _flops(pgd)
  best, runs, cpu_pgd = common.timed(
      lambda: pgd(v, x, y, key).block_until_ready(), reps, warmup=False)
  out["jax_pgd_unroll"] = str(unroll)
  out["jax_pgd_s_per_batch"], out["jax_pgd_s_all"] = best, runs
  out["jax_pgd_cpu_s_per_batch"] = cpu_pgd
  out["jax_pgd_img_per_s"] = batch / best
  out["pgd_flops_per_batch"] = flops
  out["pgd_achieved_gflops_per_s"] = flops / best / 1e9
  out["pgd_flops_fraction_of_peak"] = flops / best / peak
  out["pgd_flops_fraction_of_peak_cpu_time"] = (flops / cpu_pgd) / peak_cpu
  if FLAGS.rolled:
    rolled = compiled_attack(False)
    t_rolled, runs_rolled, _ = common.timed(
        lambda: rolled(v, x, y, key).block_until_ready(), 1, warmup=False)
    out["jax_pgd_rolled_s_per_batch"] = t_rolled
    out["jax_pgd_rolled_s_all"] = runs_rolled
    out["unrolled_speedup_vs_rolled"] = t_rolled / best

  common.log("JAX PGD-AT train step (BN in train mode while attacking)")
  optim = config_common.base_config().optim
  tx = training.make_optimizer(optim, 100)
  ctx = objectives.Context(fns=fns, attack=pgd_cfg, attack_bn="train")
  step = training.make_train_step(ctx, tx, objectives.pgd_at, None,
                                  augment=False)
  # A copy: the step donates its state, which must not delete `variables`.
  state = sharding.replicate(training.create_state(
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
    holder[0], metrics = step_c(holder[0], x, y)
    metrics["loss"].block_until_ready()
  best_at, runs_at, cpu_at = common.timed(jax_at, reps, warmup=False)
  out["jax_at_step_s"], out["jax_at_step_s_all"] = best_at, runs_at
  out["jax_at_step_cpu_s"] = cpu_at
  out["jax_at_img_per_s"] = batch / best_at
  del holder, state
  out["peak_rss_mb_before_torch"] = common.peak_rss_mb()
  out.save()

  common.log("PyTorch eager: the same model, weights and batch")
  tmodel = twins.torch
  out["logits_max_abs_diff_jax_vs_torch"] = common.logits_max_abs_diff(twins, x_np)
  xt, yt = common.nchw(x_np), torch.from_numpy(y_np.astype(np.int64))
  atk = torchattacks.PGD(tmodel, eps=EPSILON, alpha=STEP_SIZE, steps=steps,
                         random_start=True)
  best_t, runs_t, cpu_t = common.timed(lambda: atk(xt, yt), reps)
  out["torch_pgd_s_per_batch"], out["torch_pgd_s_all"] = best_t, runs_t
  out["torch_pgd_cpu_s_per_batch"] = cpu_t
  out["torch_pgd_img_per_s"] = batch / best_t
  out["pgd_speedup_vs_torch"] = best_t / best
  out["pgd_speedup_vs_torch_cpu_time"] = cpu_t / cpu_pgd

  common.log("PyTorch AT step")
  tmodel.train()
  opt = torch.optim.SGD(tmodel.parameters(), lr=float(optim.lr),
                        momentum=float(optim.momentum),
                        weight_decay=float(optim.weight_decay))
  atk_train = torchattacks.PGD(tmodel, eps=EPSILON, alpha=STEP_SIZE,
                               steps=steps, random_start=True)
  atk_train.set_model_training_mode(model_training=True, batchnorm_training=True)

  def torch_at():
    x_adv = atk_train(xt, yt)
    tmodel.train()
    loss = torch.nn.functional.cross_entropy(tmodel(x_adv), yt)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
  best_tat, runs_tat, cpu_tat = common.timed(torch_at, reps)
  out["torch_at_step_s"], out["torch_at_step_s_all"] = best_tat, runs_tat
  out["torch_at_step_cpu_s"] = cpu_tat
  out["torch_at_img_per_s"] = batch / best_tat
  out["at_step_speedup_vs_torch"] = best_tat / best_at
  out["at_step_speedup_vs_torch_cpu_time"] = cpu_tat / cpu_at
  out.save()

  common.log("interpolation: θ(α), clean + PGD evaluation of one batch per α")
  theta_ft = jax.tree_util.tree_map(lambda a: a * 1.01, variables)
  split = data.Split((x_np * 255).astype(np.uint8), y_np)
  evaluator = evaluation.Evaluator(fns, evaluation.pgd_attack_fn(pgd_cfg), batch,
                                   mesh, stacked=True)
  alpha = jnp.asarray([0.5], jnp.float32)
  stack = jax.jit(interpolation.mix_stack)
  best_i, runs_i, _ = common.timed(
      lambda: evaluator(stack(variables, theta_ft, alpha), split, key), reps)
  out["interpolation_seconds_per_alpha"], out["interpolation_s_all"] = best_i, runs_i
  out["interpolation_setting"] = (
      "rift_jax.rift.interpolation.mix_stack + evaluation.Evaluator(stacked=True) "
      f"(as evaluate_alphas with chunk=1): clean + PGD-{steps} on {batch} "
      "images; compiled before timing")


if __name__ == "__main__":
  common.main("base", measure)
