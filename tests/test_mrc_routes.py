"""MRC's two routes — the per-module mask used statically (only module i's
kernel differentiated) and as data (a params-shaped Δ times a mask) — give
the same MRC, accuracy drop and ‖Δw‖/‖w‖ for every module of a ResNet-18 and
a WideResNet, under both projection schedules; the static route's reused
prefix (the network before module i's block run once) changes nothing."""
import jax
import numpy as np
import pytest

from rift_jax import models
from rift_jax.rift import criticality


@pytest.fixture(scope="module", params=[("resnet18", 2), ("wrn10_1", 4)])
def setup(request):
  name, width = request.param
  model = models.create_model(name, num_classes=5, width=width, mean=(0.5,),
                              std=(0.25,))
  variables = models.init_variables(model, jax.random.PRNGKey(0), (8, 8, 1))
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (24, 8, 8, 1)).astype(np.float32)
  y = rng.integers(0, 5, 24).astype(np.int32)
  return models.ModelFns(model), variables, x, y


# The static route with its reused prefix (per_pass) and from the images
# (per_step; `test_reused_prefix_...` compares the two directly).
@pytest.mark.parametrize("projection,prefix_mb", [("per_pass", 2048.0),
                                                  ("per_step", 0.0)])
def test_static_and_mask_routes_agree_on_every_module(setup, projection, prefix_mb):
  fns, variables, x, y = setup
  names = list(models.perturbable_modules(variables["params"]))
  # Each route compiles one program per module, so each schedule takes a
  # third of the modules (compile time): from the images (per_step) every
  # third from the stem, with the reused prefix (per_pass) every third from
  # the second — block convolutions of every stage, so the prefix is cut in
  # every stage — and every shortcut (the prefix ends inside a block
  # there); both take the head.
  shortcuts = [n for n in names if "shortcut" in n]
  chosen = (names[1::3] + shortcuts if projection == "per_pass"
            else names[0::3])
  chosen = list(dict.fromkeys(chosen + names[-1:]))
  kw = dict(epsilon=0.1, learning_rate=1.0, num_passes=2, batch_size=16,
            projection=projection, modules=chosen)
  static = criticality.mrc(fns, variables, x, y, route="static",
                           prefix_cache_mb=prefix_mb, **kw)
  mask = criticality.mrc(fns, variables, x, y, route="mask", **kw)
  assert list(static) == chosen
  assert len(static) >= 4
  for name in static:
    a, b = static[name], mask[name]
    np.testing.assert_allclose(a.loss_per_pass, b.loss_per_pass, rtol=1e-5,
                               atol=1e-6, err_msg=name)
    np.testing.assert_allclose(a.mrc, b.mrc, rtol=1e-4, atol=1e-6, err_msg=name)
    assert a.adv_acc_drop == pytest.approx(b.adv_acc_drop, abs=1e-9), name
    assert a.relative_norm == pytest.approx(b.relative_norm, rel=1e-5), name
    assert a.base_loss == pytest.approx(b.base_loss, rel=1e-6)
  # The ascent moved something, within the ball.
  assert max(r.mrc for r in static.values()) > 0
  assert max(r.relative_norm for r in static.values()) <= 0.1 * (1 + 1e-5)


def test_reused_prefix_gives_the_whole_networks_numbers(setup):
  # prefix_cache_mb=0: every pass runs the whole network from the images.
  fns, variables, x, y = setup
  names = list(models.perturbable_modules(variables["params"]))
  kw = dict(epsilon=0.1, learning_rate=1.0, num_passes=2, batch_size=16,
            route="static", modules=[names[1], names[len(names) // 2], names[-2]])
  reused = criticality.mrc(fns, variables, x, y, **kw)
  whole = criticality.mrc(fns, variables, x, y, prefix_cache_mb=0, **kw)
  for name in whole:
    np.testing.assert_allclose(reused[name].loss_per_pass,
                               whole[name].loss_per_pass, rtol=1e-5, atol=1e-6,
                               err_msg=name)
    assert reused[name].adv_acc_drop == pytest.approx(whole[name].adv_acc_drop,
                                                      abs=1e-9)


def _step_flops(route, v, inputs, name):
  x, y = next(iter(inputs))
  step, _ = route._programs(name)
  d = jax.numpy.zeros(route._kernel(v, name).shape)
  w = jax.numpy.ones(x.shape[0])
  cost = step.lower(v, d, x, y, w).compile().cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_a_deep_module_skips_the_prefix_and_a_budget_of_zero_does_not(setup):
  from rift_jax import data, evaluation
  fns, variables, x, y = setup
  batches = evaluation.Batches(data.Split(x, y), 8, keep=True)
  deep = list(models.perturbable_modules(variables["params"]))[-2]
  flops = {}
  for mb in (2048.0, 0.0):
    route = criticality._StaticRoute(fns, variables["params"], 1.0, 0.1, False, mb)
    inputs = route.prepare(variables, [deep], batches)
    assert (route.cut is not None) == (mb > 0)
    assert (inputs is batches) == (mb == 0)
    flops[mb] = _step_flops(route, variables, inputs, deep)
  # The ascent step from the cut does a fraction of the whole network's work.
  assert flops[2048.0] < 0.6 * flops[0.0]


def test_a_root_that_reads_an_earlier_value_again_runs_the_whole_network():
  import flax.linen as nn
  from rift_jax import data, evaluation

  class Skip(nn.Module):   # out = c(b(a(x)) + a(x)): cutting at b is wrong
    @nn.compact
    def __call__(self, x, train=False):
      a = nn.Dense(6, name="a")(x.reshape(x.shape[0], -1))
      b = nn.Dense(6, name="b")(a)
      return nn.Dense(3, name="c")(b + a)

  fns = models.ModelFns(Skip())
  v = Skip().init(jax.random.PRNGKey(0), np.zeros((1, 2, 2, 1), np.float32))
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 1, (8, 2, 2, 1)).astype(np.float32)
  y = rng.integers(0, 3, 8).astype(np.int32)
  route = criticality._StaticRoute(fns, v["params"], 1.0, 0.1, False, 2048.0)
  batches = evaluation.Batches(data.Split(x, y), 8, keep=True)
  assert route.prepare(v, ["c"], batches) is batches and route.cut is None
  assert route.prepare(v, ["b"], batches) is not batches and route.cut == "a"
