"""Speed of our compiled programs, side by side with PyTorch eager.

  python -m launch.benchmark --out=benchmark.json --reps=3  # the full measurement
  python -m launch.benchmark --out=/tmp/b.json --reduced    # every key, small (tests)
  python -m launch.benchmark --out=b.json --phases=mrc      # one phase only

Run the full measurement on a quiet machine: every phase compares wall
times (CPU times too where noted). On 2 CPU cores it takes roughly: base
~5-8 min, mrc ~5-10 min, autoattack with the defaults (500 images, the full
standard budgets) tens of minutes, most of it PyTorch. Each phase runs in
its own process (the results merged into one JSON file).

Phases (`--phases`, default all three):

base — one process measures, on the SAME CIFAR ResNet-18 (post-activation
BasicBlock, 3x3 stride-1 stem; `--width` 64, 32x32x3 inputs, `--batch_size`
128, float32, same thread count) in JAX and in PyTorch with torchattacks (the
stack the RiFT authors used); the torch model gets the JAX weights, and the
logits are checked to agree:

- PGD-10 attack (L-inf, ε 8/255, step 2/255, random start, BN in eval mode):
  JAX jitted unrolled and rolled loops vs `torchattacks.PGD`.
- PGD-10 AT train step (attack with BN in train mode, SGD momentum, weight
  decay): `rift_jax.training.make_train_step` vs torchattacks + a standard
  PyTorch step. Its compile time (trace + lower + XLA compile).
- Achieved FLOP/s of the attack (XLA cost analysis of the compiled attack)
  over the FLOP/s of a 2048x2048 float32 matmul on this machine.
- Interpolation seconds per α (`rift_jax.interpolate`: θ(α) and a clean +
  PGD-10 evaluation of one batch), compiled beforehand.
- Peak resident memory.
Times are the best of `--reps` runs after a warm-up run (all runs listed).

mrc — RiFT step 1 at the cost the paper says it needs: `rift_jax.mrc`
against the authors' loop in PyTorch (`launch.torch_reference_algos.
official_mrc`: a deep copy per module, only its weight requiring grad, SGD
lr 1 on −CE, batches over the fixed set, projection onto ‖w − w0‖_F ≤
0.1‖w0‖_F and a loss evaluation of the whole set after every pass). Same
network (ResNet-18, Fashion-MNIST 28x28x1, width `--mrc_width`), same
weights, same fixed set: the first `--mrc_examples` Fashion-MNIST test
images, PGD-10 (ε 0.1, step 0.025) against the model in JAX, once (not
timed); `--mrc_batch_size`, `--mrc_passes`, per-pass projection. Defaults
are the issue's setting (width 16, 1,000 examples, batch 500, 10 passes).
Weights: `--mrc_checkpoint` (a PyTorch/safetensors file `rift_jax.models.convert`
reads); else the committed fixture tests/fixtures/fmnist_resnet18_w4_pgdat
.safetensors when `--mrc_width=4`; else a seeded random init (the cost of a
step does not depend on the weight values; both frameworks get the same
ones). Modules `--mrc_modules` (different depths: on the static route, and
in PyTorch's autograd, the backward pass stops at the module, so cost falls
with depth; `--mrc_modules=all` times every module, what a RiFT run scores).
For each module:
- ours, static route (the default, with its reused prefix: the network
  before the module's block runs once per module): compiled once per
  module. Each module is scored 1 + `--mrc_reps` times in one `mrc()` call (the static route
  keeps a module's compiled step while the module repeats): the first
  occurrence is the time WITH compile, the best later one the time after
  compilation; the compile seconds are JAX's own trace + lowering + XLA
  compile spans (`jax.monitoring`) inside the first occurrence. A
  whole-network MRC costs Σ (compile + run) on this route.
- ours, mask route: one program for every module (compiled once, in the
  first module: `mrc_mask_compile_s`), every step computes every layer's
  weight gradient: Σ run + one compile. `--mrc_routes=static` leaves it
  out (and its keys) when timing many modules.
- PyTorch: `--mrc_reps` runs of the authors' loop, best; the origin loss
  is computed once for all modules as the authors do (ours evaluates it per
  module: one extra forward pass over the set per module, ≤ 1/(4·passes)
  of the work).
MRC values are compared module by module (ours vs PyTorch, static vs mask).

autoattack — the whole standard AutoAttack (APGD-CE → APGD-T → FAB-T →
Square, each on the examples still robust) on the committed robust fixture
(ResNet-18 width 4, PGD-AT on Fashion-MNIST, ε 0.1) and the first
`--aa_images` Fashion-MNIST test images, L∞ ε = 0.1: ours
(`autoattack.run_suite` of `autoattack_suite('standard', ...)`, batches of
`--aa_batch_size`) vs `torchattacks.AutoAttack(model, norm='Linf', eps,
version='standard', n_classes=10, seed=0)` called on batches of the same
size. torchattacks 3.5.1's AutoAttack runs APGD, APGD-T and FAB with its
own default of 10 iterations (the authors' AutoAttack, fra31/auto-attack,
and ours: 100) and Square with a rescaled p schedule (the authors': not
rescaled); so the same work is compared, its four sub-attacks get the
authors' budgets: `--aa_steps` iterations, `--aa_targets` target classes,
`--aa_queries` Square queries, no rescaling. Ours runs twice in the same
process: the first run compiles each attack (one program per attack and
batch shape, `autoattack_compile_s` from JAX's compile spans), the second
is the time after compilation; PyTorch runs once. Both robust accuracies
are recorded (clean-correct AND still correct after the suite; they
should agree within ~1 pp), with per-attack seconds on both sides.
What bounds the speed: APGD-CE and APGD-T are one forward + backward per
step (APGD-T: × targets × steps on the survivors); on XLA:CPU they run as
a host loop over one compiled, unrolled 10-step program (`--aa_unroll`
'auto' and `autoattack.CPU_STEPS_PER_CALL`: unrolled steps run ~4× faster
than rolled ones there, and one piece compiles in seconds); FAB-T adds per
step a forward, and a projection that
sorts the d = H·W·C breakpoints of every example, so it is the most
expensive per step; Square is bounded by the per-query cost of one forward
of the whole (padded) batch, queries being strictly sequential — ours
evaluates the padded batch every query (in 20-query unrolled pieces on
CPU), torchattacks only the examples not yet broken. Every attack runs on
fixed-size padded batches of the survivors, so a survivor count just above
a multiple of `--aa_batch_size` wastes up to a batch.

A/B switches: `--conv_impl=xla` (XLA's own strided-conv input gradient) and
`RIFT_JAX_XLA_DEFAULTS=0` (XLA:CPU's YNNPACK convolutions; see
rift_jax/__init__.py). One device per core:
`XLA_FLAGS=--xla_force_host_platform_device_count=2` (batch sharded).

Flags: --out (required), --reduced, --phases, --reps, --threads; base:
--width, --batch_size, --num_steps, --rolled, --conv_impl; mrc: --mrc_width,
--mrc_examples, --mrc_batch_size, --mrc_passes, --mrc_modules, --mrc_reps,
--mrc_checkpoint; autoattack: --aa_images, --aa_batch_size, --aa_steps,
--aa_targets, --aa_queries, --aa_unroll. `--reduced` ignores the size flags
and runs every selected phase at toy sizes (its numbers mean little).
"""
from __future__ import annotations

