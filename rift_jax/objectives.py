"""Training methods: the inner maximisation, the outer loss, and step hooks.

A `Method` is split the way the train step (`train.make_train_step`) needs it:

  craft(ctx, variables, x, y, rng) -> x_adv      inner maximisation, against θ
  loss(ctx, params, batch_stats, batch, extra)   outer objective (differentiated)
      -> (loss, (new_batch_stats, metrics))
  perturb_weights(...) -> v                      AWP: gradient taken at θ + v
  grad_mask(...) -> mask                         CURE: conserve (0) / update (1)
  init_extra(variables), update_extra(...)       state kept in TrainState.extra

`batch` is a `Batch(x, y, x_adv, rng)`: `x` `[batch, H, W, C]` already
augmented, `y` `[batch]` int labels, `x_adv` like `x` (None for clean
methods). `ctx` is a hashable `Context` holding the model functions and the
static hyperparameters (`ctx.hp(name)` reads `config.<method>.<name>`), so the
jitted step compiles once. Every `Method` is also callable as a plain
objective `method(ctx, params, batch_stats, x, y, rng) -> (loss, aux)`
(attack inside), which is what `OBJECTIVES[name]` gives to older callers.

Losses (per-example terms are averaged over the batch; p(·) = softmax):
- natural:  CE(f(x), y).
- pgd_at:   CE(f(x'), y), x' = PGD on CE (Madry et al. 2018).
- trades:   CE(f(x), y) + β·KL(p(x) ‖ p(x')), x' = PGD on KL(p(x) ‖ p(·))
            from x + 0.001·N(0, 1) (Zhang et al. 2019; β = 6).
- mart:     BCE(p(x'), y) + λ·KL(p(x) ‖ p(x'))·(1 − p_y(x)), x' = PGD on CE
            from x + 0.001·N(0, 1) (Wang et al. 2020; λ = 6), with
            BCE(p, y) = −log p_y − log(1 − max_{k≠y} p_k). As the official
            code, the second log is log(1.0001 − max_{k≠y} p_k) (bounded when
            the wrong class is certain), the clean probabilities are not
            detached, and the weight uses the clean p_y(x).
- score:    ‖p(x) − e_y‖² + β·‖p(x) − p(x')‖² (Pang et al. ICML 2022, "SCORE":
            TRADES with CE and KL replaced by squared errors on the softmax
            outputs; β = 4 as the authors' README for TRADES-SE). As the
            official code, x' maximises the same squared error
            ‖p(x) − p(x')‖² (`attacks.pgd` loss 'se') from a uniform start.
- awp:      AT or TRADES (`awp.base`) at θ + v; v = one ascent step on the
            weights, rescaled per layer to ‖v_l‖ = γ‖w_l‖ (Wu et al. 2020;
            γ = 5e-3). Only Conv/Dense kernels are perturbed (the official
            code perturbs parameters with 'weight' in their name and ≥ 2
            dims: not BatchNorm, not biases). x' is crafted against θ before
            v is computed and reused for the loss at θ + v, as the official
            code. The update is applied to θ, so v is gone after the step:
            θ ← θ − lr·∇L(θ + v) (with momentum and weight decay on θ; the
            official code's weight decay sees θ + v).
            The official defaults differ by base: AT-AWP γ = 1e-2 and no
            warm-up, TRADES-AWP γ = 5e-3 and AWP from (1-based) epoch 10,
            i.e. `awp.warmup_epochs = 9` here.
- cure:     see `rift_jax/cure.py` (registered here).
- aft:      PGD-AT started from a naturally trained model with the
            'slow start, fast decay' schedule, see `rift_jax/aft.py`.

BatchNorm policy (written down because it changes results):
- While crafting adversarial examples, BN runs in the mode `ctx.attack_bn`
  ('train': batch statistics, as Bag-of-Tricks' PGD-AT; 'eval': running
  averages, as the official TRADES/MART/CURE code). Attack passes never
  update the running averages.
- The loss passes run in train mode and update the running averages. Methods
  with a clean and an adversarial term run two separate forward passes (clean
  first), each with its own batch statistics, and the running averages are
  updated twice per step, exactly as two PyTorch train-mode calls do.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from rift_jax import attacks, models
from rift_jax.errors import UserError, check_choice, check_range
from rift_jax.models import ModelFns


@dataclasses.dataclass(frozen=True)
class Context:
  fns: ModelFns
  attack: attacks.PGDConfig
  attack_bn: str = "train"  # 'train' | 'eval'
  hparams: tuple = ()       # method-specific (name, value) pairs

  def hp(self, name: str, default: Any = None) -> Any:
    return dict(self.hparams).get(name, default)

  def attack_logits_fn(self, variables):
    train = self.attack_bn == "train"
    return lambda xa: self.fns.logits(variables, xa, train=train)


class Batch(NamedTuple):
  x: jax.Array                  # [batch, H, W, C] in [0, 1]
  y: jax.Array                  # [batch] int
  x_adv: jax.Array | None = None
  rng: jax.Array | None = None  # for plain objectives that craft inside


def _accuracy(logits, y):
  return jnp.mean(jnp.argmax(logits, -1) == y)


def _variables(params, batch_stats):
  return {"params": params, "batch_stats": batch_stats}


# ------------------------------------------------------- the Method record
@dataclasses.dataclass(frozen=True)
class Method:
  """One training method, in the pieces the train step composes."""
  name: str
  loss: Callable                            # (ctx, params, bs, batch, extra)
  craft: Callable | None = None             # (ctx, variables, x, y, rng) -> x_adv
  perturb_weights: Callable | None = None   # (ctx, params, bs, batch, epoch) -> v
  grad_mask: Callable | None = None         # (ctx, params, bs, batch) -> mask
  init_extra: Callable | None = None        # (variables) -> extra
  update_extra: Callable | None = None      # (ctx, extra, params, step, rng) -> extra
  validate: Callable | None = None          # (ctx) -> None or UserError
  starts_from_pretrained: bool = False      # needs config.init_from (CURE, AFT)

  def check(self, ctx: Context) -> None:
    if self.validate is not None:
      self.validate(ctx)

  def __call__(self, ctx, params, batch_stats, x, y, rng, extra=None):
    """The method as one objective (attack inside): (loss, (bs, metrics))."""
    x_adv = None
    if self.craft is not None:
      x_adv = self.craft(ctx, _variables(params, batch_stats), x, y, rng)
    return self.loss(ctx, params, batch_stats, Batch(x, y, x_adv, rng), extra)


def from_objective(objective: Callable, name: str = "objective") -> Method:
  """Wraps a plain objective `(ctx, params, bs, x, y, rng) -> (loss, aux)`."""
  if isinstance(objective, Method):
    return objective
  return Method(name, lambda ctx, p, bs, b, extra: objective(ctx, p, bs, b.x,
                                                             b.y, b.rng))


# ------------------------------------------------------ inner maximisation
def craft_ce(ctx: Context, variables, x, y, rng):
  """x' = PGD on CE with the configured attack (PGD-AT, AWP-AT)."""
  return attacks.pgd(ctx.attack_logits_fn(variables), x, y, rng, ctx.attack)


