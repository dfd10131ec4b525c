"""Every training method on the quickstart data, for the method table.

  python -m launch.train --config=configs/quickstart_methods.py:trades \
      --workdir=runs/methods/trades
  python -m launch.rift --config=configs/quickstart_methods.py:trades \
      --workdir=runs/methods/rift_trades
  # CURE and AFT start from the natural run (config.init_from):
  python -m launch.train --config=configs/quickstart_methods.py:natural \
      --workdir=runs/methods/natural
  python -m launch.train --config=configs/quickstart_methods.py:cure \
      --workdir=runs/methods/cure
  python -m launch.report --workdirs=runs/methods/*

`:<method>,fast` is the setting the README's method table was measured with
on a shared 2-core CPU (each method ≈ 3 CPU minutes of training): 3,000
training images, 3 epochs, 500 validation and 500 test images, MRC on 256
fixed examples with 3 passes, α in {0, 0.2, ..., 1}, OOD on 100 images per
corruption and severity (cached once in runs/methods/ood_cache).

Variants: natural, pgd_at, trades, mart, score, awp, cure, aft. Everything
else is `configs/quickstart.py` (Fashion-MNIST, ResNet-18 width 8, ε = 0.1,
PGD-5 for training). Method settings are the authors' as in
`configs/methods_paper.py` (`method_settings`: BN mode while crafting —
eval for TRADES, MART, SCORE and CURE, train for PGD-AT, AT-AWP and AFT —,
the authors' BN statistics passes, MART's ResNet-18 λ = 5, SCORE's
no-extra-data recipe β = 6 with loss clipping at 0.3), the optimiser is the
quickstart's for every method; TRADES' KL attack, MART's CE attack and
CURE's attack share the quickstart's ε, step and number of steps.

AFT: PGD-AT fine-tuning of the natural run for half the epochs of PGD-AT,
schedule 'slow_start_fast_decay' (rift_jax/training/schedules.py) with peak lr = 0.05, no
warm-up and a cosine fall to 0. Measured (`aft,fast`: 2 epochs = 46 steps
from the natural run, validation clean / PGD-10 %, 500 images, ±2.2 pp):
  constant lr 0.05                           59.4 / 47.6
  no warm-up, cosine to 0          (default)  61.0 / 47.6
  warm-up 10% from 0.1·lr, cosine to 0       55.6 / 44.4
  warm-up 40% from 0.1·lr, cosine to 0       55.0 / 41.8
  warm-up 40% from 0.1·lr, exponential to 1%  62.4 / 43.6
On a fine-tune this short the slow start only takes away useful steps, and
the fast decay is what helps clean accuracy; set `optim.warmup_epochs` (and
`start_lr_factor`) for the slow start on longer runs (configs/methods_paper.py
keeps 6 of 15 epochs, unmeasured here).
CURE: fine-tunes the natural run with the paper's ResNet-18 values (p = 30,
α = 0.1, γ = 1, r = 0.2, d = 0.999, β = 6).
"""
from configs import methods_paper, quickstart

METHODS = ("natural", "pgd_at", "trades", "mart", "score", "awp", "cure", "aft")
NATURAL_RUN = "runs/methods/natural"


def get_config(arg: str = "pgd_at"):
  method, _, option = str(arg).partition(",")
  if option not in ("", "fast"):
    raise ValueError(f"option {option!r} is not allowed; choose 'fast' or none")
  if method not in METHODS:
    raise ValueError(f"variant {method!r} is not allowed; choose one of: "
                     + ", ".join(METHODS))
  c = quickstart.get_config()   # locked: only existing fields can change
  methods_paper.method_settings(c, method, c.model.name)
  if option == "fast":
    c.data.train_size, c.data.val_size, c.data.test_size = 3000, 500, 500
    c.optim.epochs, c.optim.lr_decay_epochs = 3, (2,)
    # 256 fixed examples in batches of 13: 20 ascent steps a pass, 200 a
    # module (the official count).
    c.rift.mrc.num_examples, c.rift.mrc.num_passes = 256, 10
    c.rift.mrc.batch_size = 13
    c.rift.finetune.optim.epochs = 4
    c.rift.finetune.optim.lr_decay_epochs = (2,)
    c.rift.alphas = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    c.rift.ood.max_images = 100
    c.rift.ood.cache_dir = "runs/methods/ood_cache"
  if method in ("cure", "aft"):
    c.init_from = NATURAL_RUN
  if method == "aft":
    c.optim.epochs = max(-(-int(c.optim.epochs) // 2), 1)
    c.optim.schedule = "slow_start_fast_decay"
    c.optim.warmup_epochs = 0.0
    c.optim.start_lr_factor = 0.1
    c.optim.decay_shape = "cosine"
    c.optim.end_lr_factor = 0.0
  return c