import os
import platform
import resource
import sys
import time

import numpy as np

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
                    "convolutions: auto | phase | xla (rift_jax.models.conv).")
flags.DEFINE_list("phases", ["base", "mrc", "autoattack"], "Which phases to "
                  "run: base (PGD, AT step, FLOP/s, interpolation), mrc, "
                  "autoattack.")
# mrc phase (defaults: the setting)
flags.DEFINE_integer("mrc_width", 16, "MRC: ResNet-18 width (4: the committed "
                     "robust fixture's weights; else --mrc_checkpoint or a "
                     "seeded random init).")
flags.DEFINE_integer("mrc_examples", 1000, "MRC: fixed adversarial examples.")
flags.DEFINE_integer("mrc_batch_size", 500, "MRC: ascent batch size (the "
                     "authors' code: 512).")
flags.DEFINE_integer("mrc_passes", 10, "MRC: passes over the fixed set.")
flags.DEFINE_list("mrc_modules", ["conv1", "layer2.1.conv2", "layer4.1.conv1"],
                  "MRC: the modules timed (all: every module).")
flags.DEFINE_list("mrc_routes", ["static", "mask"], "MRC: our routes to time "
                  "(static is always needed; leave out mask for many modules).")
flags.DEFINE_integer("mrc_reps", 1, "MRC: timed runs per module after the "
                     "compiling one (ours) / timed runs per module (PyTorch).")
flags.DEFINE_string("mrc_checkpoint", "", "MRC: weights of a Fashion-MNIST "
                    "ResNet-18 of width --mrc_width (a file rift_jax.models.convert "
                    "reads: .safetensors / .pth).")
# autoattack phase
flags.DEFINE_integer("aa_images", 500, "AutoAttack: Fashion-MNIST test images.")
flags.DEFINE_integer("aa_batch_size", 250, "AutoAttack: images per batch (both "
                     "sides).")
flags.DEFINE_integer("aa_steps", 100, "AutoAttack: APGD / APGD-T / FAB-T "
                     "iterations (the authors' standard: 100).")
flags.DEFINE_integer("aa_targets", 9, "AutoAttack: target classes of APGD-T "
                     "and FAB-T (standard: 9).")
flags.DEFINE_integer("aa_queries", 5000, "AutoAttack: Square queries "
                     "(standard: 5000).")
flags.DEFINE_string("aa_unroll", "auto", "AutoAttack: our APGD loop form: auto "
                    "(unrolled on CPU) | true | false | an unroll factor.")
FLAGS = flags.FLAGS

PHASES = ("base", "mrc", "autoattack")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The committed robust model (tests/fixtures/README.md): a data file, read
# as any checkpoint.
FIXTURE = os.path.join(REPO, "tests", "fixtures",
                       "fmnist_resnet18_w4_pgdat.safetensors")
