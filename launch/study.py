"""Seeds and studies: the RiFT pipeline once per seed, aggregated.

  python -m launch.study --config=configs/study.py --workdir=runs/study --seeds=0,1,2

Runs `launch.rift`'s pipeline for every seed into <workdir>/seed_<k>/, then the
investigation variants of `config.study` (rift_jax/study.py), and writes
study.json, study.md and study.png. Resumable after a kill at any point: run
the same command again. `--aggregate_only` re-reads finished runs.
"""
from absl import flags

from launch import common

common.define_config_flags("configs/study.py")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds, comma-separated.")
flags.DEFINE_bool("aggregate_only", False, "Only aggregate finished runs.")
FLAGS = common.FLAGS


def main():
  from rift_jax import study
  from rift_jax.errors import UserError
  common.maybe_initialize_distributed()
  try:
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError:
    raise UserError(f"--seeds={','.join(FLAGS.seeds)} must be integers, e.g. "
                    "--seeds=0,1,2") from None
  workdir = common.workdir_flag("the study")
  if FLAGS.aggregate_only:
    out = study.aggregate(workdir, seeds, FLAGS.config)
  else:
    out = study.run(FLAGS.config, workdir, seeds)
  print(study.markdown(out))


if __name__ == "__main__":
  common.run(main)
