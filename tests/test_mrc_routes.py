"""MRC's two routes — the per-module mask used statically (only module i's
kernel differentiated) and as data (a params-shaped Δ times a mask) — give
the same MRC, accuracy drop and ‖Δw‖/‖w‖ for every module of a ResNet-18 and
a WideResNet, under both projection schedules."""
import jax
import numpy as np
import pytest

from rift_jax import criticality, models


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


@pytest.mark.parametrize("projection", ["per_pass", "per_step"])
def test_static_and_mask_routes_agree_on_every_module(setup, projection):
  fns, variables, x, y = setup
  kw = dict(epsilon=0.1, learning_rate=1.0, num_passes=2, batch_size=16,
            projection=projection)
  static = criticality.mrc(fns, variables, x, y, route="static", **kw)
  mask = criticality.mrc(fns, variables, x, y, route="mask", **kw)
  assert list(static) == list(models.perturbable_modules(variables["params"]))
  assert len(static) > 8
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