def craft_kl(ctx: Context, variables, x, y, rng, init: str = "normal",
             loss: str = "kl"):
  """TRADES' inner maximisation: x' = argmax KL(p(x) ‖ p(x')) by PGD from
  x + init_std·N(0, 1) (`init='normal'`), target p(x) in the attack's BN mode.
  `loss='se'` maximises ‖p(x) − p(x')‖² instead (SCORE)."""
  logits_fn = ctx.attack_logits_fn(variables)
  cfg = dataclasses.replace(ctx.attack, loss=loss, init=init)
  return attacks.pgd(logits_fn, x, y, rng, cfg,
                     target_logits=jax.lax.stop_gradient(logits_fn(x)))


def craft_ce_normal(ctx: Context, variables, x, y, rng):
  """MART's inner maximisation: PGD on CE from x + 0.001·N(0, 1)."""
  cfg = dataclasses.replace(ctx.attack, loss="ce", init="normal")
  return attacks.pgd(ctx.attack_logits_fn(variables), x, y, rng, cfg)


def craft_se_uniform(ctx: Context, variables, x, y, rng):
  """SCORE's inner maximisation: PGD on ‖p(x) − p(x')‖² from a uniform start."""
  return craft_kl(ctx, variables, x, y, rng, init="uniform", loss="se")


# ------------------------------------------------------------ outer losses
def clean_and_adv_logits(ctx: Context, params, batch_stats, x, x_adv):
  """Two train-mode passes, clean then adversarial, chaining the BN running
  averages: -> (logits `[batch, classes]`, adv logits, new batch_stats)."""
  z, bs = ctx.fns.logits_and_stats(_variables(params, batch_stats), x)
  z_adv, bs = ctx.fns.logits_and_stats(_variables(params, bs), x_adv)
  return z, z_adv, bs


