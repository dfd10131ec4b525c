"""AutoAttack's sanity checks (`rift_jax.evaluation.checks`): each one on
hand-made numbers, and each tripped inside `autoattack.run_suite` by a model
built to trip it — and silent on an ordinary model."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rift_jax import data
from rift_jax.attacks import apgd, fab
from rift_jax.evaluation import autoattack, checks


def test_range_output_on_hand_made_rows():
  probs = np.array([[0.2, 0.8], [1.0, 0.0]])
  assert "probabilities" in checks.range_output(probs)
  assert checks.range_output(np.array([[2.0, -1.0], [0.3, 0.1]])) is None
  # In [0, 1] but not summing to 1 (e.g. sigmoid outputs): not flagged.
  assert checks.range_output(np.array([[0.2, 0.3], [0.5, 0.1]])) is None


def test_zero_gradients_counts_exact_zeros():
  assert checks.zero_gradients(np.array([0.5, 1e-12, 3.0])) is None
  assert checks.zero_gradients(np.array([0.0, 2.0, 0.0])).startswith("2 of 3")


def test_n_classes_on_hand_made_suites():
  a = lambda name, **kw: autoattack.Attack(name, apgd.APGDConfig(**kw))
  assert checks.n_classes([a("apgd_t", loss="dlr_targeted",
                             num_target_classes=9)], 10) == []
  (w,) = checks.n_classes([a("apgd_t", loss="dlr_targeted",
                             num_target_classes=9)], 5)
  assert "9 target classes asked, only 4 possible" in w
  assert "DLR loss is not defined" in checks.n_classes(
      [a("apgd_dlr", loss="dlr")], 2)[0]
  assert "targeted DLR" in checks.n_classes(
      [a("apgd_t", loss="dlr_targeted")], 3)[0]
  fab_t = autoattack.Attack("fab_t", fab.FABConfig(targeted=True,
                                                   num_target_classes=9))
  assert "only 5 possible" in checks.n_classes([fab_t], 6)[0]
  assert checks.n_classes([a("apgd_ce")], 2) == []     # CE needs no classes


@dataclasses.dataclass(frozen=True)
class _Linear:
  """A linear model on flattened images; `head` post-processes the logits
  (softmax: probabilities; the input pass: `grad` mode)."""
  head: str = "logits"
  classes: int = 5

  def logits(self, variables, x, train=False):
    del train
    if self.head == "round_input":   # piecewise constant: zero gradients
      x = jnp.round(x)
    z = x.reshape(x.shape[0], -1) @ variables["w"]
    return jax.nn.softmax(z) if self.head == "softmax" else z


def _split(n=16):
  rng = np.random.default_rng(0)
  return data.Split(rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8),
                    rng.integers(0, 5, n).astype(np.int32))


@pytest.mark.parametrize("head,expect", [
    ("logits", None), ("softmax", "look like probabilities"),
    ("round_input", "exactly zero input gradient")])
def test_run_suite_reports_each_check(head, expect):
  w = jax.random.normal(jax.random.PRNGKey(0), (16, 5))
  res = autoattack.run_suite(_Linear(head), {"w": w}, _split(), [],
                             batch_size=16, rng=jax.random.PRNGKey(1),
                             progress=False)
  if expect is None:
    assert res["warnings"] == []
  else:
    assert any(expect in t for t in res["warnings"]), res["warnings"]


def test_run_suite_warns_about_too_many_targets():
  w = jax.random.normal(jax.random.PRNGKey(0), (16, 5))
  suite = [autoattack.Attack("apgd_t", apgd.APGDConfig(
      epsilon=0.1, num_steps=2, loss="dlr_targeted", num_target_classes=9,
      unroll=False, steps_per_call=0))]
  res = autoattack.run_suite(_Linear(), {"w": w}, _split(), suite,
                             batch_size=16, rng=jax.random.PRNGKey(1),
                             progress=False)
  assert any("only 4 possible" in t for t in res["warnings"]), res["warnings"]


def test_run_suite_reports_the_cost_of_each_attack():
  """Seconds, examples attacked (each run on the examples still robust) and
  model passes from the attack's own count: APGD-T with 2 steps, 2 targets
  on a 5-class model = (2 + 1) gradients a run, 2 runs."""
  w = jax.random.normal(jax.random.PRNGKey(0), (16, 5))
  cfg = apgd.APGDConfig(epsilon=0.0001, num_steps=2, loss="dlr_targeted",
                        num_target_classes=2, unroll=False, steps_per_call=0)
  res = autoattack.run_suite(_Linear(), {"w": w}, _split(),
                             [autoattack.Attack("apgd_t", cfg)], batch_size=16,
                             rng=jax.random.PRNGKey(1), progress=False)
  c = res["cost"]["apgd_t"]
  clean_right = int(round(res["clean"] * 16 / 100))
  assert c["runs"] == 2
  assert c["passes_per_example_run"] == {"grad": 3, "forward": 2}
  # ε is tiny: nothing breaks, so both runs attack every clean-right example.
  assert res["robust"]["apgd_t"] == res["clean"]
  assert c["examples_attacked"] == 2 * clean_right
  assert c["grad_passes"] == 3 * c["examples_attacked"]
  assert c["images_per_s"] > 0
