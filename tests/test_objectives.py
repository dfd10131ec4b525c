"""Each method's loss against numbers worked out by hand, and its BatchNorm
statistics against the PyTorch update rule.

The model is linear, 3 features -> 2 classes, kernel W (3x2), zero bias:
  x  = (1, 0, 0) -> z  = (1, -1),  p  = (s, 1 - s),  s = 1/(1 + e^-2)
  x' = (0, 1, 0) -> z' = (0, 2),   p' = (1 - s, s)
with y = 0, so CE(x) = -log s, KL(p ‖ p') = (2s - 1)·2, and ∂CE/∂W is the
outer product x ⊗ (p - e_y). Expected values below are written from these
closed forms, never through the code under test.

BatchNorm: `BNNet` normalises its raw input, so a pass over a batch moves the
running mean by PyTorch's r ← 0.9·r + 0.1·mean(batch) whatever the weights;
the expected averages are that recurrence over the authors' pass order.
"""
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rift_jax import attacks, models, training
from rift_jax.training import cure, methods, objectives, schedules
from rift_jax.errors import UserError

S = 1 / (1 + math.exp(-2))          # 0.880797
KL = (2 * S - 1) * 2                # KL(p ‖ p') = 1.523188
CE = -math.log(S)                   # 0.126928
W = np.array([[1., -1.], [0., 2.], [-1., 0.]], np.float32)


class Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(2, name="linear")(x.reshape(x.shape[0], -1))


def make_ctx(**hp):
  attack = attacks.PGDConfig(epsilon=1.0, step_size=0.1, num_steps=1)
  return objectives.Context(models.ModelFns(Linear()), attack,
                            hparams=tuple(sorted(hp.items())))


def params_of(kernel=W):
  return {"linear": {"kernel": jnp.asarray(kernel), "bias": jnp.zeros(2)}}


BATCH = objectives.Batch(x=jnp.array([[1., 0., 0.]]), y=jnp.array([0]),
                         x_adv=jnp.array([[0., 1., 0.]]))


def loss_of(method, ctx, params=None, batch=BATCH, extra=None):
  loss, (_, metrics) = methods.get(method).loss(
      ctx, params or params_of(), {}, batch, extra)
  return float(loss), metrics


def test_trades_is_ce_plus_beta_kl():
  loss, m = loss_of("trades", make_ctx(beta=6.0))
  assert m["kl"] == pytest.approx(KL, rel=1e-5)
  assert loss == pytest.approx(CE + 6 * KL, rel=1e-5)   # 9.266056
  assert loss_of("trades", make_ctx(beta=0.0))[0] == pytest.approx(CE, rel=1e-5)


def test_mart_bce_and_one_minus_p_y_weighting():
  # BCE(p', 0) = -log p'_0 - log(1.0001 - p'_1); weight 1 - p_0(x) = 1 - s.
  bce = -math.log(1 - S) - math.log(1.0001 - S)
  loss, _ = loss_of("mart", make_ctx(lam=6.0))
  assert loss == pytest.approx(bce + 6 * KL * (1 - S), rel=1e-5)   # 5.342
  # Label 1: p_1(x) = 1 - s, so the KL term's weight becomes s.
  b1 = BATCH._replace(y=jnp.array([1]))
  _, kl, weight = objectives.mart_terms(jnp.array([[1., -1.]]),
                                        jnp.array([[0., 2.]]), b1.y)
  assert float(weight[0]) == pytest.approx(S, rel=1e-5)
  assert float(kl[0]) == pytest.approx(KL, rel=1e-5)   # KL does not use y
  bce1 = -math.log(S) - math.log(1.0001 - (1 - S))
  assert loss_of("mart", make_ctx(lam=6.0), batch=b1)[0] == pytest.approx(
      bce1 + 6 * KL * S, rel=1e-5)


def test_score_squared_errors_on_softmax():
  # ‖p - e_0‖² = 2(1-s)², ‖p - p'‖² = 2(2s-1)²; extra-data recipe, no clip.
  loss, m = loss_of("score", make_ctx(recipe="extra_data", beta=4.0,
                                      clip_loss=0.0))
  assert float(m["se_nat"]) == pytest.approx(2 * (1 - S) ** 2, rel=1e-5)
  assert float(m["se_rob"]) == pytest.approx(2 * (2 * S - 1) ** 2, rel=1e-5)
  assert loss == pytest.approx(2 * (1 - S) ** 2 + 8 * (2 * S - 1) ** 2, rel=1e-5)


