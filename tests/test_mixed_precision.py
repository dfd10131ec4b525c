"""Mixed precision (`model.compute_dtype='bfloat16'`): bfloat16 compute with
float32 params, optimiser state and BatchNorm statistics; float32 inputs,
x_adv, input gradients and logits; results close to float32.

Tolerances come from bfloat16's precision: 8 significant bits, unit roundoff
U = 2^-8 ≈ 0.0039 per rounded value. A network of L weight layers rounds its
activations a few times per layer (conv output, BatchNorm output, residual
sum); independent roundings add like a random walk, so the logits' relative
error (a norm over the batch) is about U·sqrt(L) times a small constant. We
allow 2·U·sqrt(L) (ResNet-18, L = 21: 3.6%; measured 0.9-1.5% on CPU, see the
report in the test docstrings). Accuracies are compared in examples: the two
programs only disagree on examples whose decisive logit margin is within
that error.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rift_jax import attacks, data, models, training
from rift_jax.experiments import validation
from rift_jax.models import conv, convert
from rift_jax.training import objectives
from rift_jax.errors import UserError
from tests.conftest import FIXTURE, FMNIST_DIR
from tests.configs import tiny

U = 2.0**-8  # bfloat16's unit roundoff (8 significant bits)
BF16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)


def _rel(a, b) -> float:
  """‖a − b‖ / ‖b‖ over everything (logits near 0 make per-entry ratios
  meaningless)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _tol(params) -> float:
  return 2 * U * np.sqrt(len(models.perturbable_modules(params)))


def _dtypes(tree) -> set:
  return {jnp.dtype(a.dtype) for a in jax.tree_util.tree_leaves(tree)}


def _pair(name, width=4, shape=(16, 16, 3), **kw):
  kw = dict(num_classes=10, width=width, mean=(0.4,), std=(0.3,), **kw)
  return (models.create_model(name, **kw),
          models.create_model(name, dtype="bfloat16", **kw))


# ------------------------------------------------------------ settings
def test_compute_dtype_setting():
  for value in ("bfloat16", jnp.bfloat16, BF16):
    assert models.compute_dtype(value) == BF16
  assert models.compute_dtype("float32") == F32
  for bad in ("float16", "bf16", jnp.float16, None):
    with pytest.raises(UserError, match=r"model.compute_dtype=.* is not "
                       r"allowed; choose one of: 'float32', 'bfloat16'"):
      models.create_model("small_cnn", num_classes=10, dtype=bad)
  # Default everywhere: float32.
  assert models.create_model("small_cnn", num_classes=10).dtype == F32
  cfg = tiny.get_config()
  assert cfg.model.compute_dtype == "float32"
  info = data.INFO[cfg.data.name]
  assert models.build_model(cfg, info).dtype == F32
  cfg.unlock()
  cfg.model.compute_dtype = "bfloat16"
  validation.validate_common(cfg)
  assert models.build_model(cfg, info).dtype == BF16
  cfg.model.compute_dtype = "float16"
  with pytest.raises(UserError, match="model.compute_dtype='float16'"):
    validation.validate_common(cfg)


# ------------------------------------------------- every architecture
def _eqns(jaxpr):
  for e in jaxpr.eqns:
    yield e
    for p in e.params.values():
      for sub in (p if isinstance(p, (list, tuple)) else [p]):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _eqns(inner)


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18",
                                  "wong_preact_resnet18", "wrn10_2",
                                  "dm_wrn10_2", "dm_preact_resnet18",
                                  "small_cnn"])
def test_every_layer_computes_in_bfloat16_with_float32_variables(name):
  # Tracing only (no compile): every convolution and matmul, forward and
  # backward, takes bfloat16 operands; params, BatchNorm statistics, logits
  # and the input gradient are float32. The float32 model has no bfloat16.
  m32, m16 = _pair(name, width=2, shape=(8, 8, 3))
  x = jnp.zeros((2, 8, 8, 3), jnp.float32)
  v16 = jax.eval_shape(lambda: m16.init(jax.random.PRNGKey(0), x, train=False))
  v32 = jax.eval_shape(lambda: m32.init(jax.random.PRNGKey(0), x, train=False))
  assert _dtypes(v16) == {F32}
  assert jax.tree_util.tree_structure(v16) == jax.tree_util.tree_structure(v32)
  fns = models.ModelFns(m16)

  def step(v, x):
    def loss(params, x):
      z, stats = fns.logits_and_stats({**v, "params": params}, x)
      return jnp.sum(jax.nn.log_softmax(z)[:, 0]), stats
    (value, stats), (gp, gx) = jax.value_and_grad(
        loss, (0, 1), has_aux=True)(v["params"], x)
    return fns.logits(v, x), value, stats, gx, gp

  closed = jax.make_jaxpr(step)(v16, x)
  out = jax.eval_shape(step, v16, x)
  assert _dtypes(out) == {F32}  # logits, loss, stats, dL/dx, dL/dθ
  heavy = [e for e in _eqns(closed.jaxpr)
           if e.primitive.name in ("conv_general_dilated", "dot_general")]
  n_layers = len(models.perturbable_modules(v16["params"]))
  assert len(heavy) >= 3 * n_layers  # forward, input and weight gradients
  for e in heavy:
    assert {jnp.dtype(a.aval.dtype) for a in e.invars} == {BF16}, e
  assert "bf16" not in str(jax.make_jaxpr(
      lambda v, x: models.ModelFns(m32).logits_and_stats(v, x))(v32, x))


