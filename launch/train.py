"""Adversarial (or clean) training with evaluation, checkpoints and resume.

  python -m launch.train --config=configs/quickstart.py --workdir=runs/x \
      --config.optim.lr=0.05

Runs `rift_jax.training.train_and_evaluate`, then reports clean and PGD accuracy
of the best-by-validation checkpoint on the test split (`test_results.json`).
`--config.init_from` may name a launch.train workdir, a variables folder or a
PyTorch state_dict (.pth/.pt/.safetensors).
"""
import os

from launch import common

common.define_config_flags()
FLAGS = common.FLAGS


def main():
  import jax
  from rift_jax import attacks, evaluation, models, training, workdir
  from rift_jax.experiments import validation
  common.maybe_initialize_distributed()
  config = FLAGS.config
  validation.validate_train(config)
  workdir_ = common.workdir_flag("checkpoints and results")
  result = training.train_and_evaluate(config, workdir_)
  attack = attacks.PGDConfig.from_config(config.eval.attack, "eval.attack")
  evaluator = evaluation.Evaluator(
      models.ModelFns(models.build_model(config, result.info)),
      evaluation.pgd_attack_fn(attack), int(config.eval.batch_size))
  test = evaluator(result.variables, result.dataset.test,
                   jax.random.PRNGKey(int(config.seed) + 1), desc="test")
  workdir.write_json(os.path.join(workdir_, "test_results.json"), {
      "best_epoch": result.best_epoch, "test_clean": test["clean"],
      "test_adv": test["adv"], "n_test": test["n"], "attack": attack.__dict__})
  print(f"test ({test['n']} images, best epoch {result.best_epoch}): clean "
        f"{test['clean']:.2f}%  PGD-{attack.num_steps} {test['adv']:.2f}%")


if __name__ == "__main__":
  common.run(main)