def test_score_clipping_bounds_each_examples_loss():
  # No-extra-data recipe: loss = mean_i max(L_i - b, 0), L_i = SE_nat + β·SE_rob,
  # b = c²·K/(K-1) = 0.09·2 = 0.18 for c = 0.3, K = 2 classes.
  # Example 1: x, x' as above: L_1 = 2(1-s)² + 6·2(2s-1)² (≈ 6.99 > b).
  # Example 2: x' = x: L_2 = 2(1-s)² ≈ 0.028 < b, clipped to 0, no gradient.
  ctx = make_ctx(recipe="no_extra_data", beta=6.0, clip_loss=0.3)
  b = 0.3 ** 2 * 2 / 1
  l1 = 2 * (1 - S) ** 2 + 12 * (2 * S - 1) ** 2
  two = objectives.Batch(x=jnp.array([[1., 0., 0.], [1., 0., 0.]]),
                         y=jnp.array([0, 0]),
                         x_adv=jnp.array([[0., 1., 0.], [1., 0., 0.]]))
  loss, m = loss_of("score", ctx, batch=two)
  assert loss == pytest.approx((l1 - b) / 2, rel=1e-5)
  assert float(m["clipped"]) == 0.5
  assert objectives.score_clip_bound(0.3, 10) == pytest.approx(0.1)
  # The clipped example adds no gradient: the two-example gradient is half
  # the gradient of example 1 alone.
  grad = jax.jit(lambda batch: jax.grad(lambda p: methods.get("score").loss(
      ctx, p, {}, batch, None)[0])(params_of()))
  g2, g1 = grad(two), grad(BATCH)
  np.testing.assert_allclose(g2["linear"]["kernel"], g1["linear"]["kernel"] / 2,
                             rtol=1e-5, atol=1e-7)
  # Never negative: an example under the bound costs exactly 0.
  low = objectives.Batch(x=two.x[1:], y=two.y[1:], x_adv=two.x_adv[1:])
  assert loss_of("score", ctx, batch=low)[0] == 0.0
  # SCORE without extra data attacks from x + 0.001·N(0, 1), with extra data
  # from a uniform start (the same PGD on ‖p(x) - p(·)‖² otherwise).
  key, y = jax.random.PRNGKey(0), jnp.array([0])
  v = {"params": params_of(), "batch_stats": {}}

  @jax.jit
  def both(v):
    out = []
    for recipe, init in (("no_extra_data", "normal"), ("extra_data", "uniform")):
      c = make_ctx(recipe=recipe)
      logits_fn = c.attack_logits_fn(v)
      out.append((objectives.craft_score(c, v, BATCH.x, y, key)[0],
                  attacks.pgd(logits_fn, BATCH.x, y, key, dataclasses.replace(
                      c.attack, loss="se", init=init),
                              target_logits=logits_fn(BATCH.x))))
    return out
  for got, want in both(v):
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_cure_loss_adds_gamma_times_consistency():
  # θ_rev = 0 predicts (1/2, 1/2): KL(u ‖ p) = KL(u ‖ p') = ½·log(1/(4s(1-s))).
  kl_u = 0.5 * math.log(0.25 / (S * (1 - S)))
  extra = {"params": params_of(np.zeros((3, 2), np.float32))}
  loss, m = loss_of("cure", make_ctx(beta=6.0, gamma=1.0), extra=extra)
  assert float(m["cr"]) == pytest.approx(2 * kl_u, rel=1e-5)
  assert loss == pytest.approx(CE + 6 * KL + 2 * kl_u, rel=1e-5)   # 10.1336
  # θ_rev = θ: no consistency penalty.
  loss_same, _ = loss_of("cure", make_ctx(gamma=3.0),
                         extra={"params": params_of()})
  assert loss_same == pytest.approx(CE + 6 * KL, rel=1e-5)


