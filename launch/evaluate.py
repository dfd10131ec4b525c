"""Robustness evaluation of a checkpoint: clean, PGD, APGD, AutoAttack, OOD.

  python -m launch.evaluate --config=configs/evaluate.py:quickstart \
      --checkpoint=runs/demo/at --workdir=runs/demo/eval
  python -m launch.evaluate --config=configs/evaluate.py:quickstart \
      --checkpoint=model.pth --workdir=/tmp/eval \
      --config.evaluate.suite=clean,apgd_ce --config.evaluate.num_examples=500

--checkpoint: a PyTorch state_dict (.pth/.pt/.safetensors, for the config's
model; `model.input_normalization` says how it expects its inputs), a
launch/train workdir (its `checkpoints/best`) or a variables folder.
Writes `eval_results.json`, `eval_records.npz` (per-example correctness) and
`eval_report.md` into --workdir (rift_jax/evaluation/suite.py), and keeps
each attack entry's state in <workdir>/suite_state/ after every batch: run
the same command again after a kill and it continues where it stopped.
On a CPU, `--config.evaluate.cpu_devices=2` (one XLA device per core of a
2-core machine) shards each batch over the cores: the same numbers (speed:
docs/performance.md).
"""
import os

from absl import flags

from launch import common

common.define_config_flags("configs/evaluate.py")
flags.DEFINE_string("checkpoint", None, "PyTorch file, train workdir or "
                    "variables folder.")
FLAGS = common.FLAGS


def main():
  from rift_jax import data, models, sharding, workdir
  from rift_jax.evaluation import records, suite
  from rift_jax.experiments import robustness, validation
  from rift_jax.models import checkpoint
  common.maybe_initialize_distributed()
  config = FLAGS.config
  plan = validation.validate_evaluate(config)
  sharding.use_cpu_devices(int(config.evaluate.cpu_devices),
                           "evaluate.cpu_devices")
  path = FLAGS.checkpoint
  validation.check_checkpoint(config, path)
  # Created (and probed for writing) before any work: results are never lost.
  out = workdir.prepare(common.workdir_flag("the results"))
  dataset = data.load(config.data)
  model = models.build_model(config, dataset.info)
  variables, source = checkpoint.load_model_variables(
      path, model, dataset.info, models.model_meta(config, dataset.info))
  ev = config.evaluate
  split = getattr(dataset, ev.split)
  if int(ev.num_examples):
    split = split.take(slice(0, int(ev.num_examples)))
  results, recs = robustness.evaluate(config, plan, models.ModelFns(model),
                                      variables, split, workdir=out,
                                      source=source)
  workdir.write_json(os.path.join(out, "eval_results.json"), results)
  records.save(os.path.join(out, "eval_records.npz"), recs)
  workdir.write_text(os.path.join(out, "eval_report.md"), suite.markdown(results))
  print(f"wrote {out}/eval_results.json, eval_records.npz and eval_report.md")


if __name__ == "__main__":
  common.run(main)
