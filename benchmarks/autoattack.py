"""Standard AutoAttack: ours against torchattacks', attack by attack.

  python -m benchmarks.autoattack --out=aa.json --aa_checkpoint=ROBUST_MODEL

APGD-CE → APGD-T → FAB-T → Square, each on the examples still robust, L∞
ε 0.1, on the first `--aa_images` Fashion-MNIST test images in batches of
`--aa_batch_size`, against a ResNet-18 of width `--aa_width` (weights from
`--aa_checkpoint`, else a seeded random init; the attacks only have work on
a robust model, e.g. tests/fixtures/fmnist_resnet18_w4_pgdat.safetensors),
at the authors' full budgets by default: `--aa_steps` 100 iterations,
`--aa_targets` 9 target classes, `--aa_queries` 5,000 Square queries, no
rescaling of Square's p schedule.
- Ours: `rift_jax.evaluation.autoattack.run_suite` of
  `autoattack_suite('standard', ...)`, run twice in one process: the first
  run compiles (JAX's compile spans: `autoattack_compile_s`), the second is
  the time after compilation (`--noaa_compiled_rerun`: the first run only,
  what a user's one evaluation costs; for full budgets on many images).
  `--cpu_devices=2` shards each batch over two XLA:CPU devices.
- torchattacks: `torchattacks.AutoAttack(model, norm='Linf', eps,
  version='standard', n_classes=10, seed=0)` on batches of the same size,
  once, with its sub-attacks given the same budgets (its own defaults are 10
  iterations and a rescaled Square schedule), each sub-attack timed, in a
  spawned process of its own (with the same PyTorch thread count).
Both sides' robust accuracy after each attack, seconds per attack, and a
side-by-side table in the Markdown output.
Why the numbers are what they are: docs/performance.md.
"""
from __future__ import annotations

import time

from absl import flags

from benchmarks import common

flags.adopt_module_key_flags(common)
flags.DEFINE_integer("aa_width", 4, "ResNet-18 width (of --aa_checkpoint's "
                     "model when given).", lower_bound=1)
flags.DEFINE_string("aa_checkpoint", "", common.CHECKPOINT_HELP)
common.file_or_empty("aa_checkpoint")
flags.DEFINE_integer("aa_images", 500, "Fashion-MNIST test images.", lower_bound=1)
flags.DEFINE_integer("aa_batch_size", 250, "Images per batch (both sides).",
                     lower_bound=1)
flags.DEFINE_integer("aa_steps", 100, "APGD / APGD-T / FAB-T iterations (the "
                     "authors' standard: 100).", lower_bound=1)
flags.DEFINE_integer("aa_targets", 9, "Target classes of APGD-T and FAB-T "
                     "(standard: 9).", lower_bound=1)
flags.DEFINE_integer("aa_queries", 5000, "Square queries (standard: 5000).",
                     lower_bound=1)
flags.DEFINE_bool("aa_compiled_rerun", True, "Run our suite a second time, "
                  "compiled (the *_seconds keys); without it, the first run "
                  "(compile included) alone.")
flags.DEFINE_string("aa_unroll", "auto", "Our APGD loop form: auto (unrolled "
                    "on CPU) | true | false | an unroll factor.")
flags.register_validator(
    "aa_unroll", lambda t: t.lower() in ("auto", "true", "false")
    or (t.isdigit() and int(t) >= 1),
    message="expected auto, true, false or a positive integer")
FLAGS = flags.FLAGS

ATTACKS = ("apgd_ce", "apgd_t", "fab_t", "square")   # torchattacks' order


def _unroll(text: str):
  named = {"auto": "auto", "true": True, "false": False}
  return named[text.lower()] if text.lower() in named else int(text)


def ours(twins, split, eps: float, clock) -> list[tuple[float, float, dict]]:
  """Our suite, once or twice (`--aa_compiled_rerun`): per run (seconds,
  compile seconds, run_suite's result)."""
  import jax
  from rift_jax.evaluation import autoattack
  suite = autoattack.autoattack_suite(
      "standard", eps, num_steps=FLAGS.aa_steps,
      num_target_classes=FLAGS.aa_targets, square_queries=FLAGS.aa_queries,
      unroll=_unroll(FLAGS.aa_unroll))
  runs = []
  labels = ("first run (compiles)", "timed run (compiled)")
  for label in labels[:2 if FLAGS.aa_compiled_rerun else 1]:
    common.log(f"AutoAttack ours, {label}")
    t0 = time.time()
    res = autoattack.run_suite(twins.fns, twins.variables, split, suite,
                               FLAGS.aa_batch_size, jax.random.PRNGKey(0),
                               progress=False)
    t1 = time.time()
    runs.append((t1 - t0, clock.seconds(t0, t1), res))
    common.log(f"  {t1 - t0:.1f} s (compile {runs[-1][1]:.1f} s), per attack "
               f"{res['seconds']}, robust {res['robust']}")
  return runs