# ------------------------------------------------------------------ AWP
def test_awp_perturbation_size_direction_and_leaves():
  gamma = 0.1
  v = objectives.awp_perturbation(make_ctx(gamma=gamma), params_of(), {}, BATCH,
                                  jnp.array(0))
  # ∂CE(x')/∂W = x' ⊗ (p' - e_0): only row 1, (-s, s) (since p'_0 - 1 = -s).
  expected = np.zeros((3, 2))
  expected[1] = gamma * math.sqrt(7) * np.array([-1, 1]) / math.sqrt(2)
  np.testing.assert_allclose(v["linear"]["kernel"], expected, rtol=1e-5)
  assert float(jnp.linalg.norm(v["linear"]["kernel"])) == pytest.approx(
      gamma * float(np.linalg.norm(W)), rel=1e-5)   # ‖v_l‖ = γ‖w_l‖
  np.testing.assert_array_equal(v["linear"]["bias"], 0.0)   # biases untouched
  off = objectives.awp_perturbation(make_ctx(gamma=gamma, warmup_epochs=2),
                                    params_of(), {}, BATCH, jnp.array(1))
  np.testing.assert_array_equal(off["linear"]["kernel"], 0.0)


def test_awp_step_updates_theta_with_gradient_at_theta_plus_v():
  gamma, lr = 0.1, 0.5
  ctx = make_ctx(gamma=gamma)
  fixed = dataclasses.replace(
      objectives.awp, craft=lambda ctx, v, x, y, rng: (BATCH.x_adv,
                                                       v["batch_stats"]))
  tx = optax.sgd(lr)
  state = training.create_state({"params": params_of(), "batch_stats": {}}, tx,
                             jax.random.PRNGKey(0))
  step = training.make_train_step(ctx, tx, fixed, None, augment=False)
  new, _ = step(state, BATCH.x, BATCH.y)
  # θ + v: row 1 of W becomes (-a, 2 + a), a = γ·√7/√2; z'' = (-a, 2 + a).
  a = gamma * math.sqrt(7 / 2)
  q = 1 / (1 + math.exp(2 + 2 * a))            # p''_0
  grad_row1 = np.array([q - 1, 1 - q])         # x' ⊗ (p'' - e_0)
  want = W.copy()
  want[1] -= lr * grad_row1                    # θ - lr·∇L(θ + v): v removed
  np.testing.assert_allclose(new.params["linear"]["kernel"], want, rtol=1e-5)
  np.testing.assert_allclose(new.params["linear"]["bias"], -lr * grad_row1,
                             rtol=1e-5)
  assert not np.allclose(want[1], W[1] + np.array([-a, a]) - lr * grad_row1)


# ----------------------------------------------------- BatchNorm statistics
class BNNet(nn.Module):
  """BatchNorm on the raw input (PyTorch momentum 0.1, as `models._bn`), then
  a ReLU layer and a linear head: 3 features -> 2 classes."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = x.reshape(x.shape[0], -1)
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     name="bn")(h)
    h = nn.relu(nn.Dense(4, name="hidden")(h))
    return nn.Dense(2, name="linear")(h)


# Clean and adversarial batches with different statistics per feature.
BN_X = jnp.array([[0.9, 0.1, 0.5], [0.7, 0.3, 0.5], [0.8, 0.2, 0.1],
                  [0.6, 0.4, 0.9]])
BN_XADV = jnp.array([[0.1, 0.9, 0.5], [0.3, 0.5, 0.2], [0.2, 0.8, 0.6],
                     [0.4, 0.6, 0.3]])
BN_Y = jnp.array([0, 0, 1, 1])


def bn_setup(method="trades", **kw):
  fns = models.ModelFns(BNNet())
  variables = fns.model.init(jax.random.PRNGKey(0), BN_X)
  hp = {"beta": 6.0}
  hp.update(kw.pop("hp", {}))
  attack = attacks.PGDConfig(epsilon=0.1, step_size=0.03, num_steps=3,
                             unroll=False)
  ctx = objectives.Context(fns, attack, hparams=tuple(sorted(hp.items())), **kw)
  return ctx, variables


def pytorch_running(stat, order, steps, r0):
  """r ← 0.9·r + 0.1·stat[k] for k in `order`, `steps` times (PyTorch's
  BatchNorm update with momentum 0.1)."""
  r = np.asarray(r0, np.float64)
  for _ in range(steps):
    for k in order:
      r = 0.9 * r + 0.1 * np.asarray(stat[k], np.float64)
  return r


def run_fixed_adv(ctx, variables, method, steps):
  """`steps` train steps of `method` with x' fixed to BN_XADV (plain SGD)."""
  fixed = dataclasses.replace(
      method, craft=lambda ctx, v, x, y, rng: (BN_XADV, v["batch_stats"]))
  tx = optax.sgd(0.01)
  state = training.create_state(jax.tree_util.tree_map(jnp.array, variables), tx,
                             jax.random.PRNGKey(1))
  step = training.make_train_step(ctx, tx, fixed, None, augment=False)
  for _ in range(steps):
    state, _ = step(state, BN_X, BN_Y)
  return state.batch_stats["bn"]


