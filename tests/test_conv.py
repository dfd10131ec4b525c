"""rift_jax.models.conv: the phase / few-channel input gradients equal XLA's own."""
import itertools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rift_jax
from rift_jax import models
from rift_jax.models import conv

CASES = [  # kernel, stride, padding, height, width, c_in
    (k, s, p, h, w, c)
    for (k, s, p), (h, w), c in itertools.product(
        [(3, 1, 1), (1, 1, 0), (3, 2, 1), (1, 2, 0), (3, 2, 0), (5, 2, 2),
         (3, 3, 1), (5, 1, 2)],
        [(8, 8), (7, 9)], [1, 6])]


@pytest.mark.parametrize("k,s,p,h,w,c", CASES)
def test_phase_gradients_equal_xla(k, s, p, h, w, c):
  rng = np.random.default_rng(k * 100 + s * 10 + p + h + c)
  x = jnp.asarray(rng.normal(size=(2, h, w, c)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, c, 5)), jnp.float32)
  y = conv.conv2d(x, kernel, s, p, "xla")
  np.testing.assert_array_equal(np.asarray(conv.conv2d(x, kernel, s, p, "phase")),
                                np.asarray(y))
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)

  def grads(impl):
    return jax.vjp(lambda a, b: conv.conv2d(a, b, s, p, impl), x, kernel)[1](g)
  (dx_ref, dk_ref), (dx, dk) = grads("xla"), grads("phase")
  scale = float(jnp.max(jnp.abs(dx_ref)))
  np.testing.assert_allclose(np.asarray(dx), np.asarray(dx_ref), atol=1e-5 * scale)
  np.testing.assert_allclose(np.asarray(dk), np.asarray(dk_ref), rtol=1e-5, atol=1e-5)


def test_stride2_1x1_gradient_by_hand():
  # y[m, n] = x[2m, 2n] * w, so dx = g * w at even pixels and 0 elsewhere.
  g = jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1)
  dx = conv.input_grad(g, jnp.full((1, 1, 1, 1), 3.0), (1, 4, 3, 1), 2, 0)
  expected = np.zeros((4, 3))
  expected[0, 0], expected[0, 2], expected[2, 0], expected[2, 2] = 3, 6, 9, 12
  np.testing.assert_array_equal(np.asarray(dx)[0, :, :, 0], expected)


def test_second_order_gradients_equal_xla():
  # CURE differentiates a gradient norm: reverse-over-reverse through the rule.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 3, 4)) * 0.3, jnp.float32)

  def grad_norm_grad(impl):
    def loss(a, b):
      return jnp.sum(jnp.tanh(conv.conv2d(conv.conv2d(a, b, 2, 1, impl)[..., :3],
                                          b, 1, 1, impl)))
    return jax.grad(lambda b: jnp.sum(jax.grad(loss)(x, b) ** 2))(kernel)
  ref, got = grad_norm_grad("xla"), grad_norm_grad("phase")
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-4,
                             atol=1e-4 * float(jnp.max(jnp.abs(ref))))


def test_model_input_gradients_agree_across_impls():
  grads = {}
  for impl in ("xla", "phase"):
    model = models.create_model("resnet18", num_classes=10, width=4, conv_impl=impl)
    variables = models.init_variables(model, jax.random.PRNGKey(0), (16, 16, 3))
    fns = models.ModelFns(model)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 16, 16, 3))
    grads[impl] = jax.grad(lambda z: jnp.sum(jax.nn.log_softmax(
        fns.logits(variables, z, train=False))[:, 0]))(x)
  scale = float(jnp.max(jnp.abs(grads["xla"])))
  np.testing.assert_allclose(np.asarray(grads["phase"]), np.asarray(grads["xla"]),
                             atol=1e-5 * scale)


def test_resolve_impl():
  assert conv.resolve_impl("auto") == ("phase" if jax.default_backend() == "cpu"
                                       else "xla")
  with pytest.raises(ValueError, match="choose one of: 'auto', 'phase', 'xla'"):
    conv.resolve_impl("winograd")


def _xla_flags_after_import(env_update):
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "RIFT_JAX_XLA_DEFAULTS")}
  env.update(env_update)
  out = subprocess.run(
      [sys.executable, "-c", "import os, rift_jax; print(os.environ.get('XLA_FLAGS', ''))"],
      env=env, capture_output=True, text=True, check=True)
  return out.stdout.strip()


def test_import_sets_cpu_conv_flag_without_overriding_the_user():
  import jaxlib.version
  measured = (tuple(jaxlib.version.__version_info__[:2])
              in rift_jax._MEASURED_JAXLIB)
  flag = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
  assert (_xla_flags_after_import({}) == flag) == measured
  assert _xla_flags_after_import({"RIFT_JAX_XLA_DEFAULTS": "0"}) == ""
  user = "--xla_cpu_experimental_ynn_fusion_type=dot"
  assert _xla_flags_after_import({"XLA_FLAGS": user}) == user
