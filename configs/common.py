"""The base config every experiment starts from (ml_collections, locked).

Fields are grouped as the code is: data, model, method (+ its own block),
optim, attack (training), eval, rift. Config files override what differs and
return `config.lock()`ed ConfigDicts, so a misspelt override
(`--config.optim.lrr=...`) is an error, not a silent no-op.
"""
import ml_collections

from rift_jax.data.datasets import DEBIAN_FASHION_MNIST


def pgd(epsilon, step_size, num_steps, restarts=1, **kw):
  c = ml_collections.ConfigDict(dict(
      epsilon=epsilon, step_size=step_size, num_steps=num_steps, norm="linf",
      loss="ce", init="uniform", init_std=0.001, restarts=restarts,
      unroll="auto"))
  c.update(kw)
  return c


def ood(enabled=False, corruptions="all", max_images=0, **kw):
  """An OOD block (`rift_jax.data.corruptions.load_sets`): source 'generated'
  (corrupt the test split with imagecorruptions, cached in cache_dir, default
  <workdir>/ood_cache) | 'cifar10_c' (TFDS cifar10_corrupted in root or
  data.data_dir) | 'cifar100_c' (<root>/<name>.npy) | 'tiny_imagenet_c'
  (<root>/<name>/<severity>/<wnid>/*.JPEG); corruptions 'standard' (15) |
  'all' (19) | 'rift_code' (18) | a comma list; max_images 0 = all; seed:
  the generation seed (fixed, so every run of a study sees the same
  corrupted images, as with the released CIFAR-10-C)."""
  c = ml_collections.ConfigDict(dict(
      enabled=enabled, source="generated", root="", corruptions=corruptions,
      severities=(1, 2, 3, 4, 5), max_images=max_images, per_corruption_max={},
      cache_dir="", seed=0))
  c.update(kw)
  return c


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      name="cifar10", source="tfds", data_dir="~/tensorflow_datasets",
      debian_dir=DEBIAN_FASHION_MNIST, val_size=1000,
      train_size=0, test_size=0, split_seed=0))
  # conv_impl: input-gradient rule of the convolutions (rift_jax/models/conv.py):
  # auto = phase decomposition on CPU, XLA's own on GPU/TPU | phase | xla.
  # input_normalization: how the model expects its inputs (rift_jax/models/build.py):
  # 'dataset' (mean/std of the data set, inside the model) | 'none' ([0, 1]
  # inputs, RobustBench) | ((mean, ...), (std, ...)).
  # compute_dtype: 'float32' | 'bfloat16' (mixed precision for GPU/TPU:
  # bfloat16 compute, float32 params, optimiser state, BatchNorm statistics,
  # logits, losses and attack inputs; rift_jax/models/zoo.py). On CPU bfloat16
  # is slower, not faster.
  c.model = ml_collections.ConfigDict(dict(name="resnet18", width=64,
                                           conv_impl="auto",
                                           input_normalization="dataset",
                                           compute_dtype="float32"))
  # natural | pgd_at | trades | mart | score | awp | cure | aft
  # (rift_jax.training.methods.METHODS); hyperparameters in the block named after it.
  c.method = "pgd_at"
  c.augment = True
  c.log_every = 10
  # Start from these variables instead of a random init: a launch/train
  # workdir (its best checkpoint) or a variables folder. CURE and AFT need a
  # naturally trained model here.
  c.init_from = ""
  # Paper recipe (RiFT §5.1, Bag-of-Tricks): SGD 0.9, wd 5e-4, lr 0.1,
  # batch 128, 110 epochs, lr x0.1 at epochs 100 and 105.
  c.optim = ml_collections.ConfigDict(dict(
      lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False, batch_size=128,
      epochs=110, schedule="piecewise", lr_decay_epochs=(100, 105),
      lr_decay_factor=0.1,
      # schedule='slow_start_fast_decay' (AFT, rift_jax/training/schedules.py) only:
      warmup_epochs=0.0, start_lr_factor=0.0, decay_shape="linear",
      end_lr_factor=0.0))
  # Method blocks (docs/algorithms.md; rift_jax/training/objectives.py, cure.py).
  c.trades = ml_collections.ConfigDict(dict(beta=6.0))
  # λ = 6: mart.py / WideResNet script; the ResNet-18 script uses 5
  # (configs/methods_paper.py sets it per architecture).
  c.mart = ml_collections.ConfigDict(dict(lam=6.0))
  # recipe: 'no_extra_data' (CIFAR training set only; β = 6, clip_loss = 0.3,
  # i.e. per-example losses below 0.1 are clipped) | 'extra_data' (the DDPM
  # recipe's loss: β = 4, clip_loss = 0); see rift_jax/training/objectives.py.
  c.score = ml_collections.ConfigDict(dict(recipe="no_extra_data", beta=6.0,
                                           clip_loss=0.3))
  # base: 'pgd_at' | 'trades' (beta is TRADES' β then); AWP off for the first
  # warmup_epochs epochs.
  c.awp = ml_collections.ConfigDict(dict(gamma=5e-3, base="pgd_at", beta=6.0,
                                         warmup_epochs=0))
  c.cure = ml_collections.ConfigDict(dict(beta=6.0, gamma=1.0, p=30.0,
                                          alpha=0.1, r=0.2, d=0.999))
  # Training attack: L-inf PGD-10, eps 8/255, step 2/255, BN in train mode.
  # bn_passes: which forward passes update the BN running averages,
  # 'authors' (every train-mode pass of the authors' loop: attack passes of a
  # train-mode CE attack, statistics-only repeats) | 'loss' (only the loss
  # passes); rift_jax/training/objectives.py, BatchNorm policy.
  c.attack = pgd(8 / 255, 2 / 255, 10, bn_mode="train", bn_passes="authors")
  # Model selection on validation: PGD-10 (one restart) each epoch.
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=256, attack=pgd(8 / 255, 2 / 255, 10)))
  c.rift = rift_config()
  return c


