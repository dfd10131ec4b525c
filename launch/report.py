"""The method table from finished workdirs (like RiFT's Table 2), as markdown.

  python -m launch.report --workdirs='runs/methods/*' --out=runs/methods/table.md

Each workdir is a RiFT run (`launch/rift.py`: base vs base+RiFT with paired
intervals) or a training run (`launch/train.py`, plus `launch/evaluate.py`'s
AutoAttack number when there); see `rift_jax.evaluation.report.collect`. Every row gets
NRR = 2·Nat·Rob/(Nat + Rob), the CURE paper's trade-off score.
"""
from absl import flags

from launch import common

flags.DEFINE_list("workdirs", None, "Workdirs (globs allowed), comma-separated.")
flags.DEFINE_string("out", None, "Also write the markdown here.")
FLAGS = common.FLAGS


def main():
  from rift_jax import workdir
  from rift_jax.evaluation import report
  from rift_jax.errors import UserError
  if not FLAGS.workdirs:
    raise UserError("--workdirs is required (comma-separated, globs allowed)")
  text = report.method_table(report.collect_all(FLAGS.workdirs))
  print(text)
  if FLAGS.out:
    workdir.write_text(FLAGS.out, text)


if __name__ == "__main__":
  common.run(main)
