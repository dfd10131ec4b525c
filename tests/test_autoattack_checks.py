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


def test_run_suite_attributes_each_broken_example():
  """Per example: which attack broke it first, in which run, and the size of
  its perturbation — consistent with the robust accuracy after each attack
  and inside the threat model."""
  from rift_jax import attacks
  from rift_jax.evaluation import suite as suite_lib
  w = 0.05 * jax.random.normal(jax.random.PRNGKey(0), (16, 5))
  eps = 0.05
  suite = [autoattack.Attack("pgd", attacks.PGDConfig(
               epsilon=eps, step_size=eps / 4, num_steps=3, unroll=False)),
           autoattack.Attack("apgd_ce", apgd.APGDConfig(
               epsilon=eps, num_steps=4, restarts=2, unroll=False,
               steps_per_call=0))]
  split = _split(64)
  res = autoattack.run_suite(_Linear(), {"w": w}, split, suite, batch_size=32,
                             rng=jax.random.PRNGKey(1), progress=False)
  who, n = res["attribution"], 64
  pct = lambda c: 100.0 * c / n
  assert pct(np.sum(who["attack"] == -1)) == pytest.approx(100 - res["clean"])
  assert pct(np.sum(who["attack"] == 0)) == pytest.approx(
      res["clean"] - res["robust"]["pgd"])
  assert pct(np.sum(who["attack"] == 1)) == pytest.approx(
      res["robust"]["pgd"] - res["robust"]["apgd_ce"])
  assert pct(np.sum(who["attack"] == 2)) == pytest.approx(res["robust"]["apgd_ce"])
  broken = who["attack"] >= 0
  broken &= who["attack"] < 2
  assert np.sum(broken) > 0
  assert np.all(who["size"][broken] <= eps + 1e-6)
  assert np.all(np.isnan(who["size"][~broken]))
  assert set(who["run"][who["attack"] == 1]) <= {0, 1}     # APGD's 2 restarts
  assert np.all(who["target_rank"][broken] == 0)           # untargeted
  by = suite_lib.broken_by(res)
  assert by["pgd"]["count"] == int(np.sum(who["attack"] == 0))
  assert by["apgd_ce"]["count"] == int(np.sum(who["attack"] == 1))


def test_records_keep_numbers_beside_bit_packed_correctness(tmp_path):
  from rift_jax.evaluation import records
  v = {"clean": np.array([True, False, True]),
       "aa/broken_by/attack": np.array([0, -1, 3], np.int32),
       "aa/broken_by/size": np.array([0.1, np.nan, 0.05], np.float32)}
  records.save(str(tmp_path / "r.npz"), v)
  back = records.load(str(tmp_path / "r.npz"))
  assert back["clean"].dtype == bool and np.array_equal(back["clean"], v["clean"])
  assert np.array_equal(back["aa/broken_by/attack"], v["aa/broken_by/attack"])
  np.testing.assert_array_equal(back["aa/broken_by/size"], v["aa/broken_by/size"])
