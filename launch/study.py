"""Seeds and studies: the RiFT pipeline once per seed, aggregated.

  python -m launch.study --config=configs/study.py --workdir=runs/study --seeds=0,1,2

Runs `launch.rift`'s pipeline for every seed into <workdir>/seed_<k>/, then the
investigation variants of `config.study` (rift_jax/experiments/study.py), copies each
finished seed into `config.study.results_dir`, and writes study.json,
study.md and study.png there. Resumable after a kill at any point: run the
same command again. `--aggregate_only` rebuilds the tables from the
finished seeds alone.
"""
from absl import flags

from launch import common

common.define_config_flags("configs/study.py")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds, comma-separated.")
flags.DEFINE_bool("aggregate_only", False, "Only aggregate finished runs.")
flags.DEFINE_string("readme", "", "Also write the study's tables into this "
                    "file between its '<!-- study:begin -->' and "
                    "'<!-- study:end -->' lines (README.md).")
FLAGS = common.FLAGS


def main():
  from rift_jax.experiments import study
  from rift_jax.errors import UserError
  common.maybe_initialize_distributed()
  try:
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError:
    raise UserError(f"--seeds={','.join(FLAGS.seeds)} must be integers, e.g. "
                    "--seeds=0,1,2") from None
  workdir = common.workdir_flag("the study")
  if FLAGS.aggregate_only:
    # From the committed seeds (study.results_dir) when the config keeps
    # them, else from the workdir; a seed that has not finished is left out.
    where = FLAGS.config.study.get("results_dir") or workdir
    done = [s for s in seeds if s in study.finished_seeds(where)]
    if not done:
      raise UserError(f"no finished seed among --seeds={','.join(map(str, seeds))} "
                      f"in {where!r}")
    out = study.aggregate(where, done, FLAGS.config)
  else:
    out = study.run(FLAGS.config, workdir, seeds)
  if FLAGS.readme:
    study.write_into(FLAGS.readme, study.markdown(out, level=3))
  print(study.markdown(out))


if __name__ == "__main__":
  common.run(main)