# --------------------------------------------------- the convolution
@pytest.mark.parametrize("k,s,p,c", [(3, 2, 1, 6), (1, 2, 0, 6), (3, 1, 1, 3),
                                     (3, 1, 1, 6)])
def test_phase_conv_rule_in_bfloat16(k, s, p, c):
  # The phase (stride 2), few-channel (stride 1, 3 channels) and XLA
  # (stride 1, 6 channels) input-gradient rules: bfloat16 in, bfloat16 out,
  # the same forward as XLA and gradients as close to the float32 truth as
  # XLA's own bfloat16 rule (each is one bfloat16 rounding of an exact sum:
  # within a few U of the largest entry).
  rng = np.random.default_rng(k + s + c)
  x32 = jnp.asarray(rng.normal(size=(2, 9, 8, c)), jnp.float32)
  k32 = jnp.asarray(rng.normal(size=(k, k, c, 5)), jnp.float32)
  x16, k16 = x32.astype(jnp.bfloat16), k32.astype(jnp.bfloat16)
  y = conv.conv2d(x16, k16, s, p, "phase")
  assert y.dtype == BF16
  np.testing.assert_array_equal(np.asarray(y, np.float32),
                                np.asarray(conv.conv2d(x16, k16, s, p, "xla"),
                                           np.float32))
  g16 = jnp.asarray(rng.normal(size=y.shape), jnp.bfloat16)

  def grads(impl, dtype):
    f = lambda a, b: conv.conv2d(a, b, s, p, impl)  # noqa: E731
    _, vjp = jax.vjp(f, x16.astype(dtype), k16.astype(dtype))
    return vjp(g16.astype(dtype))
  dx, dk = grads("phase", jnp.bfloat16)
  dx_xla, dk_xla = grads("xla", jnp.bfloat16)
  dx_ref, dk_ref = grads("xla", jnp.float32)  # exact inputs, float32 math
  assert dx.dtype == dk.dtype == BF16
  scale = float(jnp.max(jnp.abs(dx_ref)))
  err = float(jnp.max(jnp.abs(dx.astype(jnp.float32) - dx_ref)))
  err_xla = float(jnp.max(jnp.abs(dx_xla.astype(jnp.float32) - dx_ref)))
  assert err <= max(2 * err_xla, 2 * U * scale), (err, err_xla, scale)
  np.testing.assert_array_equal(np.asarray(dk, np.float32),
                                np.asarray(dk_xla, np.float32))
  assert _rel(dk.astype(jnp.float32), dk_ref) < 2 * U


def test_conv_layer_float32_kernel_and_second_order_in_bfloat16():
  # The Conv layer keeps a float32 kernel; its gradient arrives as float32;
  # reverse-over-reverse (CURE) goes through the bfloat16 phase rule.
  layer = conv.Conv(4, 3, 2, "phase", jnp.bfloat16)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3))
  params = layer.init(jax.random.PRNGKey(1), x)
  assert _dtypes(params) == {F32}
  assert layer.apply(params, x).dtype == BF16

  def loss(p, x):
    return jnp.sum(jnp.tanh(layer.apply(p, x).astype(jnp.float32)))
  curvature = jax.grad(lambda p: jnp.sum(jax.grad(loss, 1)(p, x) ** 2))(params)
  assert _dtypes(curvature) == {F32}
  ref = jax.grad(lambda p: jnp.sum(jax.grad(
      lambda p, x: jnp.sum(jnp.tanh(conv.Conv(4, 3, 2, "xla").apply(p, x))),
      1)(p, x) ** 2))(params)
  assert _rel(curvature["params"]["kernel"], ref["params"]["kernel"]) < 0.05


