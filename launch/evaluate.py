"""Robustness evaluation of a checkpoint: clean, PGD, APGD, AutoAttack-style, OOD.

  python -m launch.evaluate --config=configs/evaluate.py:quickstart \
      --checkpoint=runs/demo/at --workdir=runs/demo/eval
  python -m launch.evaluate --config=configs/evaluate.py:quickstart \
      --torch_checkpoint=model.pth --workdir=/tmp/eval \
      --config.evaluate.suite=clean,apgd_ce --config.evaluate.num_examples=500

--checkpoint: a variables folder (`checkpoint.save_variables`) or a
launch/train workdir (its `checkpoints/best` is used). --torch_checkpoint: a
PyTorch state_dict (.pth/.pt/.safetensors) for the config's model
(`rift_jax/convert.py`). Writes `eval_results.json` and `eval_report.md` into
--workdir. Every attack after the first runs only on the examples still
robust; robust accuracy counts an example only if every attack (and every
restart) of that entry failed on it.
"""
import dataclasses
import os
import time

from absl import flags

from launch import common

common.define_config_flags("configs/evaluate.py")
flags.DEFINE_string("checkpoint", None, "Variables folder or train workdir.")
flags.DEFINE_string("torch_checkpoint", None,
                    "PyTorch state_dict file (.pth/.pt/.safetensors).")
FLAGS = common.FLAGS

SUITE = ("clean", "pgd", "pgd_cw", "apgd_ce", "apgd_dlr", "apgd_t",
         "autoattack", "ood")
OOD_SOURCES = ("generate", "cifar10_c", "cifar100_c", "tiny_imagenet_c")


def parse_suite(text: str) -> list[str]:
  from rift_jax.errors import UserError, check_choice
  entries = [s.strip() for s in str(text).split(",") if s.strip()]
  if not entries:
    raise UserError("evaluate.suite is empty; choose from: " + ", ".join(SUITE))
  for e in entries:
    check_choice("evaluate.suite entry", e, SUITE)
  return entries


def attacks_for(entry: str, ev) -> list:
  """The attacks one suite entry runs, in order (config -> Attack list)."""
  from rift_jax import attacks, autoattack
  from rift_jax.errors import check_range
  check_range("evaluate.epsilon", float(ev.epsilon), 0.0, 1.0, low_open=True)
  eps, norm = float(ev.epsilon), str(ev.norm)
  if entry in ("pgd", "pgd_cw"):
    p = ev.pgd
    cfg = attacks.PGDConfig(
        epsilon=eps, step_size=float(p.step_size), num_steps=int(p.num_steps),
        norm=norm, loss="ce" if entry == "pgd" else "margin",
        restarts=int(p.restarts), unroll=ev.apgd.unroll).validate(
            f"evaluate.{entry}")
    return [autoattack.Attack(entry, cfg)]
  a = ev.apgd
  kw = dict(epsilon=eps, norm=norm, num_steps=int(a.num_steps),
            restarts=int(a.restarts), unroll=a.unroll)
  if entry == "autoattack":
    return autoattack.standard_attacks(
        num_target_classes=int(a.num_target_classes), **kw)
  loss = {"apgd_ce": "ce", "apgd_dlr": "dlr", "apgd_t": "dlr_targeted"}[entry]
  cfg = autoattack.APGDConfig(loss=loss, num_target_classes=int(
      a.num_target_classes), **kw).validate(f"evaluate.{entry}")
  return [autoattack.Attack(entry, cfg)]


def describe(entry: str, ev) -> str:
  """A row label naming the attack settings."""
  eps = f"ε={float(ev.epsilon):.4g} {ev.norm}"
  p, a = ev.pgd, ev.apgd
  if entry in ("pgd", "pgd_cw"):
    loss = "CE" if entry == "pgd" else "CW margin"
    return (f"PGD-{p.num_steps}×{p.restarts} ({loss}, step {float(p.step_size):.4g}, "
            f"{eps})")
  steps = f"{a.num_steps} steps, {a.restarts} restart(s)"
  if entry == "apgd_t" or entry == "autoattack":
    steps += f", {a.num_target_classes} targets"
  name = {"apgd_ce": "APGD-CE", "apgd_dlr": "APGD-DLR", "apgd_t": "APGD-T",
          "autoattack": "AutoAttack-style APGD-CE → APGD-T"}[entry]
  return f"{name} ({steps}, {eps})"


