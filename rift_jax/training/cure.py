"""CURE — Conserve, Update, Revise (Gowda, Zonooz & Arani, ICLR 2024).

Adversarial training of a naturally trained model (`config.init_from`) in
three parts, all in one compiled train step:

- Update/conserve. Robust Gradient Prominence per weight,
    RGP(w) = α·|∂CE(f(x), y)/∂w| + (1 − α)·|∂CE(f(x'), y)/∂w|,
  and per layer (every Conv/Dense kernel) the weights whose RGP is below the
  p-th percentile are conserved: their loss gradient is set to zero before
  the optimiser. Exactly ⌊n·p/100⌋ of a kernel's n weights are conserved
  (ties broken by position), so exactly the top (100 − p)% get gradients.
  BatchNorm parameters and biases are always updated. Conserved weights still
  feel weight decay and momentum, as in the official PyTorch code, where both
  live in the optimiser.
- Revise. With probability r per step, θ_rev ← d_t·θ_rev + (1 − d_t)·θ with
  d_t = min(1 − 1/(t + 1), d) at step t = 1, 2, ... (the official warm-up of
  the decay); θ_rev starts as θ_0 and covers every parameter (BN scales and
  biases too; running averages are not averaged, as the official EMA of
  `parameters()`). θ_rev lives in `TrainState.extra` and is checkpointed.
- Consistency. L = CE(f(x), y) + β·KL(p(x) ‖ p(x')) + γ·L_CR with
    L_CR = KL(p_rev(x) ‖ p_θ(x)) + KL(p_rev(x') ‖ p_θ(x')),
  x' from TRADES' KL attack; the revision logits are constants (no
  gradient) computed in train mode (batch statistics), as the official code
  runs its EMA model in train mode.
- BatchNorm, as the official code (`train_util/adversarial_loss.py`
  `cure_loss_dual`): the attack runs in eval mode (`attack.bn_mode='eval'`
  in configs/methods_paper.py), then θ's running averages see two train-mode
  passes, x then x'. The EMA model's own passes move only its own averages,
  which nothing here keeps.

Defaults (paper, ResNet-18): p = 30, α = 0.1, γ = 1.0, r = 0.2, d = 0.999,
β = 6 (TRADES). WRN-34-10: p = 50, α = 0.3, γ = 0.5.

Where the official code (NeurAI-Lab/CURE, `rgp_soft` mode) differs — we
implement the paper:
- its score is signed, α·g_nat + (1 − α)·g_rob, not of absolute values, and
  the "robust" gradient is that of the KL term, not CE(f(x'), y);
- it masks only the first conv of each residual block (parameter names
  containing 'conv1', the stem excluded); every other layer is fully updated;
- its threshold is `np.percentile` (interpolated) with a strict `<`;
- its TRADES β defaults to 5 (`--trades_beta`, not set by the README) and
  its README's parameters use weight decay 7e-4 (its text says 5e-3);
- its attack uses ε = 0.031, step 0.007 (`cure_loss_dual` defaults); we use
  the common 8/255, 2/255.
Schedule: the README trains 120 epochs at lr 0.1 and the code's default
`--epoch_step 100 150` decays ×0.1 once, at (1-based) epoch 100: 99 epochs
at 0.1, then 21 at 0.01 (`configs/methods_paper.py`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rift_jax import attacks, models
from rift_jax.training import objectives
from rift_jax.errors import check_range
from rift_jax.training.objectives import Batch, Context


def hparams(ctx: Context) -> dict:
  """CURE's hyperparameters with the paper's ResNet-18 defaults."""
  d = dict(beta=6.0, gamma=1.0, p=30.0, alpha=0.1, r=0.2, d=0.999)
  return {k: float(ctx.hp(k, v)) for k, v in d.items()}


def validate(ctx: Context) -> None:
  h = hparams(ctx)
  check_range("cure.beta", h["beta"], 0.0)
  check_range("cure.gamma", h["gamma"], 0.0)
  check_range("cure.p", h["p"], 0.0, 100.0, high_open=True)
  check_range("cure.alpha", h["alpha"], 0.0, 1.0)
  check_range("cure.r", h["r"], 0.0, 1.0)
  check_range("cure.d", h["d"], 0.0, 1.0)


# ----------------------------------------------------------- conserve/update
def top_fraction_mask(score: jax.Array, p: float) -> jax.Array:
  """1.0 where `score` is among the top (100 − p)% of its entries, else 0.0.

  Exactly k = ⌊n·p/100⌋ entries (the lowest scores; among equal scores the
  earlier ones in row-major order) get 0. Shape of `score`.
  """
  flat = score.reshape(-1)
  k = int(flat.size * p / 100.0)
  rank = jnp.argsort(jnp.argsort(flat, stable=True), stable=True)
  return (rank >= k).astype(score.dtype).reshape(score.shape)


def rgp_scores(ctx: Context, params, batch_stats, batch: Batch, alpha: float):
  """RGP per parameter, a pytree like `params`:
  α·|∂CE(f(x), y)/∂w| + (1 − α)·|∂CE(f(x'), y)/∂w| (train-mode BN, mean CE).

  One forward pass over clean and adversarial images, two pullbacks.
  """
  def logits(p):
    z, z_adv, _ = objectives.clean_and_adv_logits(ctx, p, batch_stats, batch.x,
                                                  batch.x_adv)
    return z, z_adv

  (z, z_adv), pullback = jax.vjp(logits, params)
  dce = jax.grad(lambda zz: jnp.mean(attacks.cross_entropy(zz, batch.y)))
  g_nat, = pullback((dce(z), jnp.zeros_like(z_adv)))
  g_adv, = pullback((jnp.zeros_like(z), dce(z_adv)))
  return jax.tree_util.tree_map(
      lambda a, b: alpha * jnp.abs(a) + (1 - alpha) * jnp.abs(b), g_nat, g_adv)


def rgp_mask(ctx: Context, params, batch_stats, batch: Batch):
  """Gradient mask like `params`: per Conv/Dense kernel, 0 for the ⌊n·p/100⌋
  weights with the lowest RGP (conserved), 1 elsewhere (updated)."""
  h = hparams(ctx)
  scores = rgp_scores(ctx, params, batch_stats, batch, h["alpha"])
  kernels = models.module_mask(params, list(models.perturbable_modules(params)))
  return jax.tree_util.tree_map(
      lambda is_k, s: top_fraction_mask(s, h["p"]) if is_k else jnp.ones_like(s),
      kernels, scores)


# ------------------------------------------------------------------ revise
def init_revision(variables) -> dict:
  """θ_rev starts as θ_0 (a copy of the parameters)."""
  return {"params": jax.tree_util.tree_map(jnp.array, variables["params"])}


def revision_decay(step: jax.Array, d: float) -> jax.Array:
  """d_t = min(1 − 1/(t + 1), d) for the t-th optimiser step (t ≥ 1)."""
  return jnp.minimum(1.0 - 1.0 / (step.astype(jnp.float32) + 1.0), d)


def update_revision(ctx: Context, extra: dict, params, step: jax.Array,
                    rng: jax.Array) -> dict:
  """With probability r: θ_rev ← d_t·θ_rev + (1 − d_t)·θ; else unchanged.

  `params` are θ after the optimiser step, `step` its 1-based count."""
  h = hparams(ctx)
  do = jax.random.bernoulli(rng, h["r"])
  d_t = revision_decay(step, h["d"])
  new = jax.tree_util.tree_map(
      lambda e, p: jnp.where(do, d_t * e + (1.0 - d_t) * p, e),
      extra["params"], params)
  return {"params": new}


# ----------------------------------------------------------------- loss
def consistency(logits, adv_logits, rev_logits, rev_adv_logits) -> jax.Array:
  """L_CR = mean KL(p_rev(x) ‖ p(x)) + mean KL(p_rev(x') ‖ p(x')) (scalar)."""
  return (jnp.mean(attacks.kl_divergence(logits, rev_logits))
          + jnp.mean(attacks.kl_divergence(adv_logits, rev_adv_logits)))


def cure_loss(ctx: Context, params, batch_stats, batch: Batch, extra):
  """CE(f(x), y) + β·KL(p(x) ‖ p(x')) + γ·L_CR; `extra['params']` is θ_rev."""
  h = hparams(ctx)
  z, z_adv, bs = objectives.clean_and_adv_logits(ctx, params, batch_stats,
                                                 batch.x, batch.x_adv)
  ce, kl = objectives.trades_terms(z, z_adv, batch.y)
  rev = {"params": extra["params"], "batch_stats": batch_stats}
  r, r_adv = (jax.lax.stop_gradient(ctx.fns.logits(rev, xx, train=True))
              for xx in (batch.x, batch.x_adv))
  cr = consistency(z, z_adv, r, r_adv)
  loss = ce + h["beta"] * kl + h["gamma"] * cr
  return loss, (bs, objectives.pair_metrics(loss, z, z_adv, batch.y, ce=ce,
                                             kl=kl, cr=cr))


method = objectives.Method(
    "cure", cure_loss, craft=objectives.craft_kl, grad_mask=rgp_mask,
    init_extra=init_revision, update_extra=update_revision, validate=validate,
    starts_from_pretrained=True)