MEAN = {"x": jnp.mean(BN_X, 0), "a": jnp.mean(BN_XADV, 0)}
VAR = {"x": jnp.var(BN_X, 0), "a": jnp.var(BN_XADV, 0)}   # biased, as Flax


@pytest.mark.parametrize("method,hp,passes,order", [
    # order: the train-mode passes of one step, x = clean, a = adversarial.
    # yaodongyu/TRADES trades.py: model(x), model(x'), model(x) in train mode.
    ("trades", {}, "authors", "xax"),
    ("trades", {}, "loss", "xa"),
    # csdongxian/AWP trades_AWP: model(x'), model(x), model(x) at θ + v.
    ("awp", {"base": "trades", "gamma": 0.01}, "authors", "axx"),
    # AT-AWP: model(x') at θ + v, then model(x) after the update.
    ("awp", {"gamma": 0.01}, "authors", "ax"),
    # Bag-of-Tricks PGD-AT: model(x'), model(x), update, model(x).
    ("pgd_at", {}, "authors", "axx"),
    ("pgd_at", {}, "loss", "a"),
    ("mart", {"lam": 5.0}, "authors", "xa"),
    # P2333/SCORE without_DDPM: model(x') then model(x).
    ("score", {}, "authors", "ax"),
    ("score", {"recipe": "extra_data"}, "authors", "xa"),
])
def test_running_averages_follow_the_authors_passes(method, hp, passes, order):
  ctx, variables = bn_setup(hp=hp, bn_passes=passes)
  steps = 3
  bs = run_fixed_adv(ctx, variables, methods.get(method), steps)
  want = pytorch_running(MEAN, order, steps, np.zeros(3))
  np.testing.assert_allclose(bs["mean"], want, rtol=1e-5, atol=1e-6)
  want_var = pytorch_running(VAR, order, steps, np.ones(3))
  np.testing.assert_allclose(bs["var"], want_var, rtol=1e-5, atol=1e-6)


def test_trades_steady_state_is_two_thirds_clean():
  # Three passes (x, x', x): r = (0.181·s_x + 0.09·s_x')/0.271 = 0.668 clean;
  # two passes (x, x') would give 0.09/0.19 = 0.474.
  ctx, variables = bn_setup(bn_passes="authors")
  bs = run_fixed_adv(ctx, variables, objectives.trades, 80)
  frac = (np.asarray(bs["mean"]) - MEAN["a"]) / (MEAN["x"] - MEAN["a"])
  np.testing.assert_allclose(frac, 0.181 / 0.271, atol=2e-4)


def test_train_mode_ce_attack_updates_running_averages_per_pass():
  # Bag-of-Tricks / AT-AWP attack_pgd in train mode: one update per step at
  # x_0 … x_{K-1}, one for the final loss at x_K; x' is unchanged by it.
  ctx, variables = bn_setup(bn_passes="authors", attack_bn="train")
  key = jax.random.PRNGKey(5)
  x_adv, bs = objectives.craft_ce(ctx, variables, BN_X, BN_Y, key)
  logits_fn = ctx.attack_logits_fn(variables)
  iterates = [attacks.pgd(logits_fn, BN_X, BN_Y, key, dataclasses.replace(
      ctx.attack, num_steps=k)) for k in range(ctx.attack.num_steps + 1)]
  np.testing.assert_allclose(x_adv, iterates[-1], atol=1e-6)
  stats = {str(k): jnp.mean(xk, 0) for k, xk in enumerate(iterates)}
  want = pytorch_running(stats, "0123", 1, np.zeros(3))
  np.testing.assert_allclose(bs["bn"]["mean"], want, rtol=1e-5, atol=1e-6)
  # Restarts: every restart's passes count (2·(K + 1) updates).
  two = dataclasses.replace(ctx, attack=dataclasses.replace(ctx.attack,
                                                            restarts=2))
  _, bs2 = objectives.craft_ce(two, variables, BN_X, BN_Y, key)
  assert not np.allclose(bs2["bn"]["mean"], bs["bn"]["mean"])
  # Under 'loss', and for the attacks whose authors craft in eval mode (or
  # without tracking), the running averages are left as they were.
  for c, craft in ((dataclasses.replace(ctx, bn_passes="loss"), objectives.craft_ce),
                   (ctx, objectives.craft_kl), (ctx, objectives.craft_ce_normal)):
    _, same = craft(c, variables, BN_X, BN_Y, key)
    np.testing.assert_array_equal(same["bn"]["mean"],
                                  variables["batch_stats"]["bn"]["mean"])