FIXTURE_WIDTH = 4
FMNIST_EPSILON, FMNIST_STEP = 0.1, 0.025   # configs/quickstart.py's threat model

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


class _CompileClock:
  """Wall seconds JAX spends compiling: the spans of its own tracing,
  lowering and XLA-compile events (`jax.monitoring`), nested spans counted
  once. `seconds(t0, t1)`: compile time inside [t0, t1] (`time.time()`)."""

  EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
            "/jax/core/compile/jaxpr_to_mlir_module_duration",
            "/jax/core/compile/backend_compile_duration")
  _instance = None

  def __init__(self):
    import jax
    self.spans: list[tuple[float, float]] = []
    jax.monitoring.register_event_time_span_listener(self._on_span)

  @classmethod
  def get(cls) -> "_CompileClock":
    if cls._instance is None:
      cls._instance = cls()
    return cls._instance

  def _on_span(self, event, start, end, **_):
    if event in self.EVENTS:
      self.spans.append((float(start), float(end)))

  def seconds(self, t0: float, t1: float) -> float:
    spans = sorted((max(a, t0), min(b, t1)) for a, b in self.spans
                   if b > t0 and a < t1)
    total, cur_a, cur_b = 0.0, None, None
    for a, b in spans:
      if cur_b is None or a > cur_b:
        if cur_b is not None:
          total += cur_b - cur_a
        cur_a, cur_b = a, b
      else:
        cur_b = max(cur_b, b)
    if cur_b is not None:
      total += cur_b - cur_a
    return total


# -------------------------------------------------------- PyTorch model
def torch_twin(width: int, variables):
  """The PyTorch ResNet-18 of the cross-checks (`rift_jax/models/torch_models.py`,
  same layers and names as `rift_jax.models.ResNet`) holding `variables`."""
  import torch
  from rift_jax.models import convert
  from rift_jax.models import torch_models
  model = torch_models.ResNet18(num_classes=NUM_CLASSES, width=width,
                                mean=CIFAR_MEAN, std=CIFAR_STD)
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
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
        rolled: bool, matmul_n: int, conv_impl: str = "auto",
        phases=PHASES, mrc: dict | None = None, aa: dict | None = None,
        save=lambda out: None) -> dict:
  """All measurements of `phases`; `mrc` / `aa`: keyword arguments of
  `mrc_phase` / `autoattack_phase`. `save(partial_results)` runs after each
  phase, so a run cut short still leaves what it measured."""
  import jax
  import torch
  import torchattacks
  from rift_jax.models import conv

  torch.set_num_threads(threads)
  _CompileClock.get()   # listen to JAX's compile events from the start
  out: dict = {"config": dict(model="resnet18", width=width, batch_size=batch,
                              image_shape=[32, 32, 3], dtype="float32",
                              pgd_steps=num_steps, epsilon=EPSILON,
                              step_size=STEP_SIZE, reps=reps),
               "phases": list(phases)}
  out["versions"] = dict(jax=jax.__version__, torch=torch.__version__,
                         torchattacks=torchattacks.__version__,
                         python=platform.python_version())
  out["threads"] = dict(cpu_count=os.cpu_count(), torch=torch.get_num_threads(),
                        jax_devices=jax.device_count(),
                        xla_flags=os.environ.get("XLA_FLAGS", ""))
  out["conv_impl"] = conv.resolve_impl(conv_impl)
  if "base" in phases:
    base_phase(out, width=width, batch=batch, num_steps=num_steps, reps=reps,
               rolled=rolled, matmul_n=matmul_n, conv_impl=conv_impl, save=save)
  if "mrc" in phases:
    mrc_phase(out, save=save, **(mrc or {}))
  if "autoattack" in phases:
    autoattack_phase(out, save=save, **(aa or {}))
  out["peak_rss_mb"] = _rss_mb()
  return out


