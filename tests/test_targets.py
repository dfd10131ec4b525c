"""Which modules a fine-tuning target means (paper Table 3) on hand-made MRC
scores, and the 'conv3x3' candidate preset on hand-made params where the
lowest MRC overall falls on a 7×7 stem, a 1×1 shortcut and a 3-in/3-out
Dense head — none of which is a 3×3 convolution."""
import jax.numpy as jnp
import pytest

from rift_jax.rift import criticality, finetuning
from rift_jax.errors import UserError


def _params():
  k = lambda *shape: {"kernel": jnp.zeros(shape)}
  return {
      "conv1": k(7, 7, 1, 4),                                   # stem, 7×7
      "layer1_0": {"conv1": k(3, 3, 4, 4), "conv2": k(3, 3, 4, 4),
                   "shortcut_0": k(1, 1, 4, 4),
                   "bn1": {"scale": jnp.ones(4), "bias": jnp.zeros(4)}},
      "layer2_0": {"conv1": k(3, 3, 4, 8), "conv2": k(3, 3, 8, 8),
                   "shortcut_0": k(1, 1, 4, 8)},
      # A Dense kernel [in 3, out 3]: its shape starts with (3, 3) too.
      "linear": {"kernel": jnp.zeros((3, 3)), "bias": jnp.zeros(3)}}


MRC = {"conv1": 0.01, "layer1.0.shortcut.0": 0.02, "linear": 0.03,
       "layer2.0.conv1": 0.2, "layer1.0.conv2": 0.5, "layer1.0.conv1": 0.9,
       "layer2.0.conv2": 3.0, "layer2.0.shortcut.0": 9.0}
ALL = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.0.shortcut.0",
       "layer2.0.conv1", "layer2.0.conv2", "layer2.0.shortcut.0", "linear"]
# In network order, as `criticality.mrc` returns them.
SCORES = {n: criticality.MRCResult(mrc=MRC[n], adv_acc_drop=0.0, relative_norm=0.0,
                                   base_loss=0.0, base_acc=0.0)
          for n in ALL}
CONV3 = ["layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2"]


def test_candidate_presets():
  """'all': every kernel in network order; 'conv3x3': the 4-D (3, 3, ·, ·)
  kernels only — not the 7×7 stem, the 1×1 shortcuts or the Dense head."""
  assert finetuning.candidate_modules(_params(), "all") == ALL
  assert finetuning.candidate_modules(_params(), "conv3x3") == CONV3
  with pytest.raises(UserError, match="candidates='conv5x5'"):
    finetuning.candidate_modules(_params(), "conv5x5")
  # A 3×3 stem (CIFAR ResNets) is still the stem: left out.
  p = _params()
  p["conv1"] = {"kernel": jnp.zeros((3, 3, 1, 4))}
  assert finetuning.candidate_modules(p, "conv3x3") == CONV3


@pytest.mark.parametrize("candidates,target,k,want", [
    # Among all modules: the lowest MRC is the stem, the highest a shortcut.
    ("all", "non_robust_critical", 1, ["conv1"]),
    ("all", "topk", 3, ["conv1", "layer1.0.shortcut.0", "linear"]),
    ("all", "robust_critical", 1, ["layer2.0.shortcut.0"]),
    ("all", "all", 1, ALL),
    ("all", "last", 1, ["linear"]),
    # conv3x3: the lowest-MRC 3×3 conv although three lower ones exist.
    ("conv3x3", "non_robust_critical", 1, ["layer2.0.conv1"]),
    ("conv3x3", "topk", 2, ["layer2.0.conv1", "layer1.0.conv2"]),
    ("conv3x3", "topk", 10, ["layer2.0.conv1", "layer1.0.conv2",
                             "layer1.0.conv1", "layer2.0.conv2"]),
    ("conv3x3", "robust_critical", 1, ["layer2.0.conv2"]),
    # The paper's "all layers" / "last layer" ablations are the network's
    # layers, whatever the candidates of the MRC-ranked targets.
    ("conv3x3", "all", 1, ALL),
    ("conv3x3", "last", 1, ["linear"]),
])
def test_targets_on_hand_made_scores(candidates, target, k, want):
  cands = finetuning.candidate_modules(_params(), candidates)
  assert finetuning.target_modules(target, SCORES, cands, k) == want


def test_unscored_candidates_and_explicit_modules():
  """Candidates without a score are not ranked; no scored candidate is one
  clear error; target 'modules' returns the explicit list."""
  partial = {n: SCORES[n] for n in ("layer1.0.conv1", "layer1.0.conv2", "conv1")}
  assert finetuning.target_modules("non_robust_critical", partial, CONV3, 1) == [
      "layer1.0.conv2"]
  assert finetuning.target_modules("robust_critical", partial, CONV3, 1) == [
      "layer1.0.conv1"]
  assert finetuning.target_modules("topk", partial, CONV3, 5) == [
      "layer1.0.conv2", "layer1.0.conv1"]
  with pytest.raises(UserError, match="no MRC score for any candidate"):
    finetuning.target_modules("topk", {"conv1": SCORES["conv1"]}, CONV3, 1)
  assert finetuning.target_modules("modules", SCORES, ALL, 1,
                                   ["layer2.0.conv1", "linear"]) == [
                                       "layer2.0.conv1", "linear"]
  with pytest.raises(UserError, match="target='best'"):
    finetuning.target_modules("best", SCORES, ALL, 1)
