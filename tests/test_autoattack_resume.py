"""A suite evaluation killed at any batch continues where it stopped and gives
the numbers of an uninterrupted one; a state written for another model,
split or attack list is refused."""
import jax
import numpy as np
import pytest

from rift_jax import models
from rift_jax.attacks import apgd, square
from rift_jax.errors import UserError
from rift_jax.evaluation import autoattack, resume

EPS = 0.005
SUITE = [
    autoattack.Attack("apgd_ce", apgd.APGDConfig(epsilon=EPS, num_steps=3,
                                                 restarts=2, unroll=False)),
    autoattack.Attack("apgd_t", apgd.APGDConfig(
        epsilon=EPS, num_steps=3, loss="dlr_targeted", num_target_classes=2,
        unroll=False)),
    autoattack.Attack("square", square.SquareConfig(epsilon=EPS,
                                                    num_queries=6))]


class Killed(Exception):
  pass


def _suite(fns, variables, split, state_path=None, suite=SUITE):
  return autoattack.run_suite(fns, variables, split, suite, 16,
                              jax.random.PRNGKey(5), progress=False,
                              state_path=state_path)


def _same(a, b):
  assert a["robust"] == b["robust"] and a["clean"] == b["clean"]
  for k in a["per_example"]:
    np.testing.assert_array_equal(a["per_example"][k], b["per_example"][k], k)
  for k in a["attribution"]:
    np.testing.assert_array_equal(a["attribution"][k], b["attribution"][k], k)
  assert {k: c["examples_attacked"] for k, c in a["cost"].items()} == {
      k: c["examples_attacked"] for k, c in b["cost"].items()}


@pytest.fixture(scope="module")
def setup(synthetic, tiny_cnn):
  model, variables = tiny_cnn
  fns = models.ModelFns(model)
  split = synthetic.test
  return fns, variables, split, _suite(fns, variables, split)


def test_killed_at_any_save_resumes_to_the_same_numbers(setup, tmp_path,
                                                        monkeypatch):
  fns, variables, split, whole = setup
  # The whole run breaks examples with every attack (so every position of a
  # kill matters) and attributes each broken example to one of them.
  who = whole["attribution"]["attack"]
  assert set(np.unique(who[who >= 0])) >= {0, 1}
  saves = []
  real_save = resume.Journal.save
  monkeypatch.setattr(resume.Journal, "save",
                      lambda self, *a: saves.append(1) or real_save(self, *a))
  _suite(fns, variables, split, str(tmp_path / "count.npz"))
  total = len(saves)
  assert total > 10   # one save per batch, run and attack
  # Kill after the k-th save: inside a run, at a run's end, at an attack's
  # end; then run again (possibly killed again) until it finishes.
  for kills in ([2], [5, 3], [total - 2], [6, 6, 6]):
    path = str(tmp_path / f"state_{'_'.join(map(str, kills))}.npz")
    for k in kills:
      count = [0]

      def dying(self, *a, k=k, count=count):
        real_save(self, *a)
        count[0] += 1
        if count[0] == k:
          raise Killed()

      monkeypatch.setattr(resume.Journal, "save", dying)
      with pytest.raises(Killed):
        _suite(fns, variables, split, path)
    monkeypatch.setattr(resume.Journal, "save", real_save)
    _same(_suite(fns, variables, split, path), whole)


def test_a_finished_state_returns_without_attacking(setup, tmp_path,
                                                    monkeypatch):
  fns, variables, split, whole = setup
  path = str(tmp_path / "s.npz")
  _same(_suite(fns, variables, split, path), whole)
  monkeypatch.setattr(autoattack, "_compiled_run",
                      lambda *a: pytest.fail("a finished suite ran an attack"))
  _same(_suite(fns, variables, split, path), whole)


def test_a_state_for_something_else_is_refused(setup, tmp_path):
  fns, variables, split, _ = setup
  path = str(tmp_path / "s.npz")
  _suite(fns, variables, split, path, suite=SUITE[:1])
  with pytest.raises(UserError, match="another attacks"):
    _suite(fns, variables, split, path)
  other = jax.tree_util.tree_map(lambda a: a * 1.01, variables)
  with pytest.raises(UserError, match="another model"):
    _suite(fns, other, split, path, suite=SUITE[:1])
  with pytest.raises(UserError, match="another data"):
    _suite(fns, variables, split.take(np.arange(100)), path, suite=SUITE[:1])
  with open(path, "wb") as f:
    f.write(b"not a state")
  with pytest.raises(UserError, match="cannot be read"):
    _suite(fns, variables, split, path, suite=SUITE[:1])


@pytest.mark.parametrize("n, batch_size, devices, size", [
    # One batch of ⌈n / 4⌉ · 4 rows (⌈n / 8⌉ · 8 on 2 devices), at most
    # batch_size; n > batch_size: ⌈n / batch_size⌉ equal shares, each so.
    (1000, 500, 1, 500), (165, 500, 1, 168), (61, 500, 1, 64), (58, 500, 2, 64),
    (501, 500, 1, 252), (0, 500, 1, 500), (126, 500, 1, 128), (3, 16, 2, 8),
    (9, 16, 2, 16), (33, 100, 1, 36), (13, 100, 1, 16), (80, 100, 1, 80),
    (249, 250, 1, 250), (1, 100, 1, 4), (179, 250, 1, 180), (1001, 500, 1, 336)])
def test_fitted_batch_size_by_hand(n, batch_size, devices, size):
  assert autoattack.fitted_batch_size(n, batch_size, devices) == size


def test_each_run_computes_only_its_survivors_in_fitted_batches(setup,
                                                                monkeypatch):
  fns, variables, split, whole = setup
  shapes = []
  real = autoattack._compiled_run

  def spy(*args):
    run = real(*args)

    def counted(variables, rank, r, x, y, key):
      shapes.append(x.shape[0])
      return run(variables, rank, r, x, y, key)
    return counted
  monkeypatch.setattr(autoattack, "_compiled_run", spy)
  # One batch of up to 128: the survivors of each run fill part of it.
  again = autoattack.run_suite(fns, variables, split, SUITE, 128,
                               jax.random.PRNGKey(5), progress=False)
  attacked = sum(c["examples_attacked"] for c in again["cost"].values())
  num_runs = sum(c["runs"] for c in again["cost"].values())
  # Each batch is a multiple of 4 rows with fewer than 4 padding rows, and
  # the runs on fewer survivors than a batch use smaller ones.
  assert all(s % 4 == 0 for s in shapes) and min(shapes) < 128
  assert attacked <= sum(shapes) < attacked + num_runs * 4
  assert again["clean"] == whole["clean"]