def test_eval_mode_crafting_uses_running_averages_and_keeps_them():
  ctx, variables = bn_setup(bn_passes="authors", attack_bn="eval")
  # Running averages far from this batch's statistics.
  variables = {"params": variables["params"],
               "batch_stats": {"bn": {"mean": jnp.array([0.2, 0.7, 0.1]),
                                      "var": jnp.array([4.0, 0.5, 2.0])}}}
  fns = ctx.fns
  assert not np.allclose(fns.logits(variables, BN_X, train=False),
                         fns.logits(variables, BN_X, train=True), atol=1e-3)
  key = jax.random.PRNGKey(2)
  for craft in (objectives.craft_kl, objectives.craft_ce_normal,
                objectives.craft_ce):
    x_eval, bs = craft(ctx, variables, BN_X, BN_Y, key)
    np.testing.assert_array_equal(bs["bn"]["mean"],
                                  variables["batch_stats"]["bn"]["mean"])
    np.testing.assert_array_equal(bs["bn"]["var"],
                                  variables["batch_stats"]["bn"]["var"])
    x_train, _ = craft(dataclasses.replace(ctx, attack_bn="train"), variables,
                       BN_X, BN_Y, key)
    assert not np.allclose(x_eval, x_train), craft.__name__
  # The eval-mode TRADES attack is PGD on the running-average model.
  eval_fn = lambda xa: fns.logits(variables, xa, train=False)
  want = attacks.pgd(eval_fn, BN_X, BN_Y, key, dataclasses.replace(
      ctx.attack, loss="kl", init="normal"), target_logits=eval_fn(BN_X))
  np.testing.assert_allclose(objectives.craft_kl(ctx, variables, BN_X, BN_Y,
                                                 key)[0], want, atol=1e-6)


# ------------------------------------------------------------------ CURE
def test_top_fraction_mask_keeps_exactly_top_percent():
  score = jnp.array([5., 1., 9., 3., 7., 2., 8., 0., 6., 4.])
  mask = np.asarray(cure.top_fraction_mask(score, 30.0))
  np.testing.assert_array_equal(mask, [1, 0, 1, 1, 1, 0, 1, 0, 1, 1])
  big = jax.random.uniform(jax.random.PRNGKey(0), (7, 9, 4))
  for p in (0.0, 12.5, 50.0, 99.0):
    m = np.asarray(cure.top_fraction_mask(big, p))
    assert m.sum() == big.size - int(big.size * p / 100)
    assert np.asarray(big)[m == 1].min() >= np.asarray(big)[m == 0].max(
        initial=-1)
  ties = np.asarray(cure.top_fraction_mask(jnp.ones(4), 50.0))
  np.testing.assert_array_equal(ties, [0, 0, 1, 1])   # earlier ones conserved


def test_rgp_mask_on_linear_model():
  # RGP = α|x ⊗ (p - e_0)| + (1-α)|x' ⊗ (p' - e_0)|:
  #   row 0: α(1-s) twice, row 1: (1-α)s twice, row 2: 0 twice.
  scores = cure.rgp_scores(make_ctx(), params_of(), {}, BATCH, 0.1)
  want = np.array([[0.1 * (1 - S)] * 2, [0.9 * S] * 2, [0., 0.]])
  np.testing.assert_allclose(scores["linear"]["kernel"], want, rtol=1e-5)
  # p = 40: ⌊6·0.4⌋ = 2 conserved (row 2); p = 70: 4 conserved (rows 0, 2).
  for p, want_mask in [(40.0, [[1, 1], [1, 1], [0, 0]]),
                       (70.0, [[0, 0], [1, 1], [0, 0]])]:
    mask = cure.rgp_mask(make_ctx(alpha=0.1, p=p), params_of(), {}, BATCH)
    np.testing.assert_array_equal(mask["linear"]["kernel"], want_mask)
    np.testing.assert_array_equal(mask["linear"]["bias"], [1, 1])


