"""RiFT end to end: θ_AT → MRC → fine-tune → interpolate → test (resumable).

  python -m launch.rift --config=configs/quickstart.py --workdir=runs/demo
  python -m launch.rift --config=configs/paper.py:cifar10,resnet18 \
      --workdir=runs/c10 --config.rift.at_checkpoint=runs/c10_at

Writes results.json, records.npz, report.md, mrc.png and interpolation.png
into --workdir; a re-run skips every finished stage (rift_jax/experiments/pipeline.py).
Every config value is checked before any work.
"""
from launch import common

common.define_config_flags()
FLAGS = common.FLAGS


def main():
  from rift_jax.evaluation import report
  from rift_jax.experiments import pipeline
  common.maybe_initialize_distributed()
  workdir = common.workdir_flag("all stage outputs")
  results = pipeline.run(FLAGS.config, workdir)
  at, rf, p = results["at"], results["rift"], results.get("paired", {})
  print(f"module {results['modules']}, alpha {results['alpha']:.2f}")
  for k, name in (("clean", "clean"), ("ood", "OOD"), ("adv", "adv")):
    if at.get(k) is not None:
      print(f"{name:5s} AT {at[k]:6.2f}  AT+RiFT {rf[k]:6.2f}  "
            f"Δ {report.delta_cell(p.get(k))}  {report.verdict_cell(p.get(k))}")
  print(f"report: {workdir}/report.md")


if __name__ == "__main__":
  common.run(main)