def theirs(tmodel, images, labels, eps: float, steps: int, targets: int,
           queries: int, batch: int) -> tuple[float, dict, dict, float]:
  """torchattacks' suite with the authors' budgets on the uint8 NHWC
  `images`: (seconds, seconds per attack, robust % after each attack,
  robust % clean-correct and still correct after the suite)."""
  import numpy as np
  import torch
  import torchattacks
  common.log("AutoAttack torchattacks")
  atk = torchattacks.AutoAttack(tmodel, norm="Linf", eps=eps, version="standard",
                                n_classes=common.NUM_CLASSES, seed=0)
  multi = atk._autoattack   # MultiAttack over APGD, APGDT, FAB (targeted), Square
  seconds = dict.fromkeys(ATTACKS, 0.0)
  for name, a in zip(ATTACKS, multi.attacks):
    if name == "square":
      a.n_queries, a.rescale_schedule = queries, False
    else:
      a.steps = steps
    if name in ("apgd_t", "fab_t"):
      a.n_target_classes = targets

    def timed_forward(*args, _f=a.forward, _n=name, **kw):
      t = time.perf_counter()
      r = _f(*args, **kw)
      seconds[_n] += time.perf_counter() - t
      return r
    a.forward = timed_forward
  # MultiAttack counts the images still correct after each attack.
  multi._multi_atk_records = [0.0] * (1 + len(ATTACKS))
  multi._accumulate_multi_atk_records = True
  torch.manual_seed(0)
  # uint8 -> [0, 1] as `rift_jax.data.to_float`, which would import JAX here.
  x = common.nchw(images.astype(np.float32) / 255.0)
  y = torch.from_numpy(labels.astype(np.int64))
  adv = []
  t0 = time.perf_counter()
  for i in range(0, len(y), batch):
    adv.append(atk(x[i:i + batch], y[i:i + batch]))
  total = time.perf_counter() - t0
  with torch.no_grad():
    robust = ((tmodel(torch.cat(adv)).argmax(1) == y)
              & (tmodel(x).argmax(1) == y)).numpy()
  after_each = {k: 100.0 * c / len(y)
                for k, c in zip(ATTACKS, multi._multi_atk_records[1:])}
  common.log(f"  {total:.1f} s, per attack "
             f"{ {k: round(v, 2) for k, v in seconds.items()} }, robust "
             f"{after_each}")
  return total, seconds, after_each, 100.0 * float(robust.mean())


def _theirs_in_fresh_process(state_dict: dict, width: int, threads: int,
                             image_shape: tuple, mean: tuple, std: tuple,
                             *args) -> tuple[float, dict, dict, float]:
  """`theirs` in a process that has not loaded JAX or jaxlib (so the data
  set's image shape and normalisation come as plain tuples): torchattacks'
  FAB in the process that ran our suite ran far slower and, with one
  thread, aborted (docs/performance.md). So the PyTorch side gets a process
  of its own, which imports nothing that loads jaxlib."""
  import torch
  torch.set_num_threads(threads)
  tmodel = common.torch_resnet18(width, image_shape, mean, std, state_dict)
  return theirs(tmodel, *args)


def theirs_isolated(twins, split, eps: float) -> tuple[float, dict, dict, float]:
  """`theirs` on the twin's weights, run in a fresh (spawned) process. A
  child that dies (a crash inside PyTorch) raises `ChildProcessError`
  rather than leaving this process waiting for it (as a
  `multiprocessing.Pool` would)."""
  import multiprocessing
  from concurrent import futures
  import torch
  from rift_jax import data
  info = data.INFO["fashion_mnist"]
  with futures.ProcessPoolExecutor(
      1, mp_context=multiprocessing.get_context("spawn")) as pool:
    job = pool.submit(
        _theirs_in_fresh_process, twins.torch.state_dict(), FLAGS.aa_width,
        torch.get_num_threads(), tuple(info.image_shape), tuple(info.mean),
        tuple(info.std), split.images, split.labels, eps, FLAGS.aa_steps,
        FLAGS.aa_targets, FLAGS.aa_queries, FLAGS.aa_batch_size)
    try:
      return job.result()
    except futures.process.BrokenProcessPool as e:
      raise ChildProcessError(
          "the torchattacks process died before it finished (ours' numbers "
          f"are saved in --out); {e}") from None


