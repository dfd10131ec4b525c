"""Full-scale training of every method with the papers' hyperparameters (GPU/TPU).

  python -m launch.train --config=configs/methods_paper.py:trades \
      --workdir=runs/paper/trades
  python -m launch.rift --config=configs/methods_paper.py:trades \
      --workdir=runs/paper/rift_trades
  python -m launch.train --config=configs/methods_paper.py:natural \
      --workdir=runs/paper/natural
  python -m launch.train --config=configs/methods_paper.py:cure \
      --workdir=runs/paper/cure --config.init_from=runs/paper/natural
  python -m launch.train --config=configs/methods_paper.py:cure,wrn34_10,cifar100 \
      --workdir=runs/paper/cure_wrn_c100 --config.init_from=...

Variant: `<method>[,<model>][,<dataset>]`, method one of natural, pgd_at,
trades, mart, score, awp, awp_trades, cure, aft; model resnet18 (default),
resnet34, preact_resnet18, wrn34_10; dataset cifar10 (default), cifar100,
svhn_cropped.

Common recipe (ALGORITHMS.md §2, Bag-of-Tricks, as RiFT's base models):
L-inf ε = 8/255, PGD-10 step 2/255, SGD momentum 0.9, wd 5e-4, lr 0.1, batch
128, 110 epochs, lr ×0.1 at 100 and 105, best validation PGD accuracy kept.
Per method:
- trades: β = 6 (Zhang et al. 2019), KL attack from x + 0.001·N(0, 1).
- mart: λ = 6 (Wang et al. 2020), CE attack from x + 0.001·N(0, 1).
- score: β = 4 (Pang et al. 2022, the authors' TRADES-SE setting).
- awp: AT-AWP, γ = 5e-3 (ALGORITHMS.md; the AWP code's AT default is 1e-2),
  no warm-up. awp_trades: TRADES-AWP, γ = 5e-3, β = 6, AWP from epoch 10
  (warmup_epochs = 9), as the AWP code.
- cure: from a natural model; ResNet: p = 30, α = 0.1, γ = 1.0; WRN-34-10:
  p = 50, α = 0.3, γ = 0.5; r = 0.2, d = 0.999, β = 6; 120 epochs, as the
  CURE README (lr 0.1, ×0.1 at 100 and 110).
- aft: PGD-AT fine-tuning of a natural model for 15 epochs (≈ 1/7 of AT's
  110), 'slow start, fast decay': linear rise 0.01 → 0.1 over 6 epochs, then
  a cosine fall to 0 (our choice, the paper's exact values are not in the
  material we have; rift_jax/aft.py).
- natural: clean training, same optimiser, best validation clean accuracy.
CURE and AFT read `config.init_from` (default
runs/paper/natural[_<model>][_<dataset>], the natural run of that variant).
"""
from configs import common

METHODS = ("natural", "pgd_at", "trades", "mart", "score", "awp", "awp_trades",
           "cure", "aft")
MODELS = {"resnet18": 64, "resnet34": 64, "preact_resnet18": 64, "wrn34_10": 16}
DATASETS = ("cifar10", "cifar100", "svhn_cropped")


def get_config(arg: str = "pgd_at"):
  parts = [p for p in str(arg).split(",") if p]
  method = parts[0] if parts else "pgd_at"
  model = next((p for p in parts[1:] if p in MODELS), "resnet18")
  dataset = next((p for p in parts[1:] if p in DATASETS), "cifar10")
  unknown = [p for p in parts[1:] if p not in MODELS and p not in DATASETS]
  if method not in METHODS or unknown:
    raise ValueError(f"variant {arg!r} is not allowed; use <method>[,<model>]"
                     f"[,<dataset>] with method in {', '.join(METHODS)}, model "
                     f"in {', '.join(MODELS)}, dataset in {', '.join(DATASETS)}")
  c = common.base_config()
  c.data.name = dataset
  c.model.name, c.model.width = model, MODELS[model]
  c.method = method
  if method == "awp_trades":
    c.method = "awp"
    c.awp.base, c.awp.gamma, c.awp.beta, c.awp.warmup_epochs = "trades", 5e-3, 6.0, 9
  if method in ("cure", "aft"):
    c.init_from = "runs/paper/natural" + "".join(
        f"_{v}" for v, d in ((model, "resnet18"), (dataset, "cifar10")) if v != d)
  if method == "cure":
    c.optim.epochs, c.optim.lr_decay_epochs = 120, (100, 110)
    if model == "wrn34_10":
      c.cure.p, c.cure.alpha, c.cure.gamma = 50.0, 0.3, 0.5
  if method == "aft":
    c.optim.epochs = 15
    c.optim.schedule = "slow_start_fast_decay"
    c.optim.warmup_epochs = 6.0
    c.optim.start_lr_factor = 0.1
    c.optim.decay_shape = "cosine"
    c.optim.end_lr_factor = 0.0
  return c.lock()
