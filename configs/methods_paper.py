"""Full-scale training of every method as its authors ran it (GPU/TPU).

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

Common recipe (RiFT §5.1, Bag-of-Tricks, as RiFT's base models; docs/algorithms.md):
L-inf ε = 8/255, PGD-10 step 2/255, SGD momentum 0.9, wd 5e-4, lr 0.1, batch
128, 110 epochs, lr ×0.1 at 100 and 105, best validation PGD accuracy kept.
A method differs from it only where the table says so.

Per method, what the papers leave to code, taken from the authors' code.
BN = BatchNorm mode while crafting (`attack.bn_mode`). Passes = the forward
passes that update the BN running averages in one step, in order
(`attack.bn_passes='authors'`, rift_jax/training/objectives.py): x_0 … x_K the
train-mode attack's K + 1 passes (each step and the final loss evaluation),
x' the adversarial batch, (x) a statistics-only clean pass, θ' = θ after the
update, θ + v AWP's perturbed weights. Epochs are the authors' 1-based ones
("×0.1 at 100" = epoch 100 is the first at the lower rate).

| method | BN | passes | hyperparameters (differences from the common recipe) | authors' code |
|---|---|---|---|---|
| pgd_at | train | x_0 … x_K, x', (x), (x) at θ' | none: the common recipe is this code's (`--BNeval` off, its default) | P2333/Bag-of-Tricks-for-AT `train_cifar.py` |
| trades | eval | x, x', (x) | β = 6, attack from x + 0.001·N(0, 1). The code's WRN recipe (lr 0.1, wd 2e-4, 76 epochs, ×0.1 at 75; ε 0.031, step 0.007) has no ResNet-18 version: common recipe kept | yaodongyu/TRADES `trades.py`, `train_trades_cifar10.py` |
| mart | eval | x, x' | ResNet-18/34, PreAct-18: λ = 5, lr 0.01, wd 3.5e-3, 120 epochs, ×0.1 at 75, 90 and 100. WRN-34-10: λ = 6, lr 0.1, wd 7e-4, 90 epochs, ×0.1 at 75 and 90. Attack from x + 0.001·N(0, 1) (the code's ε 0.031, step 0.007 not taken) | YisenWang/MART `train_resnet.py`, `train_wideresnet.py`, `mart.py` |
| score | eval | x', x | recipe 'no_extra_data': β = 6, clip_loss 0.3 (per-example loss clipped below 0.1), lr 0.05; attack on the squared error from x + 0.001·N(0, 1) | P2333/SCORE `without_DDPM/train_cifar.py` (its README's TRADES (LSE) command) |
| awp | train | x_0 … x_K, x' at θ + v, (x) at θ' | AT-AWP: γ = 5e-3 (RiFT §5.1; the code's default 1e-2), no warm-up; common recipe (the code: PreAct-18, 200 epochs, ×0.1 at 100 and 150) | csdongxian/AWP `AT_AWP/train_cifar10.py`, `AT_AWP/utils_awp.py` |
| awp_trades | eval | x', x, (x), at θ + v | TRADES-AWP: γ = 5e-3, β = 6, AWP from epoch 10; common recipe (the code: WRN-34-10, 200 epochs, ×0.1 at 100 and 150) | csdongxian/AWP `trades_AWP/train_trades_cifar.py`, `trades_AWP/utils_awp.py` |
| cure | eval | x, x' | from a natural model; ResNet: p = 30, α = 0.1, γ = 1.0; WRN-34-10: p = 50, α = 0.3, γ = 0.5; r = 0.2, d = 0.999, β = 6 (paper; the code's default 5); 120 epochs at lr 0.1, ×0.1 once at 100 (README epochs, `--epoch_step 100 150` default) | NeurAI-Lab/CURE `README.md`, `train.py`, `utilities/args.py`, `train_util/adversarial_loss.py` |
| aft | train | as pgd_at (our choice) | PGD-AT fine-tuning of a natural model, 15 epochs (≈ 1/7 of AT's 110), 'slow start, fast decay': linear rise 0.01 → 0.1 over 6 epochs, then a cosine fall to 0 (our choice: no code or values in the material we have; rift_jax/training/schedules.py) | none |
| natural | — | x | clean training, best validation clean accuracy | — |

SCORE: RiFT's Table 2 trains on the CIFAR-10 training set only (no
generated data is mentioned), which is the setting of the authors'
'no_extra_data' recipe, so that is most likely the one behind its SCORE row;
the 1M-DDPM recipe's models are far more accurate on clean images (88.61 for
the authors' WRN-28-10 checkpoint) than the 84.20 RiFT reports for SCORE on
ResNet-18. The loss of the extra-data recipe is
available: --config.score.recipe=extra_data --config.score.beta=4
--config.score.clip_loss=0 --config.attack.bn_mode=train (its attack runs in
train mode without updating the averages; the generated data, the weight
averaging and its optimiser are not implemented).

Where we still differ from the authors' code, on purpose: every method uses
ε = 8/255, step 2/255 (the threat model RiFT evaluates; the TRADES, MART and
CURE code use 0.031 / 0.007), keeps the best validation epoch, and trains the
architectures named here (the AWP and SCORE code use PreAct-18 / WRN); the
running variance averages the biased batch variance (PyTorch: unbiased,
< 0.05 % apart here); AT-AWP's first batch of each epoch is crafted in eval
mode there (its test loop leaves eval mode on), in train mode here.
CURE and AFT read `config.init_from` (default
runs/paper/natural[_<model>][_<dataset>], the natural run of that variant).
"""
from configs import common

