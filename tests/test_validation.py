"""Every config block is checked before any work: one line naming the full
key, the bad value and what is allowed."""
import pytest

from rift_jax.experiments import validation
from rift_jax.errors import UserError
from tests.configs import tiny


def _with(**overrides):
  c = tiny.get_config()
  c.unlock()
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split("__")
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


@pytest.mark.parametrize("overrides,needle", [
    # data, model, eval
    ({"data__val_size": 0}, "data.val_size=0"),
    ({"data__source": "web"}, "data.source='web'"),
    ({"model__width": 0}, "model.width=0"),
    ({"model__conv_impl": "fft"}, "model.conv_impl='fft'"),
    ({"model__input_normalization": "imagenet"},
     "model.input_normalization='imagenet'"),
    ({"eval__batch_size": 0}, "eval.batch_size=0"),
    ({"eval__attack__norm": "l0"}, "eval.attack.norm='l0'"),
    # method blocks and the training attack
    ({"method": "trades", "trades__beta": -1.0}, "trades.beta=-1.0"),
    ({"method": "awp", "awp__base": "mart"}, "awp.base='mart'"),
    ({"method": "cure", "init_from": "/x", "cure__p": 100.0}, "cure.p=100.0"),
    ({"attack__bn_mode": "frozen"}, "attack.bn_mode='frozen'"),
    ({"attack__loss": "hinge"}, "attack.loss='hinge'"),
    # optim and its schedule
    ({"optim__momentum": 1.0}, "optim.momentum=1.0"),
    ({"optim__schedule": "step"}, "optim.schedule='step'"),
    ({"optim__schedule": "slow_start_fast_decay", "optim__decay_shape": "exponential",
      "optim__end_lr_factor": 0.0}, "optim.end_lr_factor=0.0"),
    # rift.mrc.*
    ({"rift__mrc__epsilon": -1.0}, "rift.mrc.epsilon=-1.0"),
    ({"rift__mrc__projection": "never"}, "rift.mrc.projection='never'"),
    ({"rift__mrc__prefix_cache_mb": -1.0}, "rift.mrc.prefix_cache_mb=-1.0"),
    ({"rift__mrc__num_examples": 10**6}, "rift.mrc.num_examples=1000000 exceeds"),
    ({"rift__mrc__attack__num_steps": 0}, "rift.mrc.attack.num_steps=0"),
    ({"rift__mrc__include": "layer[("}, "rift.mrc.include='layer[('"),
    # rift.finetune.*
    ({"rift__finetune__target": "best"}, "rift.finetune.target='best'"),
    ({"rift__finetune__candidates": "conv5x5"}, "rift.finetune.candidates='conv5x5'"),
    ({"rift__finetune__lr_sweep": (0.01, -1.0)}, "rift.finetune.lr_sweep entry=-1.0"),
    ({"rift__finetune__optim__lr": -0.1}, "rift.finetune.optim.lr=-0.1"),
    ({"rift__finetune__optim__epochs": 0}, "rift.finetune.optim.epochs=0"),
    # α, test attack, ablations, OOD
    ({"rift__alphas": (0.5, 1.0)}, "rift.alphas must contain 0.0"),
    ({"rift__alpha_chunk": -1}, "rift.alpha_chunk=-1"),
    ({"rift__ablations": ("everything",)}, "rift.ablations entry='everything'"),
    ({"rift__test_attack__epsilon": 2.0}, "rift.test_attack.epsilon=2.0"),
    ({"rift__ood__severities": (0, 1)}, "severity=0"),
    ({"rift__ood__source": "imagenet_c"}, "rift.ood.source='imagenet_c'"),
])
def test_every_block_is_checked(overrides, needle):
  with pytest.raises(UserError) as e:
    validation.validate_rift(_with(**overrides))
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_valid_config_passes_and_evaluate_block_is_checked():
  validation.validate_rift(tiny.get_config())
  from configs import evaluate
  c = evaluate.get_config("quickstart")
  plan = validation.validate_evaluate(c)
  assert [e.name for e in plan.entries] == ["clean", "pgd", "autoattack", "ood"]
  assert [a.name for a in plan.entries[2].attacks] == [
      "apgd_ce", "apgd_t", "fab_t", "square"]
  c.unlock()
  c.evaluate.suite = "clean,fgsm"
  with pytest.raises(UserError, match="evaluate.suite entry='fgsm'"):
    validation.validate_evaluate(c)
  c.evaluate.suite = "clean,ood"
  assert [e.name for e in validation.validate_evaluate(c).entries] == [
      "clean", "ood"]
  c.evaluate.ood.source = "generate"
  with pytest.raises(UserError, match="source='generate' is not allowed"):
    validation.validate_evaluate(c)