def load_variables(config, model, info):
  """Variables from --checkpoint (ours) or --torch_checkpoint (PyTorch)."""
  from rift_jax import checkpoint, convert, train
  from rift_jax.errors import UserError
  if bool(FLAGS.checkpoint) == bool(FLAGS.torch_checkpoint):
    raise UserError("give exactly one of --checkpoint (our variables folder "
                    "or train workdir) and --torch_checkpoint (a .pth/.pt/"
                    ".safetensors state_dict)")
  if FLAGS.torch_checkpoint:
    return convert.import_checkpoint(FLAGS.torch_checkpoint, model,
                                     info.image_shape), FLAGS.torch_checkpoint
  path = os.path.abspath(os.path.expanduser(FLAGS.checkpoint))
  best = os.path.join(path, "checkpoints", "best")
  path = best if os.path.isdir(best) else path
  target = convert.variable_shapes(model, info.image_shape)
  variables, _ = checkpoint.load_variables(path, target,
                                           train.model_meta(config, info))
  return variables, path


def check_ood(ev) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """Validates the OOD block: (corruption names, severities)."""
  from rift_jax import corruptions
  from rift_jax.errors import check_choice
  o = ev.ood
  check_choice("evaluate.ood.source", o.source, OOD_SOURCES)
  names = corruptions.resolve_names(o.corruptions)
  sev = tuple(int(v) for v in o.severities)
  for v in sev:
    check_choice("evaluate.ood.severities entry", v, corruptions.SEVERITIES)
  return names, sev


def ood_sets(ev, split, config, workdir):
  """{corruption: {severity: Split}} and the number of generated images."""
  from rift_jax import corruptions
  o = ev.ood
  names, sev = check_ood(ev)
  root = os.path.expanduser(o.root or "")
  if o.source == "generate":
    cache = o.cache_dir or os.path.join(workdir, "corruption_cache")
    n = int(o.max_images) or None
    return corruptions.generate(split, names, sev, max_images=n,
                                seed=int(ev.seed), cache_dir=cache), n
  if o.source == "cifar10_c":
    sets = corruptions.load_cifar10_c(root or config.data.data_dir, names, sev)
  elif o.source == "cifar100_c":
    sets = corruptions.load_cifar100_c(root, names, sev)
  else:
    sets = corruptions.load_tiny_imagenet_c(root, names, sev)
  return sets, None


