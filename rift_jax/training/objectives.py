"""Training methods: the inner maximisation, the outer loss, and step hooks.

A `Method` is split the way the train step (`train.make_train_step`) needs it:

  craft(ctx, variables, x, y, rng) -> (x_adv, batch_stats)
                                                 inner maximisation, against θ
  loss(ctx, params, batch_stats, batch, extra)   outer objective (differentiated)
      -> (loss, (new_batch_stats, metrics))
  perturb_weights(...) -> v                      AWP: gradient taken at θ + v
  grad_mask(...) -> mask                         CURE: conserve (0) / update (1)
  after_update(ctx, params, batch_stats, batch)  statistics-only passes at the
      -> batch_stats                             updated θ (see BatchNorm policy)
  init_extra(variables), update_extra(...)       state kept in TrainState.extra

`batch` is a `Batch(x, y, x_adv, rng)`: `x` `[batch, H, W, C]` already
augmented, `y` `[batch]` int labels, `x_adv` like `x` (None for clean
methods). `craft` returns the BN running averages after its own passes (the
ones it was given unless the attack updates them) and the loss starts from
those. `ctx` is a hashable `Context` holding the model functions and the
static hyperparameters (`ctx.hp(name)` reads `config.<method>.<name>`), so the
jitted step compiles once. The registry of every method (these and CURE) is
`rift_jax.training.methods`; the authors' settings per method (BN mode, passes,
hyperparameters, the file of their code) are tabled in
`configs/methods_paper.py`.

Losses (per-example terms are averaged over the batch; p(·) = softmax):
- natural:  CE(f(x), y).
- pgd_at:   CE(f(x'), y), x' = PGD on CE (Madry et al. 2018).
- trades:   CE(f(x), y) + β·KL(p(x) ‖ p(x')), x' = PGD on KL(p(x) ‖ p(·))
            from x + 0.001·N(0, 1) (Zhang et al. 2019; β = 6).
- mart:     BCE(p(x'), y) + λ·KL(p(x) ‖ p(x'))·(1 − p_y(x)), x' = PGD on CE
            from x + 0.001·N(0, 1) (Wang et al. 2020; λ = 6 in `mart.py` and
            the WideResNet script, 5 in the ResNet-18 script), with
            BCE(p, y) = −log p_y − log(1 − max_{k≠y} p_k). As the official
            code, the second log is log(1.0001 − max_{k≠y} p_k) (bounded when
            the wrong class is certain), the clean probabilities are not
            detached, and the weight uses the clean p_y(x).
- score:    Pang et al. ICML 2022, "SCORE": TRADES with CE and KL replaced by
            squared errors on the softmax outputs,
              L_i = ‖p(x_i) − e_y‖² + β·‖p(x_i) − p(x'_i)‖²,
            x' maximising ‖p(x) − p(·)‖² by PGD (`attacks.pgd` loss 'se'), in
            one of the authors' two recipes (`score.recipe`):
            'no_extra_data' (P2333/SCORE `without_DDPM/train_cifar.py`, the
            CIFAR-10-only setting): β = 6 (`--TRADESlambda 6`), attack from
            x + 0.001·N(0, 1), and the whole per-example loss clipped from
            below, loss = mean_i max(L_i − b, 0) with
              b = SE((1 − c, c/(K−1), …, c/(K−1)), e_y) = c²·K/(K − 1),
            c = `score.clip_loss` = 0.3 (`--clip_loss 0.3`), so b = 0.1 for
            K = 10 classes: examples already within b contribute neither loss
            nor gradient. 'extra_data' (`gowal21uncovering/utils/trades.py`
            `trades_loss_LSE`, the 1M-DDPM-image setting): β = 4, attack from
            a uniform start, loss = mean SE_nat + β·mean max(SE_rob − b, 0)
            (their `--clip_value` = b, default 0 = no clipping). The extra
            data and the weight averaging of that recipe are not implemented.
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
- cure:     see `rift_jax/training/cure.py`.
- aft:      PGD-AT started from a naturally trained model with the
            'slow start, fast decay' schedule, see `rift_jax/training/schedules.py`.

BatchNorm policy (written down because it changes results). The papers leave
it to code; we follow each authors' code (`configs/methods_paper.py` tables
it per method):
- Crafting mode, `ctx.attack_bn` (`attack.bn_mode`): 'train' (batch
  statistics, as Bag-of-Tricks' PGD-AT, AT-AWP and SCORE with extra data) or
  'eval' (running averages, as the official TRADES, MART, TRADES-AWP, CURE
  and SCORE-without-extra-data code). Eval-mode crafting never touches the
  running averages.
- Which forward passes update the running averages, `ctx.bn_passes`
  (`attack.bn_passes`):
  'authors' (the config default): every train-mode pass of the authors'
  training loop, in its order. Each pass r ← 0.9·r + 0.1·s(batch) is
  PyTorch's update with momentum 0.1 (`models._bn`, Flax momentum 0.9). Per
  step, K = attack steps, '(x)' a statistics-only pass:
    pgd_at, aft  x_0 … x_{K−1}, x_K (train-mode attack: each step and the
                 final loss evaluation), x', (x) at θ, (x) at θ_{t+1}
                 (Bag-of-Tricks `train_cifar.py`: the clean passes feed its
                 logs; K + 4 updates);
    awp (AT)     x_0 … x_K, x' at θ + v, (x) at θ_{t+1} (AT-AWP's logging pass);
    awp (TRADES) x', x, (x), all at θ + v (`trades_AWP/train_trades_cifar.py`);
    trades       x, x', (x) (`trades.py`: the KL term calls model(x) again);
    mart, cure   x, x';
    score        x', x ('no_extra_data'); x, x' ('extra_data', whose
                 train-mode attack switches tracking off: no attack updates).
  At steady state (inputs' statistics s_x, s_x' fixed) TRADES' averages are
  0.668·s_x + 0.332·s_x' ((x, x', x): weights 0.181 and 0.09 over 1 − 0.9³),
  TRADES-AWP's 0.701·s_x + 0.299·s_x', PGD-AT's about 1/4 clean, 3/4 attack
  iterates. A repeated pass has the same batch statistics and output as the
  first (same θ, same input, train-mode BN), so it only moves the averages:
  we run it behind `stop_gradient` and the gradient is the authors' exactly.
  Attack passes update the averages only in `craft_ce` (the train-mode CE
  attack of Bag-of-Tricks and AT-AWP; x' is the same as without updates,
  since train-mode BN normalises with batch statistics). The other attacks
  never do: their authors craft in eval mode, or (SCORE with extra data) in
  train mode with tracking off.
  'loss' (and `Context`'s own default, for direct use such as the
  benchmark's comparison with a plain PyTorch step): only the passes the loss
  differentiates, one per input, in the same order (x', or x then x').
- Running variance: Flax averages the biased batch variance, PyTorch the
  unbiased one (× n/(n − 1), n = batch·H·W per channel: ≥ 2048 for a CIFAR
  ResNet-18 at batch 128, so the difference is < 0.05 %, in the variance of
  every layer). Both normalise train-mode passes with the biased variance.
- Not reproduced: AT-AWP crafts the first batch of every epoch after the
  first in eval mode (its test loop leaves the model in eval mode until
  `model.train()` after the attack); we craft every batch in train mode.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from rift_jax import attacks, models
from rift_jax.errors import check_choice, check_range
from rift_jax.models import ModelFns

BN_PASSES = ("authors", "loss")
SCORE_RECIPES = ("no_extra_data", "extra_data")


@dataclasses.dataclass(frozen=True)
class Context:
  fns: ModelFns
  attack: attacks.PGDConfig
  attack_bn: str = "train"  # 'train' | 'eval'
  hparams: tuple = ()       # method-specific (name, value) pairs
  bn_passes: str = "loss"   # 'authors' | 'loss' (configs default to 'authors')

  def hp(self, name: str, default: Any = None) -> Any:
    return dict(self.hparams).get(name, default)

  def attack_logits_fn(self, variables):
    train = self.attack_bn == "train"
    return lambda xa: self.fns.logits(variables, xa, train=train)

  @property
  def authors_passes(self) -> bool:
    """True: the running averages see the authors' statistics-only passes."""
    return self.bn_passes == "authors"

  @property
  def attack_updates_stats(self) -> bool:
    """True: a train-mode CE attack's passes update the running averages."""
    return self.authors_passes and self.attack_bn == "train"


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
  craft: Callable | None = None             # (ctx, variables, x, y, rng) -> (x_adv, bs)
  perturb_weights: Callable | None = None   # (ctx, params, bs, batch, epoch) -> v
  grad_mask: Callable | None = None         # (ctx, params, bs, batch) -> mask
  init_extra: Callable | None = None        # (variables) -> extra
  update_extra: Callable | None = None      # (ctx, extra, params, step, rng) -> extra
  validate: Callable | None = None          # (ctx) -> None or UserError
  after_update: Callable | None = None      # (ctx, params, bs, batch) -> bs
  starts_from_pretrained: bool = False      # needs config.init_from (CURE, AFT)

  def check(self, ctx: Context) -> None:
    if self.validate is not None:
      self.validate(ctx)