def base_phase(out: dict, *, width: int, batch: int, num_steps: int, reps: int,
               rolled: bool, matmul_n: int, conv_impl: str, save) -> None:
  """PGD attack, AT step, FLOP/s, interpolation: JAX vs PyTorch (module
  docstring)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  import torchattacks
  from configs import common as config_common
  from rift_jax import attacks, evaluation, models, sharding, training
  from rift_jax.rift import interpolation
  from rift_jax.training import objectives

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
  best, times, cpu_pgd = _timed(
      lambda: pgd_compiled(v, x, y, key).block_until_ready(), reps, warmup=False)
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
  tx = training.make_optimizer(optim, 100)
  ctx = objectives.Context(fns=fns, attack=attacks.PGDConfig(
      epsilon=EPSILON, step_size=STEP_SIZE, num_steps=num_steps), attack_bn="train")
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

  _log("interpolation: θ(α), clean + PGD evaluation of one batch per α")
  from rift_jax import data
  theta_ft = jax.tree_util.tree_map(lambda a: a * 1.01, variables)
  split = data.Split((x_np * 255).astype(np.uint8), y_np)
  evaluator = evaluation.Evaluator(fns, evaluation.pgd_attack_fn(attacks.PGDConfig(
      epsilon=EPSILON, step_size=STEP_SIZE, num_steps=num_steps)), batch, mesh,
      stacked=True)
  alpha = jnp.asarray([0.5], jnp.float32)
  stack = jax.jit(interpolation.mix_stack)

  def one_alpha():
    evaluator(stack(variables, theta_ft, alpha), split, key)
  out["interpolation_seconds_per_alpha"], out["interpolation_s_all"], _ = _timed(
      one_alpha, reps)
  out["interpolation_setting"] = (
      "rift_jax.rift.interpolation.mix_stack + evaluation.Evaluator(stacked=True) "
      f"(as evaluate_alphas with chunk=1): clean + PGD-{num_steps} on {batch} "
      "images; compiled before timing")
  out["peak_rss_mb_base"] = _rss_mb()
  save(out)


# ------------------------------------------------- Fashion-MNIST models
def fmnist_test(n: int):
  """The first n Fashion-MNIST test images (Debian's IDX files) as a
  `data.Split` (uint8)."""
  import numpy as np
  from rift_jax import data
  from rift_jax.errors import UserError
  images = os.path.join(data.DEBIAN_FASHION_MNIST, "t10k-images-idx3-ubyte.gz")
  if not os.path.exists(images):
    raise UserError(f"Fashion-MNIST not found at {images} (apt-get install "
                    "dataset-fashion-mnist); the mrc and autoattack phases "
                    "need it")
  x = data.read_idx(images)[:n, :, :, None]
  y = data.read_idx(os.path.join(data.DEBIAN_FASHION_MNIST,
                                 "t10k-labels-idx1-ubyte.gz"))[:n]
  return data.Split(x, y.astype(np.int32))


def fmnist_resnet18(width: int, checkpoint: str = ""):
  """A Fashion-MNIST ResNet-18 (28x28x1, 10 classes) in both frameworks:
  (fns, variables, torch model in eval mode holding the same weights, where
  the weights came from). Weights: `checkpoint`; else the committed fixture
  when width is its width; else a seeded random init."""
  import jax
  import torch
  from rift_jax import data, models
  from rift_jax.models import convert, torch_models
  info = data.INFO["fashion_mnist"]
  model = models.create_model("resnet18", num_classes=NUM_CLASSES, width=width,
                              mean=info.mean, std=info.std)
  if not checkpoint and width == FIXTURE_WIDTH:
    checkpoint = FIXTURE
  if checkpoint:
    variables = convert.import_checkpoint(checkpoint, model, info.image_shape)
    source = os.path.relpath(checkpoint, REPO) if checkpoint == FIXTURE else checkpoint
  else:
    variables = models.init_variables(model, jax.random.PRNGKey(0),
                                      info.image_shape)
    source = "random init (PRNGKey(0))"
  tmodel = torch_models.ResNet18(num_classes=NUM_CLASSES, width=width,
                                 in_channels=1, mean=info.mean, std=info.std)
  tmodel.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in
                          convert.to_state_dict(variables).items()}, strict=True)
  tmodel.eval()
  return models.ModelFns(model), variables, tmodel, source


def _nchw(x):
  import numpy as np
  import torch
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


# ------------------------------------------------------------ mrc phase
def mrc_phase(out: dict, *, width: int = 16, num_examples: int = 1000,
              batch: int = 500, passes: int = 10,
              modules=("conv1", "layer2.1.conv2", "layer4.1.conv1"),
              reps: int = 1, checkpoint: str = "", routes=("static", "mask"),
              save=lambda out: None) -> None:
  """MRC per module: ours (static and mask routes, with and without
  compile) vs the authors' PyTorch loop, same model, weights and fixed set
  (module docstring)."""
  import jax
  import numpy as np
  import torch
  from rift_jax import attacks, models
  from rift_jax.rift import criticality
  from launch import torch_reference_algos as ref

  epsilon, lr = 0.1, 1.0
  _log(f"MRC: ResNet-18 width {width}, {num_examples} fixed examples, batch "
       f"{batch}, {passes} passes")
  fns, variables, tmodel, source = fmnist_resnet18(width, checkpoint)
  modules = models.resolve_modules(
      variables["params"], None if list(modules) == ["all"] else list(modules))
  split = fmnist_test(num_examples)
  x_adv, y = criticality.fixed_adversarial_set(
      fns, variables, split, attacks.PGDConfig(
          epsilon=FMNIST_EPSILON, step_size=FMNIST_STEP, num_steps=10),
      jax.random.PRNGKey(3), batch_size=batch)
  xt, yt = _nchw(x_adv), torch.from_numpy(y.astype(np.int64))
  with torch.no_grad():
    t_logits = tmodel(xt[:batch]).numpy()
  j_logits = np.asarray(fns.logits(variables, x_adv[:batch], train=False))
  out["mrc_logits_max_abs_diff_jax_vs_torch"] = float(np.max(np.abs(t_logits - j_logits)))
  out["mrc_config"] = dict(
      model="resnet18", width=width, data="fashion_mnist test", weights=source,
      image_shape=[28, 28, 1], num_examples=num_examples, batch_size=batch,
      num_passes=passes, projection="per_pass", epsilon=epsilon,
      learning_rate=lr, modules=modules, reps=reps,
      fixed_set=f"PGD-10, L-inf eps {FMNIST_EPSILON}, step {FMNIST_STEP}, "
                "random start, against the model in JAX (inference mode)")
  out["mrc_modules"] = modules
  clock = _CompileClock.get()
  occ = 1 + reps   # every module scored 1 + reps times in a row

  ours = {}
  for route in [r for r in ("static", "mask") if r in routes]:
    _log(f"MRC ours, route {route!r}: {modules} x {occ}")
    stamps = []   # (wall, cpu) after every pass of every occurrence
    t0 = (time.time(), time.process_time())
    res = criticality.mrc(
        fns, variables, x_adv, y, modules=[m for m in modules for _ in range(occ)],
        epsilon=epsilon, learning_rate=lr, num_passes=passes, batch_size=batch,
        projection="per_pass", route=route,
        on_step=lambda *_: stamps.append((time.time(), time.process_time())))
    ends = stamps[passes - 1::passes]
    starts = [t0] + ends[:-1]
    wall = [e[0] - s[0] for s, e in zip(starts, ends)]
    cpu = [e[1] - s[1] for s, e in zip(starts, ends)]
    comp = [clock.seconds(s[0], e[0]) for s, e in zip(starts, ends)]
    r = ours[route] = dict(first=[], compile=[], run=[], run_cpu=[], mrc=[],
                           loss=[], base_loss=[])
    for i, m in enumerate(modules):
      k = i * occ
      r["first"].append(wall[k])
      r["compile"].append(comp[k])
      r["run"].append(min(wall[k + 1:k + occ]))
      r["run_cpu"].append(min(cpu[k + 1:k + occ]))
      r["mrc"].append(res[m].mrc)
      r["loss"].append(list(res[m].loss_per_pass))
      r["base_loss"].append(res[m].base_loss)
    r["call_compile"] = clock.seconds(t0[0], ends[-1][0])
    _log(f"  first (with compile) {np.round(r['first'], 2).tolist()} s, compile "
         f"{np.round(r['compile'], 2).tolist()} s, after compile "
         f"{np.round(r['run'], 2).tolist()} s")

  _log(f"MRC PyTorch (the authors' loop): {modules} x {reps}")
  origin = ref.robust_loss(tmodel, xt, yt, batch)
  theirs = dict(run=[], run_cpu=[], mrc=[], loss=[])
  for m in modules:
    times, cpus = [], []
    for _ in range(reps):
      t0, c0 = time.perf_counter(), time.process_time()
      tr = ref.official_mrc(tmodel, m, xt, yt, epsilon=epsilon,
                            learning_rate=lr, num_passes=passes,
                            batch_size=batch, origin=origin)
      times.append(time.perf_counter() - t0)
      cpus.append(time.process_time() - c0)
    theirs["run"].append(min(times))
    theirs["run_cpu"].append(min(cpus))
    theirs["mrc"].append(tr["mrc_clipped"])
    theirs["loss"].append(tr["loss_per_pass"])
  _log(f"  {np.round(theirs['run'], 2).tolist()} s")

  def rel(a, b):   # max |a − b| / |b|, |b| floored at 1e-4 (an MRC ≈ 0)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-4)))

  st, mk = ours["static"], ours.get("mask")   # mk None: --mrc_routes=static
  mean = lambda v: float(np.mean(v))
  out["mrc_seconds_per_module"] = mean(st["run"])
  out["mrc_seconds_per_module_all"] = st["run"]
  out["mrc_cpu_s_per_module_all"] = st["run_cpu"]
  out["mrc_with_compile_seconds_per_module"] = mean(st["first"])
  out["mrc_with_compile_seconds_per_module_all"] = st["first"]
  out["mrc_compile_s_per_module"] = mean(st["compile"])
  out["mrc_compile_s_all"] = st["compile"]
  out["mrc_torch_seconds_per_module"] = mean(theirs["run"])
  out["mrc_torch_seconds_per_module_all"] = theirs["run"]
  out["mrc_torch_cpu_s_per_module_all"] = theirs["run_cpu"]
  out["mrc_speedup_vs_torch"] = mean(theirs["run"]) / mean(st["run"])
  out["mrc_speedup_vs_torch_all"] = (np.asarray(theirs["run"])
                                     / np.asarray(st["run"])).tolist()
  out["mrc_speedup_vs_torch_with_compile"] = mean(theirs["run"]) / mean(st["first"])
  out["mrc_speedup_vs_torch_cpu_time"] = mean(theirs["run_cpu"]) / mean(st["run_cpu"])
  out["mrc_values"] = {m: dict(static=st["mrc"][i], torch=theirs["mrc"][i])
                       for i, m in enumerate(modules)}
  out["mrc_base_loss"] = dict(ours=st["base_loss"][0], torch=origin[0])
  out["mrc_max_rel_diff_vs_torch"] = rel(st["mrc"], theirs["mrc"])
  out["mrc_loss_max_rel_diff_vs_torch"] = rel(st["loss"], theirs["loss"])
  if mk is not None:
    out["mrc_mask_seconds_per_module"] = mean(mk["run"])
    out["mrc_mask_seconds_per_module_all"] = mk["run"]
    out["mrc_mask_cpu_s_per_module_all"] = mk["run_cpu"]
    out["mrc_mask_compile_s"] = mk["call_compile"]
    out["mrc_mask_with_compile_seconds_per_module_all"] = mk["first"]
    out["mrc_mask_speedup_vs_torch"] = mean(theirs["run"]) / mean(mk["run"])
    out["mrc_speedup_vs_mask"] = mean(mk["run"]) / mean(st["run"])
    out["mrc_speedup_vs_mask_all"] = (np.asarray(mk["run"])
                                      / np.asarray(st["run"])).tolist()
    for i, m in enumerate(modules):
      out["mrc_values"][m]["mask"] = mk["mrc"][i]
    out["mrc_max_rel_diff_vs_torch"] = max(out["mrc_max_rel_diff_vs_torch"],
                                           rel(mk["mrc"], theirs["mrc"]))
    out["mrc_static_vs_mask_max_rel_diff"] = rel(st["mrc"], mk["mrc"])
  out["mrc_setting"] = (
      f"seconds to score one module: rift_jax.mrc ({passes} passes over "
      f"{num_examples} fixed adversarial examples in batches of {batch}: ascent "
      "steps, per-pass projection, loss/accuracy evaluation) vs the authors' "
      "PyTorch loop (launch.torch_reference_algos.official_mrc); ours after "
      "compilation (with compile: mrc_with_compile_*); means over mrc_modules")
  out["peak_rss_mb_mrc"] = _rss_mb()
  save(out)


# ----------------------------------------------------- autoattack phase
def _parse_unroll(text: str):
  from rift_jax.errors import UserError
  t = str(text).strip().lower()
  if t in ("auto", "true", "false"):
    return {"auto": "auto", "true": True, "false": False}[t]
  if t.isdigit() and int(t) >= 1:
    return int(t)
  raise UserError(f"--aa_unroll={text!r}: expected auto, true, false or a "
                  "positive integer")


def autoattack_phase(out: dict, *, num_images: int = 500, batch: int = 250,
                     steps: int = 100, targets: int = 9, queries: int = 5000,
                     unroll="auto", save=lambda out: None) -> None:
  """The standard AutoAttack, ours vs torchattacks', on the robust fixture
  (module docstring)."""
  import jax
  import numpy as np
  import torch
  import torchattacks
  from rift_jax import data
  from rift_jax.evaluation import autoattack

  eps = FMNIST_EPSILON
  unroll = _parse_unroll(unroll)
  _log(f"AutoAttack (standard) on {num_images} images: steps {steps}, targets "
       f"{targets}, Square queries {queries}")
  fns, variables, tmodel, source = fmnist_resnet18(FIXTURE_WIDTH)
  split = fmnist_test(num_images)
  suite = autoattack.autoattack_suite(
      "standard", eps, num_steps=steps, num_target_classes=targets,
      square_queries=queries, unroll=unroll)
  out["autoattack_config"] = dict(
      model=f"resnet18 width {FIXTURE_WIDTH}", weights=source,
      data="fashion_mnist test", num_images=num_images, batch_size=batch,
      norm="linf", epsilon=eps, version="standard", steps=steps,
      target_classes=targets, square_queries=queries,
      square_rescale_schedule=False, apgd_unroll=str(unroll),
      torch=("torchattacks.AutoAttack(model, norm='Linf', eps, version="
             "'standard', n_classes=10, seed=0), sub-attacks set to these "
             "budgets (its own defaults: 10 iterations, rescaled Square "
             "schedule)"))

  clock = _CompileClock.get()
  runs = []
  for label in ("first run (compiles)", "timed run (compiled)"):
    _log(f"AutoAttack ours, {label}")
    t0 = time.time()
    res = autoattack.run_suite(fns, variables, split, suite, batch,
                               jax.random.PRNGKey(0), progress=False)
    t1 = time.time()
    runs.append((t1 - t0, clock.seconds(t0, t1), res))
    _log(f"  {t1 - t0:.1f} s (compile {runs[-1][1]:.1f} s), per attack "
         f"{res['seconds']}, robust {res['robust']}")
  (first_s, compile_s, first), (ours_s, _, res) = runs

  _log("AutoAttack torchattacks")
  atk = torchattacks.AutoAttack(tmodel, norm="Linf", eps=eps, version="standard",
                                n_classes=NUM_CLASSES, seed=0)
  sub = atk._autoattack.attacks   # APGD, APGDT, FAB (multi-targeted), Square
  names = ["apgd_ce", "apgd_t", "fab_t", "square"]
  torch_seconds = dict.fromkeys(names, 0.0)
  for name, a in zip(names, sub):
    if name == "square":
      a.n_queries, a.rescale_schedule = queries, False
    else:
      a.steps = steps
    if name in ("apgd_t", "fab_t"):
      a.n_target_classes = targets

    def timed(*args, _f=a.forward, _n=name, **kw):
      t = time.perf_counter()
      r = _f(*args, **kw)
      torch_seconds[_n] += time.perf_counter() - t
      return r
    a.forward = timed
  torch.manual_seed(0)
  x = _nchw(data.to_float(split.images))
  y = torch.from_numpy(split.labels.astype(np.int64))
  robust = []
  t0 = time.perf_counter()
  for i in range(0, len(y), batch):
    xb, yb = x[i:i + batch], y[i:i + batch]
    xa = atk(xb, yb)
    with torch.no_grad():
      robust.append(((tmodel(xa).argmax(1) == yb)
                     & (tmodel(xb).argmax(1) == yb)).numpy())
  torch_s = time.perf_counter() - t0
  torch_robust = 100.0 * float(np.concatenate(robust).mean())
  _log(f"  {torch_s:.1f} s, per attack "
       f"{ {k: round(v, 2) for k, v in torch_seconds.items()} }, robust "
       f"{torch_robust:.2f} %")

  ours_robust = list(res["robust"].values())[-1]
  out["autoattack_seconds"] = ours_s
  out["autoattack_img_per_s"] = num_images / ours_s
  out["autoattack_seconds_per_attack"] = res["seconds"]
  out["autoattack_first_run_seconds"] = first_s
  out["autoattack_first_run_seconds_per_attack"] = first["seconds"]
  out["autoattack_img_per_s_with_compile"] = num_images / first_s
  out["autoattack_compile_s"] = compile_s
  out["autoattack_compile_s_per_attack"] = {
      k: round(max(first["seconds"][k] - res["seconds"][k], 0.0), 2)
      for k in res["seconds"]}
  out["autoattack_torch_seconds"] = torch_s
  out["autoattack_torch_img_per_s"] = num_images / torch_s
  out["autoattack_torch_seconds_per_attack"] = {
      k: round(v, 2) for k, v in torch_seconds.items()}
  out["autoattack_speedup_vs_torch"] = torch_s / ours_s
  out["autoattack_speedup_vs_torch_with_compile"] = torch_s / first_s
  out["autoattack_clean_acc"] = res["clean"]
  out["autoattack_robust_acc_after_each"] = res["robust"]
  out["autoattack_robust_acc"] = ours_robust
  out["autoattack_torch_robust_acc"] = torch_robust
  out["autoattack_robust_acc_diff_pp"] = ours_robust - torch_robust
  out["autoattack_runs_agree"] = bool(first["robust"] == res["robust"])
  out["autoattack_warnings"] = res["warnings"]
  out["autoattack_setting"] = (
      f"standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square on the survivors), "
      f"{num_images} Fashion-MNIST test images, L-inf eps {eps}, batch {batch}: "
      "rift_jax.evaluation.autoattack.run_suite after compilation (with compile: "
      "*_first_run_*) vs torchattacks.AutoAttack with the same budgets")
  out["peak_rss_mb_autoattack"] = _rss_mb()
  save(out)


REQUIRED_KEYS = ("pgd_speedup_vs_torch", "at_step_speedup_vs_torch",
                 "pgd_flops_fraction_of_peak", "at_step_compile_s",
                 "mrc_seconds_per_module", "interpolation_seconds_per_alpha",
                 "mrc_mask_seconds_per_module", "mrc_torch_seconds_per_module",
                 "mrc_speedup_vs_torch", "mrc_speedup_vs_mask",
                 "mrc_compile_s_per_module", "mrc_max_rel_diff_vs_torch",
                 "autoattack_speedup_vs_torch", "autoattack_img_per_s",
                 "autoattack_torch_img_per_s", "autoattack_robust_acc",
                 "autoattack_torch_robust_acc", "peak_rss_mb")


def main():
  from rift_jax import workdir
  from rift_jax.errors import UserError
  if not FLAGS.out:
    raise UserError("--out is required (the JSON file to write)")
  phases = [p.strip() for p in FLAGS.phases if p.strip()]
  for p in phases:
    if p not in PHASES:
      raise UserError(f"--phases entry {p!r}: expected some of {', '.join(PHASES)}")
  if not phases:
    raise UserError("--phases is empty")
  if FLAGS.reduced:
    kw = dict(width=4, batch=8, num_steps=1, reps=1, matmul_n=512)
    mrc = dict(width=FIXTURE_WIDTH, num_examples=64, batch=32, passes=2,
               modules=("conv1", "layer4.1.conv1"), reps=1)
    aa = dict(num_images=16, batch=16, steps=2, targets=2, queries=10,
              unroll="auto")
  else:
    kw = dict(width=FLAGS.width, batch=FLAGS.batch_size, num_steps=FLAGS.num_steps,
              reps=FLAGS.reps, matmul_n=2048)
    mrc = dict(width=FLAGS.mrc_width, num_examples=FLAGS.mrc_examples,
               batch=FLAGS.mrc_batch_size, passes=FLAGS.mrc_passes,
               modules=tuple(FLAGS.mrc_modules), reps=FLAGS.mrc_reps,
               checkpoint=FLAGS.mrc_checkpoint, routes=tuple(FLAGS.mrc_routes))
    bad = [r for r in FLAGS.mrc_routes if r not in ("static", "mask")]
    if bad or "static" not in FLAGS.mrc_routes:
      raise UserError(f"--mrc_routes={','.join(FLAGS.mrc_routes)}: expected static "
                      "or static,mask")
    aa = dict(num_images=FLAGS.aa_images, batch=FLAGS.aa_batch_size,
              steps=FLAGS.aa_steps, targets=FLAGS.aa_targets,
              queries=FLAGS.aa_queries, unroll=FLAGS.aa_unroll)
  for flag, value in [("width", kw["width"]), ("batch_size", kw["batch"]),
                      ("num_steps", kw["num_steps"]), ("reps", kw["reps"]),
                      ("mrc_width", mrc["width"]),
                      ("mrc_examples", mrc["num_examples"]),
                      ("mrc_batch_size", mrc["batch"]),
                      ("mrc_passes", mrc["passes"]), ("mrc_reps", mrc["reps"]),
                      ("aa_images", aa["num_images"]),
                      ("aa_batch_size", aa["batch"]), ("aa_steps", aa["steps"]),
                      ("aa_targets", aa["targets"]), ("aa_queries", aa["queries"])]:
    if value < 1:
      raise UserError(f"--{flag}={value} must be at least 1")
  if not mrc["modules"]:
    raise UserError("--mrc_modules is empty")
  if mrc.get("checkpoint") and not os.path.exists(mrc["checkpoint"]):
    raise UserError(f"--mrc_checkpoint={mrc['checkpoint']!r}: file not found")
  _parse_unroll(aa["unroll"])
  out_path = os.path.abspath(FLAGS.out)
  if not os.path.isdir(os.path.dirname(out_path)):
    raise UserError(f"--out={FLAGS.out!r}: folder does not exist")
  def save(partial):
    workdir.write_json(out_path, dict(partial, reduced=FLAGS.reduced,
                                    peak_rss_mb=_rss_mb()))
  if len(phases) > 1:
    result = _phases_in_subprocesses(phases, out_path)
    workdir.write_json(out_path, result)
    _print_keys(result)
    return
  result = run(threads=FLAGS.threads or os.cpu_count(),
               rolled=FLAGS.rolled and not FLAGS.reduced, save=save,
               conv_impl=FLAGS.conv_impl, phases=phases, mrc=mrc, aa=aa, **kw)
  save(result)
  _print_keys(result)


def _print_keys(result: dict) -> None:
  for k in REQUIRED_KEYS:
    if k in result:
      print(f"{k}: {result[k]:.4g}")


# The flags a phase's own process gets (all but --out and --phases).
_PASSED_FLAGS = ("reduced", "width", "batch_size", "num_steps", "reps", "threads",
                 "rolled", "conv_impl", "mrc_width", "mrc_examples",
                 "mrc_batch_size", "mrc_passes", "mrc_modules", "mrc_reps",
                 "mrc_checkpoint", "aa_images", "aa_batch_size", "aa_steps",
                 "aa_targets", "aa_queries", "aa_unroll")


def _die_with_parent() -> None:
  """In a phase's process (Linux): end when the benchmark process ends, so a
  killed benchmark leaves no phase running."""
  try:
    import ctypes
    import signal
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def _phases_in_subprocesses(phases, out_path: str) -> dict:
  """Each phase in a fresh process, results merged into one dict.

  One process per phase keeps their measurements independent: after the
  base phase (torch eager and JAX in one process, thread pools of both
  spinning), torchattacks' FAB in the same process ran two orders of
  magnitude slower than in a fresh one (2026-12-01, 2 cores; not
  understood beyond that), and each phase's peak memory is its own."""
  import subprocess
  from rift_jax import workdir
  from rift_jax.errors import UserError
  merged: dict = {}
  for phase in phases:
    part = f"{out_path}.{phase}.json"
    argv = [sys.executable, "-m", "launch.benchmark", f"--phases={phase}",
            f"--out={part}"]
    for name in _PASSED_FLAGS:
      value = FLAGS[name].value
      if isinstance(value, bool):
        argv.append(f"--{name}" if value else f"--no{name}")
      elif isinstance(value, list):
        argv.append(f"--{name}={','.join(value)}")
      else:
        argv.append(f"--{name}={value}")
    _log(f"phase {phase}: own process")
    rc = subprocess.call(argv, preexec_fn=_die_with_parent)
    if rc != 0:
      raise UserError(f"benchmark phase {phase!r} failed (exit {rc}); the "
                      f"phases before it are in {out_path}")
    result = workdir.read_json(part)
    os.remove(part)
    peaks = [merged.get("peak_rss_mb", 0.0), result.get("peak_rss_mb", 0.0)]
    merged = {**result, **merged, **{k: v for k, v in result.items()
                                     if k not in ("config", "phases")}}
    merged["peak_rss_mb"] = max(peaks)
    merged["phases"] = list(phases)
    workdir.write_json(out_path, merged)
  return merged


if __name__ == "__main__":
  common.run(main)