def markdown(results: dict) -> str:
  lines = [f"# Robustness evaluation", "",
           f"checkpoint: `{results['checkpoint']}`  ",
           f"split: {results['split']} ({results['n']} images)", "",
           "| evaluation | accuracy (%) |", "|---|---|",
           f"| clean | {results['clean']:.2f} |"]
  for entry, r in results["attacks"].items():
    steps = " → ".join(f"{k} {v:.2f}" for k, v in r["robust"].items())
    cell = f"{r['final']:.2f}" + (f" ({steps})" if len(r["robust"]) > 1 else "")
    lines.append(f"| {r['label']} | {cell} |")
  o = results.get("ood")
  if o:
    lines.append(f"| OOD mean ({o['summary']['set'].split(':')[0]}, severities "
                 f"{', '.join(map(str, o['summary']['severities']))}, "
                 f"{o['n']} images) | {o['summary']['mean']:.2f} |")
    s = o["summary"]
    sevs = s["severities"]
    lines += ["", f"## OOD: {o['source']}; averaged set: {s['set']}", "",
              f"clean accuracy on the same {o['n']} images: {o['clean']:.2f}%", "",
              "| corruption | family | " + " | ".join(f"s{v}" for v in sevs)
              + " | mean |", "|---|---|" + "---|" * (len(sevs) + 1)]
    from rift_jax import corruptions
    for name, by in o["accuracy"].items():
      lines.append(f"| {name} | {corruptions.FAMILIES.get(name, '')} | "
                   + " | ".join(f"{by[v]:.2f}" for v in sevs)
                   + f" | {s['per_corruption'][name]:.2f} |")
    lines += ["", "| family | mean |", "|---|---|"]
    lines += [f"| {f} | {v:.2f} |" for f, v in s["per_family"].items()]
    lines += ["", "| severity | mean |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in s["per_severity"].items()]
  return "\n".join(lines) + "\n"


def main():
  import jax
  from rift_jax import autoattack, corruptions, data, evaluate, models, train
  from rift_jax.errors import UserError, check_choice, check_range
  common.maybe_initialize_distributed()
  if not FLAGS.workdir:
    raise UserError("--workdir is required (a directory for the results)")
  config = FLAGS.config
  if "evaluate" not in config:
    raise UserError("the config has no 'evaluate' block; use "
                    "--config=configs/evaluate.py:<training config name>")
  ev = config.evaluate
  entries = parse_suite(ev.suite)
  check_choice("evaluate.split", ev.split, ("test", "val"))
  check_range("evaluate.num_examples", int(ev.num_examples), 0)
  for e in entries:  # validate every entry before any work
    if e not in ("clean", "ood"):
      attacks_for(e, ev)
  if "ood" in entries:
    check_ood(ev)
  workdir = train.prepare_workdir(FLAGS.workdir)
  dataset = data.load(config.data)
  info = dataset.info
  if FLAGS.torch_checkpoint and not ev.torch_normalized_inputs:
    info = dataclasses.replace(info, mean=(0.0,), std=(1.0,))
  model = train.build_model(config, info)
  fns = models.ModelFns(model)
  variables, source = load_variables(config, model, info)
  split = getattr(dataset, ev.split)
  if int(ev.num_examples):
    split = split.take(slice(0, int(ev.num_examples)))
  ood = None
  if "ood" in entries and ev.ood.source != "generate":
    ood = ood_sets(ev, split, config, workdir)  # a missing set fails early
  batch_size = int(ev.batch_size)
  rng = jax.random.PRNGKey(int(ev.seed))
  results = {"checkpoint": source, "split": ev.split, "n": len(split),
             "attacks": {}, "seconds": {}, "config": config.to_dict()}
  clean = autoattack.run_suite(fns, variables, split, [], batch_size, rng,
                               progress=False)
  results["clean"] = clean["clean"]
  print(f"clean: {clean['clean']:.2f}% of {len(split)}")
  for k, entry in enumerate(entries):
    t0 = time.time()
    if entry == "clean":
      continue
    if entry == "ood":
      sets, n = ood or ood_sets(ev, split, config, workdir)
      evaluator = evaluate.Evaluator(fns, None, batch_size)
      key = jax.random.fold_in(rng, k)
      acc = corruptions.accuracy_table(
          sets, lambda s: evaluator(variables, s, key)["clean"])
      sub = split if not n else split.take(slice(0, n))
      results["ood"] = {
          "source": ev.ood.source, "n": len(next(iter(next(iter(
              sets.values())).values()))),
          "clean": evaluator(variables, sub, key)["clean"],
          "accuracy": acc, "summary": corruptions.summarize(acc)}
      print(f"OOD mean ({results['ood']['summary']['set'].split(':')[0]}): "
            f"{results['ood']['summary']['mean']:.2f}%")
    else:
      r = autoattack.run_suite(fns, variables, split, attacks_for(entry, ev),
                               batch_size, jax.random.fold_in(rng, k))
      final = list(r["robust"].values())[-1]
      results["attacks"][entry] = {"label": describe(entry, ev),
                                   "robust": r["robust"], "final": final}
      print(f"{describe(entry, ev)}: {final:.2f}%")
    results["seconds"][entry] = round(time.time() - t0, 1)
  train.write_json(os.path.join(workdir, "eval_results.json"), results)
  with open(os.path.join(workdir, "eval_report.md"), "w") as f:
    f.write(markdown(results))
  print(f"wrote {workdir}/eval_results.json and eval_report.md")


if __name__ == "__main__":
  common.run(main)