# ------------------------------------------------------ inner maximisation
def pgd_updating_stats(ctx: Context, variables, x, y, rng, cfg: attacks.PGDConfig,
                       target_logits=None):
  """`attacks.pgd` in train mode whose passes update the BN running averages,
  as a PyTorch train-mode attack does (Bag-of-Tricks' and AT-AWP's
  `attack_pgd`): per restart one update per step, at the iterate the gradient
  is taken at (x_0 … x_{K−1}), and one for the final loss evaluation at x_K.

  x' is the one `attacks.pgd` returns with the same key (train-mode BN
  normalises with batch statistics; the running averages never feed back).
  Restarts keep, per example, the restart that misclassifies it, else the one
  with the higher loss, as `attacks.pgd`.
  -> (x_adv like `x`, batch_stats).
  """
  params = variables["params"]
  loss_fn = attacks.LOSSES[cfg.loss]

  def loss_and_stats(xa, bs):
    z, bs = ctx.fns.logits_and_stats(_variables(params, bs), xa)
    return jnp.sum(loss_fn(z, y, target_logits)), bs

  grad_fn = jax.grad(loss_and_stats, has_aux=True)

  def body(_, carry):
    xa, bs = carry
    g, bs = grad_fn(xa, bs)
    xa = attacks.project(attacks.ascent_step(xa, g, cfg.step_size, cfg.norm), x,
                         cfg.epsilon, cfg.norm)
    return xa, bs

  bs = variables.get("batch_stats", {})
  best = None
  for r in range(cfg.restarts):
    key = jax.random.fold_in(rng, r)
    x0 = attacks.random_init(key, x, cfg.epsilon, cfg.norm, cfg.init,
                             cfg.init_std)
    x0 = attacks.project(x0, x, cfg.epsilon, cfg.norm)
    xa, bs = jax.lax.fori_loop(0, cfg.num_steps, body, (x0, bs),
                               unroll=attacks.resolve_unroll(cfg.unroll))
    z, bs = ctx.fns.logits_and_stats(_variables(params, bs), xa)
    loss = loss_fn(z, y, target_logits)
    fooled = ((jnp.argmax(z, -1) != y) if y is not None
              else jnp.zeros_like(loss, bool))
    best = attacks.keep_worst(best, xa, loss, fooled)
  return jax.lax.stop_gradient(best[0]), bs