# ---------------------------------------------------- model numerics
@pytest.mark.parametrize("name", ["resnet18", "dm_wrn10_2"])
def test_logits_and_batch_stats_close_to_float32(name):
  """Measured on CPU (relative error / 2·U·sqrt(L) bound): resnet18 eval
  0.9% / 3.6%, train 1.5% / 3.6%; dm_wrn10_2 0.7% / 2.2%, 0.8% / 2.2%."""
  m32, m16 = _pair(name)
  v = models.init_variables(m32, jax.random.PRNGKey(0), (16, 16, 3))
  assert _dtypes(models.init_variables(m16, jax.random.PRNGKey(0),
                                       (16, 16, 3))) == {F32}
  x = jax.random.uniform(jax.random.PRNGKey(1), (16, 16, 16, 3))

  @jax.jit
  def run(v, x):
    out = {}
    for key, m in (("f32", m32), ("bf16", m16)):
      fns = models.ModelFns(m)
      z_train, stats = fns.logits_and_stats(v, x)
      out[key] = (fns.logits(v, x), z_train, stats)
    return out
  out = run(v, x)
  tol = _tol(v["params"])
  for i, what in enumerate(("eval logits", "train logits")):
    assert out["bf16"][i].dtype == F32
    err = _rel(out["bf16"][i], out["f32"][i])
    print(f"{name} {what}: relative error {err:.4f}, tolerance {tol:.4f}")
    assert err < tol, (what, err, tol)
  stats16, stats32 = out["bf16"][2], out["f32"][2]
  assert _dtypes(stats16) == {F32}
  for a, b in zip(jax.tree_util.tree_leaves(stats16),
                  jax.tree_util.tree_leaves(stats32)):
    assert _rel(a, b) < tol


def test_training_steps_close_to_float32(tiny_cnn, synthetic):
  """PGD-AT steps (SGD + momentum, weight decay, train-mode BN): float32
  params, momentum and running statistics after the steps; each step's loss
  within 2·U·sqrt(L) (relative) of the float32 run's, and the params after
  the steps as close (measured on CPU: losses within 0.2%, params 0.1%)."""
  model, variables = tiny_cnn
  model16 = model.clone(dtype=jnp.bfloat16)
  optim = training.Optim(lr=0.05, momentum=0.9, weight_decay=5e-4, epochs=1,
                         schedule="constant")
  tx = training.make_optimizer(optim, 10)
  x = jnp.asarray(synthetic.train.images[:64] / 255.0, jnp.float32)
  y = jnp.asarray(synthetic.train.labels[:64])
  runs = {}
  for key, m in (("f32", model), ("bf16", model16)):
    ctx = objectives.Context(models.ModelFns(m),
                             attacks.PGDConfig(0.03, 0.01, 2, unroll=False))
    step = training.make_train_step(ctx, tx, objectives.pgd_at, synthetic.info,
                                 augment=False)
    state = training.create_state(jax.tree_util.tree_map(jnp.copy, variables),
                               tx, jax.random.PRNGKey(0))
    losses = []
    for _ in range(4):
      state, metrics = step(state, x, y)
      assert metrics["loss"].dtype == F32
      losses.append(float(metrics["loss"]))
    runs[key] = (np.asarray(losses), state)
  (l32, s32), (l16, s16) = runs["f32"], runs["bf16"]
  # Float state float32 (the optimiser's step count is its own int32).
  floating = {d for d in _dtypes(s16.opt_state) if jnp.issubdtype(d, jnp.floating)}
  assert _dtypes(s16.params) == floating == {F32}
  assert _dtypes(s16.batch_stats) == {F32}
  tol = _tol(s32.params)
  err = np.max(np.abs(l16 - l32) / l32)
  print(f"losses f32 {l32} bf16 {l16}: max relative difference {err:.4f}, "
        f"tolerance {tol:.4f}")
  assert err < tol
  assert l16[-1] < l16[0]  # it learns
  p_err = _rel(jnp.concatenate([a.ravel() for a in
                                jax.tree_util.tree_leaves(s16.params)]),
               jnp.concatenate([a.ravel() for a in
                                jax.tree_util.tree_leaves(s32.params)]))
  print(f"params after 4 steps: relative difference {p_err:.5f}")
  assert p_err < tol