def natural_loss(ctx: Context, params, batch_stats, batch: Batch, extra=None):
  """Plain cross-entropy on clean images."""
  del extra
  logits, bs = ctx.fns.logits_and_stats(_variables(params, batch_stats), batch.x)
  loss = jnp.mean(attacks.cross_entropy(logits, batch.y))
  return loss, (bs, {"loss": loss, "acc": _accuracy(logits, batch.y)})


def at_loss(ctx: Context, params, batch_stats, batch: Batch, extra=None):
  """Madry et al. PGD-AT: mean CE(f(x'), y)."""
  del extra
  logits, bs = ctx.fns.logits_and_stats(_variables(params, batch_stats),
                                        batch.x_adv)
  loss = jnp.mean(attacks.cross_entropy(logits, batch.y))
  return loss, (bs, {"loss": loss, "acc": _accuracy(logits, batch.y)})


def trades_terms(logits, adv_logits, y):
  """(mean CE(f(x), y), mean KL(p(x) ‖ p(x'))), both scalars; p(x) not detached."""
  return (jnp.mean(attacks.cross_entropy(logits, y)),
          jnp.mean(attacks.kl_divergence(adv_logits, logits)))


def pair_metrics(loss, logits, adv_logits, y, **terms):
  return {"loss": loss, "acc": _accuracy(adv_logits, y),
          "clean_acc": _accuracy(logits, y), **terms}


def trades_loss(ctx: Context, params, batch_stats, batch: Batch, extra=None):
  """TRADES: CE(f(x), y) + β·KL(p(x) ‖ p(x')), β = `trades.beta` (default 6)."""
  del extra
  beta = float(ctx.hp("beta", 6.0))
  z, z_adv, bs = clean_and_adv_logits(ctx, params, batch_stats, batch.x,
                                      batch.x_adv)
  ce, kl = trades_terms(z, z_adv, batch.y)
  loss = ce + beta * kl
  return loss, (bs, pair_metrics(loss, z, z_adv, batch.y, ce=ce, kl=kl))


def mart_terms(logits, adv_logits, y):
  """MART's per-example terms `[batch]`: (BCE(p(x'), y), KL(p(x) ‖ p(x')),
  1 − p_y(x)); loss = mean(BCE) + λ·mean(KL·(1 − p_y(x)))."""
  p_adv = jax.nn.softmax(adv_logits)
  onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
  p_other = jnp.max(jnp.where(onehot, -jnp.inf, p_adv), axis=-1)
  bce = attacks.cross_entropy(adv_logits, y) - jnp.log(1.0001 - p_other)
  kl = attacks.kl_divergence(adv_logits, logits)
  p_y = jnp.take_along_axis(jax.nn.softmax(logits), y[:, None], axis=-1)[:, 0]
  return bce, kl, 1.0 - p_y


def mart_loss(ctx: Context, params, batch_stats, batch: Batch, extra=None):
  """MART: BCE(p(x'), y) + λ·KL(p(x) ‖ p(x'))·(1 − p_y(x)), λ = `mart.lam`."""
  del extra
  lam = float(ctx.hp("lam", 6.0))
  z, z_adv, bs = clean_and_adv_logits(ctx, params, batch_stats, batch.x,
                                      batch.x_adv)
  bce, kl, weight = mart_terms(z, z_adv, batch.y)
  loss = jnp.mean(bce) + lam * jnp.mean(kl * weight)
  return loss, (bs, pair_metrics(loss, z, z_adv, batch.y, bce=jnp.mean(bce),
                                  kl=jnp.mean(kl)))


def score_terms(logits, adv_logits, y):
  """SCORE's per-example squared errors `[batch]` on softmax outputs:
  (‖p(x) − e_y‖², ‖p(x) − p(x')‖²)."""
  p, p_adv = jax.nn.softmax(logits), jax.nn.softmax(adv_logits)
  onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=p.dtype)
  return jnp.sum((p - onehot) ** 2, -1), jnp.sum((p - p_adv) ** 2, -1)


def score_loss(ctx: Context, params, batch_stats, batch: Batch, extra=None):
  """SCORE: ‖p(x) − e_y‖² + β·‖p(x) − p(x')‖², β = `score.beta` (default 4)."""
  del extra
  beta = float(ctx.hp("beta", 4.0))
  z, z_adv, bs = clean_and_adv_logits(ctx, params, batch_stats, batch.x,
                                      batch.x_adv)
  se_nat, se_rob = map(jnp.mean, score_terms(z, z_adv, batch.y))
  loss = se_nat + beta * se_rob
  return loss, (bs, pair_metrics(loss, z, z_adv, batch.y, se_nat=se_nat,
                                  se_rob=se_rob))