def _pgd(ctx: Context, variables, x, y, rng, cfg, target_logits=None,
         updates_stats: bool = False):
  """PGD in the attack's BN mode -> (x_adv, batch_stats); the passes update
  the running averages only if `updates_stats` and `ctx.attack_updates_stats`."""
  if updates_stats and ctx.attack_updates_stats:
    return pgd_updating_stats(ctx, variables, x, y, rng, cfg, target_logits)
  x_adv = attacks.pgd(ctx.attack_logits_fn(variables), x, y, rng, cfg,
                      target_logits=target_logits)
  return x_adv, variables.get("batch_stats", {})


def craft_ce(ctx: Context, variables, x, y, rng):
  """x' = PGD on CE with the configured attack (PGD-AT, AT-AWP, AFT) ->
  (x', batch_stats). In train mode under 'authors' its K + 1 passes update the
  running averages, as Bag-of-Tricks' and AT-AWP's train-mode `attack_pgd`."""
  return _pgd(ctx, variables, x, y, rng, ctx.attack, updates_stats=True)


def craft_kl(ctx: Context, variables, x, y, rng, init: str = "normal",
             loss: str = "kl"):
  """TRADES' inner maximisation: x' = argmax KL(p(x) ‖ p(x')) by PGD from
  x + init_std·N(0, 1) (`init='normal'`), target p(x) in the attack's BN mode
  -> (x', batch_stats unchanged). `loss='se'` maximises ‖p(x) − p(x')‖²
  instead (SCORE)."""
  logits_fn = ctx.attack_logits_fn(variables)
  cfg = dataclasses.replace(ctx.attack, loss=loss, init=init)
  return _pgd(ctx, variables, x, y, rng, cfg,
              target_logits=jax.lax.stop_gradient(logits_fn(x)))