METHODS = ("natural", "pgd_at", "trades", "mart", "score", "awp", "awp_trades",
           "cure", "aft")
MODELS = {"resnet18": 64, "resnet34": 64, "preact_resnet18": 64, "wrn34_10": 16}
DATASETS = ("cifar10", "cifar100", "svhn_cropped")

# BatchNorm mode while crafting, as each authors' code (table above).
ATTACK_BN = {"natural": "train", "pgd_at": "train", "trades": "eval",
             "mart": "eval", "score": "eval", "awp": "train",
             "awp_trades": "eval", "cure": "eval", "aft": "train"}


def is_wide(model: str) -> bool:
  return model.startswith("wrn")


def method_settings(c, method: str, model: str = "resnet18"):
  """The authors' method settings, not the optimiser: `c.method`, the BN
  mode while crafting, and the method block (MART's λ per architecture,
  SCORE's recipe, AWP's base, CURE's WRN values). Sets existing fields only,
  so it also works on a locked config (configs/quickstart_methods.py)."""
  c.method = "awp" if method == "awp_trades" else method
  c.attack.bn_mode = ATTACK_BN[method]
  if "bn_passes" in c.attack:
    c.attack.bn_passes = "authors"
  if method == "awp_trades":
    c.awp.base, c.awp.gamma, c.awp.beta, c.awp.warmup_epochs = "trades", 5e-3, 6.0, 9
  if method == "mart":
    c.mart.lam = 6.0 if is_wide(model) else 5.0
  if method == "score":
    c.score.recipe, c.score.beta, c.score.clip_loss = "no_extra_data", 6.0, 0.3
  if method == "cure" and is_wide(model):
    c.cure.p, c.cure.alpha, c.cure.gamma = 50.0, 0.3, 0.5
  return c


def optim_settings(c, method: str, model: str = "resnet18"):
  """The authors' optimiser and schedule where they differ from the common
  recipe (table above). Our piecewise boundary e = the first e epochs at the
  higher rate, so the authors' 1-based epoch E is boundary E − 1."""
  if method == "mart" and not is_wide(model):   # YisenWang/MART train_resnet.py
    c.optim.lr, c.optim.weight_decay, c.optim.epochs = 0.01, 3.5e-3, 120
    c.optim.lr_decay_epochs = (74, 89, 99)
  if method == "mart" and is_wide(model):       # train_wideresnet.py
    c.optim.lr, c.optim.weight_decay, c.optim.epochs = 0.1, 7e-4, 90
    c.optim.lr_decay_epochs = (74, 89)
  if method == "score":                         # without_DDPM README command
    c.optim.lr = 0.05
  if method == "cure":                          # README + --epoch_step default
    c.optim.epochs, c.optim.lr_decay_epochs = 120, (99,)
  if method == "aft":
    c.optim.epochs = 15
    c.optim.schedule = "slow_start_fast_decay"
    c.optim.warmup_epochs = 6.0
    c.optim.start_lr_factor = 0.1
    c.optim.decay_shape = "cosine"
    c.optim.end_lr_factor = 0.0
  return c


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
  method_settings(c, method, model)
  optim_settings(c, method, model)
  if method in ("cure", "aft"):
    c.init_from = "runs/paper/natural" + "".join(
        f"_{v}" for v, d in ((model, "resnet18"), (dataset, "cifar10")) if v != d)
  return c.lock()
