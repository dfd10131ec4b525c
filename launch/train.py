"""Adversarial (or clean) training with evaluation, checkpoints and resume.

  python -m launch.train --config=configs/quickstart.py --workdir=runs/x \
      --config.optim.lr=0.05

Runs `rift_jax.train.train_and_evaluate`, then reports clean and PGD accuracy
of the best-by-validation checkpoint on the test split (`test_results.json`).
"""
import os

from launch import common

common.define_config_flags()
FLAGS = common.FLAGS


def main():
  import jax
  from rift_jax import attacks, evaluate, train
  from rift_jax.errors import UserError
  common.maybe_initialize_distributed()
  if not FLAGS.workdir:
    raise UserError("--workdir is required (a directory for checkpoints and results)")
  config = FLAGS.config
  result = train.train_and_evaluate(config, FLAGS.workdir)
  model = train.build_model(config, result.info)
  from rift_jax import models
  attack = attacks.PGDConfig.from_config(config.eval.attack, "eval.attack")
  evaluator = evaluate.Evaluator(models.ModelFns(model), evaluate.pgd_attack_fn(attack),
                                 int(config.eval.batch_size))
  test = evaluator(result.variables, result.dataset.test,
                   jax.random.PRNGKey(int(config.seed) + 1), desc="test")
  out = {"best_epoch": result.best_epoch, "test_clean": test["clean"],
         "test_adv": test["adv"], "n_test": test["n"],
         "attack": attack.__dict__}
  train.write_json(os.path.join(os.path.abspath(FLAGS.workdir), "test_results.json"),
                   out)
  print(f"test ({test['n']} images, best epoch {result.best_epoch}): clean "
        f"{test['clean']:.2f}%  PGD-{attack.num_steps} {test['adv']:.2f}%")


if __name__ == "__main__":
  common.run(main)