def measure(out: common.Record) -> None:
  import jax
  from rift_jax import data
  eps, n, batch = common.FMNIST_EPSILON, FLAGS.aa_images, FLAGS.aa_batch_size
  common.log(f"AutoAttack (standard) on {n} images: steps {FLAGS.aa_steps}, "
             f"targets {FLAGS.aa_targets}, Square queries {FLAGS.aa_queries}")
  clock = common.CompileClock()
  twins = common.fmnist_twins(FLAGS.aa_width, FLAGS.aa_checkpoint)
  split = common.fmnist_test(n)
  out["autoattack_config"] = dict(
      model=f"resnet18 width {FLAGS.aa_width}", weights=twins.source,
      data="fashion_mnist test", num_images=n, batch_size=batch, norm="linf",
      epsilon=eps, version="standard", steps=FLAGS.aa_steps,
      target_classes=FLAGS.aa_targets, square_queries=FLAGS.aa_queries,
      square_rescale_schedule=False, apgd_unroll=FLAGS.aa_unroll,
      compiled_rerun=FLAGS.aa_compiled_rerun, devices=jax.device_count(),
      torch=("torchattacks.AutoAttack(model, norm='Linf', eps, version="
             "'standard', n_classes=10, seed=0), sub-attacks set to these "
             "budgets (its own defaults: 10 iterations, rescaled Square "
             "schedule)"))
  out["autoattack_logits_max_abs_diff_jax_vs_torch"] = common.logits_max_abs_diff(
      twins, data.to_float(split.images[:batch]))

  runs = ours(twins, split, eps, clock)
  (first_s, compile_s, first), (ours_s, _, res) = runs[0], runs[-1]
  out["autoattack_first_run_seconds"] = first_s
  out["autoattack_first_run_seconds_per_attack"] = first["seconds"]
  out["autoattack_img_per_s_with_compile"] = n / first_s
  out["autoattack_compile_s"] = compile_s
  if len(runs) == 2:
    out["autoattack_seconds"] = ours_s
    out["autoattack_seconds_per_attack"] = res["seconds"]
    out["autoattack_img_per_s"] = n / ours_s
    out["autoattack_compile_s_per_attack"] = {
        k: max(first["seconds"][k] - s, 0.0) for k, s in res["seconds"].items()}
    out["autoattack_runs_agree"] = bool(first["robust"] == res["robust"])
  out["autoattack_clean_acc"] = res["clean"]
  out["autoattack_robust_acc_after_each"] = res["robust"]
  out["autoattack_robust_acc"] = list(res["robust"].values())[-1]
  out["autoattack_warnings"] = res["warnings"]
  out.save()

  torch_s, per_attack, after_each, torch_robust = theirs_isolated(twins, split, eps)
  out["autoattack_torch_seconds"] = torch_s
  out["autoattack_torch_seconds_per_attack"] = per_attack
  out["autoattack_torch_img_per_s"] = n / torch_s
  out["autoattack_speedup_vs_torch_with_compile"] = torch_s / first_s
  out["autoattack_speedup_vs_torch_per_attack_with_compile"] = {
      k: per_attack[k] / s if s > 0 else None
      for k, s in first["seconds"].items()}
  if len(runs) == 2:
    out["autoattack_speedup_vs_torch"] = torch_s / ours_s
    out["autoattack_speedup_vs_torch_per_attack"] = {
        k: per_attack[k] / s if s > 0 else None for k, s in res["seconds"].items()}
  out["autoattack_torch_robust_acc_after_each"] = after_each
  out["autoattack_torch_robust_acc"] = torch_robust
  out["autoattack_robust_acc_diff_pp"] = out["autoattack_robust_acc"] - torch_robust
  out["autoattack_setting"] = (
      "standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square on the survivors), "
      f"{n} Fashion-MNIST test images, L-inf eps {eps}, batch {batch}: "
      "rift_jax.evaluation.autoattack.run_suite after compilation (with compile: "
      "*_first_run_* and *_with_compile; --noaa_compiled_rerun: those alone) "
      "vs torchattacks.AutoAttack with the same budgets")


if __name__ == "__main__":
  common.main("autoattack", measure)