def craft_ce_normal(ctx: Context, variables, x, y, rng):
  """MART's inner maximisation: PGD on CE from x + 0.001·N(0, 1) ->
  (x', batch_stats unchanged)."""
  cfg = dataclasses.replace(ctx.attack, loss="ce", init="normal")
  return _pgd(ctx, variables, x, y, rng, cfg)


def craft_score(ctx: Context, variables, x, y, rng):
  """SCORE's inner maximisation: PGD on ‖p(x) − p(x')‖², from
  x + 0.001·N(0, 1) ('no_extra_data') or a uniform start ('extra_data')."""
  init = "normal" if score_hparams(ctx)["recipe"] == "no_extra_data" else "uniform"
  return craft_kl(ctx, variables, x, y, rng, init=init, loss="se")


# ------------------------------------------------------ forward passes
def train_passes(ctx: Context, params, batch_stats, batch: Batch,
                 order: tuple[str, ...]):
  """Consecutive train-mode passes in `order`, chaining the BN running
  averages as consecutive PyTorch train-mode calls do.

  Entries: 'x' / 'x_adv' — a pass over `batch.x` / `batch.x_adv` whose logits
  `[batch, classes]` are returned (differentiable); 'stats:x' /
  'stats:x_adv' — a statistics-only pass (parameters behind `stop_gradient`,
  logits dropped), run only under `ctx.bn_passes == 'authors'`.
  -> ({'x': logits, 'x_adv': logits} for the differentiated inputs,
  new batch_stats).
  """
  logits, bs = {}, batch_stats
  for entry in order:
    stats_only = entry.startswith("stats:")
    name = entry[len("stats:"):] if stats_only else entry
    inputs = getattr(batch, name)
    if stats_only:
      if ctx.authors_passes:
        _, bs = ctx.fns.logits_and_stats(
            _variables(jax.lax.stop_gradient(params), bs), inputs)
    else:
      logits[name], bs = ctx.fns.logits_and_stats(_variables(params, bs), inputs)
  return logits, bs


def clean_and_adv_logits(ctx: Context, params, batch_stats, x, x_adv):
  """Two train-mode passes, clean then adversarial, chaining the BN running
  averages: -> (logits `[batch, classes]`, adv logits, new batch_stats)."""
  z, bs = ctx.fns.logits_and_stats(_variables(params, batch_stats), x)
  z_adv, bs = ctx.fns.logits_and_stats(_variables(params, bs), x_adv)
  return z, z_adv, bs


def clean_stats_after_update(ctx: Context, params, batch_stats, batch: Batch):
  """`after_update` of PGD-AT (Bag-of-Tricks) and AT-AWP: after
  `optimizer.step()` their loops run model(x) in train mode for their logs,
  which moves the running averages at θ_{t+1}. Statistics only; a no-op under
  'loss'."""
  if not ctx.authors_passes:
    return batch_stats
  _, bs = ctx.fns.logits_and_stats(_variables(params, batch_stats), batch.x)
  return bs


# ------------------------------------------------------------ outer losses
def natural_loss(ctx: Context, params, batch_stats, batch: Batch, extra=None):
  """Plain cross-entropy on clean images."""
  del extra
  logits, bs = ctx.fns.logits_and_stats(_variables(params, batch_stats), batch.x)
  loss = jnp.mean(attacks.cross_entropy(logits, batch.y))
  return loss, (bs, {"loss": loss, "acc": _accuracy(logits, batch.y)})


def _ce_adv(ctx, params, batch_stats, batch, order):
  z, bs = train_passes(ctx, params, batch_stats, batch, order)
  loss = jnp.mean(attacks.cross_entropy(z["x_adv"], batch.y))
  return loss, (bs, {"loss": loss, "acc": _accuracy(z["x_adv"], batch.y)})