# ------------------------------------------------------- attacks
@pytest.fixture(scope="module")
def robust_fixture():
  """The committed robust ResNet-18 (width 4, PGD-AT on Fashion-MNIST at
  ε = 0.1; tests/fixtures/README.md) and the first 100 test images."""
  images_path = os.path.join(FMNIST_DIR, "t10k-images-idx3-ubyte.gz")
  if not os.path.exists(images_path):
    pytest.skip(f"Fashion-MNIST not found at {images_path} "
                "(apt-get install dataset-fashion-mnist or make data)")
  info = data.INFO["fashion_mnist"]
  kw = dict(num_classes=10, width=4, mean=info.mean, std=info.std)
  m32 = models.create_model("resnet18", **kw)
  m16 = models.create_model("resnet18", dtype="bfloat16", **kw)
  x = data.to_float(data.read_idx(images_path)[:100, :, :, None])
  y = data.read_idx(os.path.join(FMNIST_DIR, "t10k-labels-idx1-ubyte.gz")
                    )[:100].astype(np.int32)
  return info, m32, m16, jnp.asarray(x), jnp.asarray(y)


def test_checkpoints_import_and_export_the_same_float32_state_dict(
    robust_fixture, tmp_path):
  info, m32, m16, *_ = robust_fixture
  v32 = convert.import_checkpoint(FIXTURE, m32, info.image_shape)
  v16 = convert.import_checkpoint(FIXTURE, m16, info.image_shape)
  assert _dtypes(v16) == {F32}
  jax.tree_util.tree_map(np.testing.assert_array_equal, v16, v32)
  sd16, sd32 = convert.to_state_dict(v16), convert.to_state_dict(v32)
  assert sd16.keys() == sd32.keys() == convert.load_state_dict(FIXTURE).keys() | {
      k for k in sd32 if k.endswith("num_batches_tracked")}
  for k in sd32:
    assert sd16[k].dtype == sd32[k].dtype
    np.testing.assert_array_equal(sd16[k], sd32[k])
  path = str(tmp_path / "bf16_model.safetensors")
  convert.export_checkpoint(v16, path, like=FIXTURE)
  for k, a in convert.load_state_dict(FIXTURE).items():
    np.testing.assert_array_equal(convert.load_state_dict(path)[k], a)


def test_pgd_in_float32_space_and_accuracy_close(robust_fixture):
  """PGD-10 (ε = 0.1, step 0.025) on 100 Fashion-MNIST test images: x_adv
  and the input gradient float32, x_adv inside the ε-ball and [0, 1]; the
  gradients point the same way (cosine ≥ 0.95: ReLU gates within rounding
  of 0 flip) and clean / robust accuracy within 3 examples (an example flips
  only if its decisive margin is within the bf16 logit error; measured on
  CPU: see the printed line)."""
  info, m32, m16, x, y = robust_fixture
  variables = convert.import_checkpoint(FIXTURE, m32, info.image_shape)
  cfg = attacks.PGDConfig(0.1, 0.025, 10, unroll=False)

  @jax.jit
  def run(v, x, y):
    out = {}
    for key, m in (("f32", m32), ("bf16", m16)):
      fns = models.ModelFns(m)
      logits_fn = lambda z: fns.logits(v, z)  # noqa: E731
      gx = jax.grad(lambda z: jnp.sum(attacks.cross_entropy(logits_fn(z),
                                                            y)))(x)
      x_adv = attacks.pgd(logits_fn, x, y, jax.random.PRNGKey(0), cfg)
      out[key] = (gx, x_adv, jnp.argmax(logits_fn(x), -1) == y,
                  jnp.argmax(logits_fn(x_adv), -1) == y)
    return out
  out = run(variables, x, y)
  g32, _, clean32, adv32 = out["f32"]
  g16, x_adv, clean16, adv16 = out["bf16"]
  assert g16.dtype == x_adv.dtype == F32
  assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.1 + 1e-6
  assert 0.0 <= float(jnp.min(x_adv)) and float(jnp.max(x_adv)) <= 1.0
  cos = float(jnp.sum(g16 * g32) / jnp.linalg.norm(g16) / jnp.linalg.norm(g32))
  n_clean = (int(jnp.sum(clean32)), int(jnp.sum(clean16)))
  n_adv = (int(jnp.sum(clean32 & adv32)), int(jnp.sum(clean16 & adv16)))
  print(f"input-gradient cosine {cos:.4f}; correct of 100 (f32, bf16): clean "
        f"{n_clean}, PGD-10 {n_adv}; examples that differ: clean "
        f"{int(jnp.sum(clean32 != clean16))}, PGD "
        f"{int(jnp.sum((clean32 & adv32) != (clean16 & adv16)))}")
  assert cos >= 0.95
  # A robust model, so the comparison means something (the small fixture:
  # 45 clean and 36 PGD-10 of these 100 in float32).
  assert n_adv[0] >= 30
  assert abs(n_clean[0] - n_clean[1]) <= 3
  assert abs(n_adv[0] - n_adv[1]) <= 3