def rift_config() -> ml_collections.ConfigDict:
  """RiFT (docs/algorithms.md) with the paper's / official code's settings."""
  r = ml_collections.ConfigDict()
  # '' = train θ_AT with this config first (into <workdir>/at); else a
  # variables folder or a launch/train workdir.
  r.at_checkpoint = ""
  r.mrc = ml_collections.ConfigDict(dict(
      num_examples=1000,       # fixed set: the first N validation images
      attack=pgd(8 / 255, 2 / 255, 10),  # crafted once against θ_AT, eval mode
      # The official ascent takes 200 SGD steps per module (10,000 examples
      # in batches of 512: 20 steps a pass, 10 passes); the ranking moves
      # with the count (docs/algorithms.md), so a smaller fixed set takes
      # smaller batches: 1,000 examples in batches of 50.
      epsilon=0.1, learning_rate=1.0, num_passes=10, batch_size=50,
      projection="per_pass",   # official code; 'per_step' = paper Algorithm 1
      mode="sequential",       # or 'vmap' (several modules at once; route mask)
      # static: differentiate only module i's kernel (backward stops there) |
      # mask: a params-shaped Δ times a data mask (one program, vmap-able)
      route="static",
      # static route: reuse the network before module i's block (features
      # of the fixed set kept in memory up to this many MiB; 0 = never)
      prefix_cache_mb=2048.0,
      vmap_chunk=4, include="", exclude=""))
  r.finetune = ml_collections.ConfigDict(dict(
      # non_robust_critical (RiFT) | robust_critical | all | last | topk | modules
      target="non_robust_critical", k=1, modules=(),
      # the modules a target picks from: conv3x3 (3x3 block convolutions, no
      # stem: every module the authors fine-tuned is one) | all (every
      # module, an ablation; docs/algorithms.md)
      candidates="conv3x3",
      update_batch_stats=True,  # official code: BN statistics follow clean data
      # random crop + flip while fine-tuning: match θ's training recipe
      augment=True,
      lr_sweep=(),              # e.g. (1e-3, 5e-3, 1e-2): chosen on validation
      optim=ml_collections.ConfigDict(dict(
          lr=1e-3, momentum=0.9, weight_decay=5e-4, nesterov=False,
          batch_size=128, epochs=10, schedule="piecewise", lr_decay_epochs=(5,),
          lr_decay_factor=0.1))))
  r.alphas = tuple(round(0.1 * i, 1) for i in range(11))
  r.tolerance = 0.1   # percentage points of validation robust accuracy
  # How α is chosen on validation (rift_jax/rift/interpolation.py): 'robust' (the
  # paper's: highest clean accuracy with robust accuracy ≥ α=0's − tolerance)
  # | 'robust_and_ood' (corrupted-validation accuracy may not fall either;
  # needs rift.ood_val).
  r.alpha_rule = "robust"
  # Diagnostics after the test: θ_AT's parameters with θ*'s BatchNorm
  # statistics and the reverse, tested like θ* (bn_swap.json).
  r.bn_swap = False
  # Corrupted VALIDATION images (generated once, cached): OOD accuracy along
  # the α curve, for the robust_and_ood rule and the study's diagnostics.
  r.ood_val = ood(enabled=False, corruptions="standard", severities=(3,),
                  max_images=300)
  # "Robust accuracy kept" is claimed only when the test Δ's 95 % interval
  # lies above −margin (pp): non-inferiority, not a failure to find a drop.
  r.noninferiority_margin = 0.5
  r.alpha_chunk = 0   # α values evaluated at once (vmap); 0 = per backend
  r.ablations = ()    # any of: all, last, robust_critical, topk
  # θ* is always exported as theta_star.{safetensors,pth}; θ_FT on request.
  r.export_theta_ft = False
  # Final test attack: PGD-10, 3 restarts, per-example worst case.
  r.test_attack = pgd(8 / 255, 2 / 255, 10, restarts=3)
  r.ood = ood()
  return r