def at_loss(ctx: Context, params, batch_stats, batch: Batch, extra=None):
  """Madry et al. PGD-AT: mean CE(f(x'), y). Passes x', then (x) statistics
  only (Bag-of-Tricks computes model(x) before the backward pass)."""
  del extra
  return _ce_adv(ctx, params, batch_stats, batch, ("x_adv", "stats:x"))


def trades_terms(logits, adv_logits, y):
  """(mean CE(f(x), y), mean KL(p(x) ‖ p(x'))), both scalars; p(x) not detached."""
  return (jnp.mean(attacks.cross_entropy(logits, y)),
          jnp.mean(attacks.kl_divergence(adv_logits, logits)))


def pair_metrics(loss, logits, adv_logits, y, **terms):
  return {"loss": loss, "acc": _accuracy(adv_logits, y),
          "clean_acc": _accuracy(logits, y), **terms}


TRADES_PASSES = ("x", "x_adv", "stats:x")         # yaodongyu/TRADES trades.py
TRADES_AWP_PASSES = ("x_adv", "x", "stats:x")     # csdongxian/AWP trades_AWP


def _trades(ctx, params, batch_stats, batch, beta, order):
  z, bs = train_passes(ctx, params, batch_stats, batch, order)
  ce, kl = trades_terms(z["x"], z["x_adv"], batch.y)
  loss = ce + beta * kl
  return loss, (bs, pair_metrics(loss, z["x"], z["x_adv"], batch.y, ce=ce,
                                 kl=kl))


def trades_loss(ctx: Context, params, batch_stats, batch: Batch, extra=None):
  """TRADES: CE(f(x), y) + β·KL(p(x) ‖ p(x')), β = `trades.beta` (default 6).
  Passes x, x', (x): the official KL term calls model(x) a second time."""
  del extra
  return _trades(ctx, params, batch_stats, batch, float(ctx.hp("beta", 6.0)),
                 TRADES_PASSES)


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
  """MART: BCE(p(x'), y) + λ·KL(p(x) ‖ p(x'))·(1 − p_y(x)), λ = `mart.lam`.
  Passes x, x' (YisenWang/MART mart.py)."""
  del extra
  lam = float(ctx.hp("lam", 6.0))
  z, bs = train_passes(ctx, params, batch_stats, batch, ("x", "x_adv"))
  bce, kl, weight = mart_terms(z["x"], z["x_adv"], batch.y)
  loss = jnp.mean(bce) + lam * jnp.mean(kl * weight)
  return loss, (bs, pair_metrics(loss, z["x"], z["x_adv"], batch.y,
                                 bce=jnp.mean(bce), kl=jnp.mean(kl)))


def score_hparams(ctx: Context) -> dict:
  """SCORE's recipe and its values; β and c default to the recipe's."""
  recipe = ctx.hp("recipe", "no_extra_data")
  no_extra = recipe == "no_extra_data"
  return {"recipe": recipe,
          "beta": float(ctx.hp("beta", 6.0 if no_extra else 4.0)),
          "clip_loss": float(ctx.hp("clip_loss", 0.3 if no_extra else 0.0))}


def score_clip_bound(clip_loss: float, num_classes: int) -> float:
  """b = ‖(1 − c, c/(K−1), …, c/(K−1)) − e_y‖² = c²·K/(K − 1): the squared
  error of a prediction that puts mass c off the label, spread evenly (the
  authors' `clip_bound`; c = 0.3, K = 10 -> 0.1)."""
  k = float(num_classes)
  return clip_loss * clip_loss * k / (k - 1.0)


def score_terms(logits, adv_logits, y):
  """SCORE's per-example squared errors `[batch]` on softmax outputs:
  (‖p(x) − e_y‖², ‖p(x) − p(x')‖²)."""
  p, p_adv = jax.nn.softmax(logits), jax.nn.softmax(adv_logits)
  onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=p.dtype)
  return jnp.sum((p - onehot) ** 2, -1), jnp.sum((p - p_adv) ** 2, -1)


