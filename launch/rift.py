"""RiFT end to end: θ_AT → MRC → fine-tune → interpolate → test (resumable).

  python -m launch.rift --config=configs/quickstart.py --workdir=runs/demo
  python -m launch.rift --config=configs/paper.py:cifar10,resnet18 \
      --workdir=runs/c10 --config.rift.at_checkpoint=runs/c10_at

Writes results.json, report.md, mrc.png and interpolation.png into --workdir;
a re-run skips every finished stage (see rift_jax/pipeline.py).
"""
from launch import common

common.define_config_flags()
FLAGS = common.FLAGS


def main():
  from rift_jax import pipeline
  from rift_jax.errors import UserError
  common.maybe_initialize_distributed()
  if not FLAGS.workdir:
    raise UserError("--workdir is required (a directory for all stage outputs)")
  results = pipeline.run(FLAGS.config, FLAGS.workdir)
  at, rf = results["at"], results["rift"]

  def f(v):
    return "–" if v is None else f"{v:.2f}"
  print(f"module {results['modules']}, alpha {results['alpha']:.2f}")
  print(f"AT      clean {f(at['clean'])}  OOD {f(at.get('ood'))}  adv {f(at['adv'])}")
  print(f"AT+RiFT clean {f(rf['clean'])}  OOD {f(rf.get('ood'))}  adv {f(rf['adv'])}")
  print(f"report: {FLAGS.workdir}/report.md")


if __name__ == "__main__":
  common.run(main)