def test_revision_update_rule():
  extra = {"params": {"w": jnp.array([2.0])}}
  theta = {"w": jnp.array([4.0])}
  key = jax.random.PRNGKey(3)
  always = make_ctx(r=1.0, d=0.999)
  # step 1: d_1 = min(1 - 1/2, 0.999) = 0.5.
  out = cure.update_revision(always, extra, theta, jnp.array(1), key)
  assert float(out["params"]["w"][0]) == pytest.approx(3.0)
  out = cure.update_revision(always, extra, theta, jnp.array(100000), key)
  assert float(out["params"]["w"][0]) == pytest.approx(0.999 * 2 + 0.001 * 4)
  never = cure.update_revision(make_ctx(r=0.0), extra, theta, jnp.array(5), key)
  assert float(never["params"]["w"][0]) == 2.0
  # r = 0.2: the update happens on about a fifth of the steps.
  keys = jax.random.split(key, 4000)
  moved = jax.vmap(lambda k: cure.update_revision(
      make_ctx(r=0.2), extra, theta, jnp.array(1), k)["params"]["w"][0])(keys)
  assert abs(float(jnp.mean(moved != 2.0)) - 0.2) < 0.03


# ------------------------------------------------------------------ AFT
def test_aft_schedule_warmup_then_decay():
  import dataclasses
  from rift_jax import training
  optim = training.Optim(
      lr=0.1, epochs=10, warmup_epochs=3.0, start_lr_factor=0.1,
      end_lr_factor=0.0, decay_shape="linear")
  f = schedules.slow_start_fast_decay(optim, 10)
  for t, want in [(0, 0.01), (15, 0.055), (30, 0.1), (65, 0.05), (100, 0.0)]:
    assert float(f(t)) == pytest.approx(want, abs=1e-7), t
  optim = dataclasses.replace(optim, decay_shape="cosine")
  assert float(schedules.slow_start_fast_decay(optim, 10)(65)) == pytest.approx(0.05)
  optim = dataclasses.replace(optim, decay_shape="exponential",
                              end_lr_factor=0.01)
  g = schedules.slow_start_fast_decay(optim, 10)
  assert float(g(65)) == pytest.approx(0.01, rel=1e-5)   # 0.1·0.01^(35/70)
  assert float(g(100)) == pytest.approx(0.001, rel=1e-5)
  optim = dataclasses.replace(optim, schedule="slow_start_fast_decay")
  assert float(schedules.make_schedule(optim, 10)(30)) == pytest.approx(0.1)


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize("method,hp,bad", [
    ("trades", {"beta": -1.0}, "trades.beta=-1.0"),
    ("mart", {"lam": -0.5}, "mart.lam=-0.5"),
    ("score", {"beta": -2.0}, "score.beta=-2.0"),
    ("score", {"recipe": "ddpm"}, "score.recipe='ddpm'"),
    ("score", {"clip_loss": 1.5}, "score.clip_loss=1.5"),
    ("awp", {"gamma": -1e-3}, "awp.gamma=-0.001"),
    ("awp", {"base": "mart"}, "awp.base='mart'"),
    ("cure", {"gamma": -1.0}, "cure.gamma=-1.0"),
    ("cure", {"p": 100.0}, "cure.p=100.0"),
    ("cure", {"p": -1.0}, "cure.p=-1.0"),
    ("cure", {"r": 1.5}, "cure.r=1.5"),
    ("cure", {"beta": -6.0}, "cure.beta=-6.0"),
])
def test_bad_hyperparameters_are_one_line_errors(method, hp, bad):
  with pytest.raises(UserError) as e:
    methods.get(method).check(make_ctx(**hp))
  assert bad in str(e.value) and "\n" not in str(e.value)


def test_unknown_method_lists_valid_ones():
  with pytest.raises(UserError) as e:
    methods.get("tradez")
  for name in ("natural", "pgd_at", "trades", "mart", "score", "awp", "cure",
               "aft"):
    assert repr(name) in str(e.value)