def score_loss(ctx: Context, params, batch_stats, batch: Batch, extra=None):
  """SCORE (`score.recipe`, module docstring):
    'no_extra_data': mean_i max(SE_nat,i + β·SE_rob,i − b, 0), passes x', x;
    'extra_data':    mean SE_nat + β·mean max(SE_rob − b, 0), passes x, x';
  b = `score_clip_bound(score.clip_loss, K)`."""
  del extra
  h = score_hparams(ctx)
  no_extra = h["recipe"] == "no_extra_data"
  order = ("x_adv", "x") if no_extra else ("x", "x_adv")
  z, bs = train_passes(ctx, params, batch_stats, batch, order)
  se_nat, se_rob = score_terms(z["x"], z["x_adv"], batch.y)
  b = score_clip_bound(h["clip_loss"], z["x"].shape[-1])
  if no_extra:
    raw = se_nat + h["beta"] * se_rob
    loss = jnp.mean(jax.nn.relu(raw - b))
  else:
    raw = se_rob
    loss = jnp.mean(se_nat) + h["beta"] * jnp.mean(jax.nn.relu(se_rob - b))
  return loss, (bs, pair_metrics(loss, z["x"], z["x_adv"], batch.y,
                                 se_nat=jnp.mean(se_nat),
                                 se_rob=jnp.mean(se_rob),
                                 clipped=jnp.mean(raw <= b)))


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
  rescaling), v_l = γ‖w_l‖·∇_l/‖∇_l‖; zero before `awp.warmup_epochs`. The
  proxy's BN statistics are dropped, as the official proxy's."""
  grads = jax.grad(lambda p: awp_loss(ctx, p, batch_stats, batch)[0])(params)
  v = layerwise_rescale(grads, params, float(ctx.hp("gamma", 5e-3)))
  on = (epoch >= int(ctx.hp("warmup_epochs", 0))).astype(jnp.float32)
  return jax.tree_util.tree_map(lambda a: on * a, v)


def awp_loss(ctx: Context, params, batch_stats, batch: Batch, extra=None):
  """The base loss at θ + v: AT-AWP CE(f(x'), y), pass x' only (its clean
  pass comes after the update, `awp_after_update`); TRADES-AWP β = `awp.beta`,
  passes x', x, (x)."""
  del extra
  if ctx.hp("base", "pgd_at") == "trades":
    return _trades(ctx, params, batch_stats, batch, float(ctx.hp("beta", 6.0)),
                   TRADES_AWP_PASSES)
  return _ce_adv(ctx, params, batch_stats, batch, ("x_adv",))


def awp_craft(ctx: Context, variables, x, y, rng):
  """AT-AWP: `craft_ce` (train mode in the official code); TRADES-AWP:
  `craft_kl` (eval mode in the official code)."""
  if ctx.hp("base", "pgd_at") == "trades":
    return craft_kl(ctx, variables, x, y, rng)
  return craft_ce(ctx, variables, x, y, rng)


def awp_after_update(ctx: Context, params, batch_stats, batch: Batch):
  """AT-AWP's logging pass model(x) at θ_{t+1}; nothing for TRADES-AWP."""
  if ctx.hp("base", "pgd_at") == "trades":
    return batch_stats
  return clean_stats_after_update(ctx, params, batch_stats, batch)


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


def _validate_score(ctx: Context):
  check_choice("score.recipe", ctx.hp("recipe", "no_extra_data"), SCORE_RECIPES)
  h = score_hparams(ctx)
  check_range("score.beta", h["beta"], 0.0)
  check_range("score.clip_loss", h["clip_loss"], 0.0, 1.0)


# -------------------------------------------------------------- methods
natural = Method("natural", natural_loss)
pgd_at = Method("pgd_at", at_loss, craft=craft_ce,
                after_update=clean_stats_after_update)
trades = Method("trades", trades_loss, craft=craft_kl,
                validate=check_nonnegative("beta", method="trades", beta=6.0))
mart = Method("mart", mart_loss, craft=craft_ce_normal,
              validate=check_nonnegative("lam", method="mart", lam=6.0))
score = Method("score", score_loss, craft=craft_score, validate=_validate_score)
awp = Method("awp", awp_loss, craft=awp_craft, perturb_weights=awp_perturbation,
             validate=_validate_awp, after_update=awp_after_update)
# AFT is PGD-AT started from a natural model (with PGD-AT's passes, our
# choice: no official code); its schedule is in rift_jax/training/schedules.py
# ('slow_start_fast_decay').
aft = Method("aft", at_loss, craft=craft_ce, starts_from_pretrained=True,
             after_update=clean_stats_after_update)