# ---------------------------------------------------------------- AWP
AWP_BASES = ("pgd_at", "trades")


def layerwise_rescale(direction, params, gamma: float, eps: float = 1e-20):
  """v with v_l = γ·‖w_l‖·d_l/‖d_l‖ on every Conv/Dense kernel l (Frobenius
  norms), 0 on every other leaf (BatchNorm, biases)."""
  kernels = models.module_mask(params, list(models.perturbable_modules(params)))

  def scale(is_kernel, d, w):
    if not is_kernel:
      return jnp.zeros_like(w)
    return gamma * jnp.linalg.norm(w) / (jnp.linalg.norm(d) + eps) * d
  return jax.tree_util.tree_map(scale, kernels, direction, params)


def awp_perturbation(ctx: Context, params, batch_stats, batch: Batch, epoch):
  """Adversarial weight perturbation: one ascent step on the base loss at θ
  (the official proxy's SGD step; its length does not matter after the
  rescaling), v_l = γ‖w_l‖·∇_l/‖∇_l‖; zero before `awp.warmup_epochs`."""
  base = OBJECTIVES[ctx.hp("base", "pgd_at")]
  grads = jax.grad(lambda p: base.loss(ctx, p, batch_stats, batch)[0])(params)
  v = layerwise_rescale(grads, params, float(ctx.hp("gamma", 5e-3)))
  on = (epoch >= int(ctx.hp("warmup_epochs", 0))).astype(jnp.float32)
  return jax.tree_util.tree_map(lambda a: on * a, v)


def awp_loss(ctx: Context, params, batch_stats, batch: Batch, extra=None):
  return OBJECTIVES[ctx.hp("base", "pgd_at")].loss(ctx, params, batch_stats,
                                                   batch, extra)


def awp_craft(ctx: Context, variables, x, y, rng):
  return OBJECTIVES[ctx.hp("base", "pgd_at")].craft(ctx, variables, x, y, rng)


# ---------------------------------------------------------- validation
def check_nonnegative(*names: str, method: str, **defaults):
  """A validator: each hyperparameter `name` of `method` must be ≥ 0."""
  def validate(ctx: Context):
    for n in names:
      check_range(f"{method}.{n}", float(ctx.hp(n, defaults.get(n, 0.0))), 0.0)
  return validate


def _validate_awp(ctx: Context):
  base = ctx.hp("base", "pgd_at")
  check_choice("awp.base", base, AWP_BASES)
  check_range("awp.gamma", float(ctx.hp("gamma", 5e-3)), 0.0)
  check_range("awp.warmup_epochs", int(ctx.hp("warmup_epochs", 0)), 0)
  if base == "trades":
    check_range("awp.beta", float(ctx.hp("beta", 6.0)), 0.0)


def validate_method(name: str, ctx: Context) -> Method:
  """The registered method `name`, after checking its hyperparameters."""
  check_choice("method", name, tuple(OBJECTIVES))
  method = OBJECTIVES[name]
  method.check(ctx)
  return method


# ------------------------------------------------------------ registry
natural = Method("natural", natural_loss)
pgd_at = Method("pgd_at", at_loss, craft=craft_ce)
trades = Method("trades", trades_loss, craft=craft_kl,
                validate=check_nonnegative("beta", method="trades", beta=6.0))
mart = Method("mart", mart_loss, craft=craft_ce_normal,
              validate=check_nonnegative("lam", method="mart", lam=6.0))
score = Method("score", score_loss, craft=craft_se_uniform,
               validate=check_nonnegative("beta", method="score", beta=4.0))
awp = Method("awp", awp_loss, craft=awp_craft, perturb_weights=awp_perturbation,
             validate=_validate_awp)
# AFT is PGD-AT started from a natural model; its schedule is in rift_jax/aft.py.
aft = Method("aft", at_loss, craft=craft_ce, starts_from_pretrained=True)

OBJECTIVES: dict[str, Method] = {m.name: m for m in
                                 (natural, pgd_at, trades, mart, score, awp, aft)}

# Methods that carry state besides params/batch_stats (kept in TrainState.extra
# and checkpointed): method -> function(variables) -> initial extra state.
EXTRA_STATE: dict[str, Callable] = {}


def register(method: Method) -> Method:
  """Adds a method (and its extra-state initialiser) to the registries."""
  OBJECTIVES[method.name] = method
  if method.init_extra is not None:
    EXTRA_STATE[method.name] = method.init_extra
  return method


# CURE lives in its own module and registers itself here.
from rift_jax import cure as _cure  # noqa: E402,F401
