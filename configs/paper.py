"""Full-scale RiFT, paper Table 1 / 2 (ResNet-18/34, WRN-34-10; CIFAR-10/100,
Tiny-ImageNet). For a GPU/TPU user with the data prepared in TFDS's data_dir
(CIFAR) or the tiny-imagenet-200 folder.

  python -m launch.rift --config=configs/paper.py:cifar10,resnet18 \
      --workdir=runs/rift_c10_r18
  # RiFT on a model you already trained (a launch/train workdir or variables):
  python -m launch.rift --config=configs/paper.py:cifar100,wrn34_10 \
      --workdir=runs/rift_c100_wrn --config.rift.at_checkpoint=runs/at_c100_wrn
  # On top of another base method (paper Table 2):
  python -m launch.rift --config=configs/paper.py:cifar10,resnet18,trades \
      --workdir=runs/rift_c10_trades
  # Tiny-ImageNet: the folder layout, with Tiny-ImageNet-C beside it.
  python -m launch.rift --config=configs/paper.py:tiny_imagenet,resnet18 \
      --workdir=runs/rift_tin --config.data.data_dir=/data/tiny-imagenet-200 \
      --config.rift.ood.root=/data/Tiny-ImageNet-C

Variant: `<dataset>,<model>[,<method>]`. The base model is trained with the
Bag-of-Tricks recipe (configs/methods_paper.py) unless rift.at_checkpoint is
set. RiFT settings (docs/algorithms.md): MRC ε = 0.1, SGD lr 1, 10 passes,
batch 100 (the official 200 ascent steps a module: 20 a pass), per-pass
projection, fixed set = 2,000 validation images (the official code used the
test set: 10,000 images, batch 512); the module fine-tuned is the lowest-MRC
3×3 block convolution (rift.finetune.candidates='conv3x3', as every module
the authors published); fine-tuning SGD 0.9, wd 5e-4, lr 1e-3,
batch 128, 10 epochs, ×0.1 after 5, BN statistics updated; α ∈ {0, .1, …, 1}
chosen on validation (robust ≥ robust(α=0) − 0.1 pp); test: PGD-10 ×3
restarts; OOD: CIFAR10-C / CIFAR100-C / Tiny-ImageNet-C, 15 standard types,
5 severities.

Expected (paper, mean of 3 seeds; Std / OOD / Adv):
  ResNet18 CIFAR10   AT 81.46/73.56/53.63 → RiFT 83.44/75.69/53.65 (layer2.1.conv2)
  ResNet18 CIFAR100  AT 57.10/46.43/30.15 → RiFT 58.74/48.06/30.17 (layer2.1.conv2)
  ResNet18 Tiny-IN   AT 49.10/27.68/23.28 → RiFT 50.61/28.73/23.34 (layer3.1.conv2)
  ResNet34 CIFAR10   AT 84.23/75.37/55.31 → RiFT 85.41/77.15/55.34 (layer2.3.conv2)
  WRN34-10 CIFAR10   AT 87.41/78.75/55.40 → RiFT 87.89/79.31/55.41 (block1.layer.3.conv2)
  WRN34-10 CIFAR100  AT 62.35/50.61/31.66 → RiFT 64.56/52.69/31.64 (block1.layer.2.conv2)
"""
from configs import methods_paper

DATASETS = ("cifar10", "cifar100", "tiny_imagenet")
MODELS = ("resnet18", "resnet34", "wrn34_10")
OOD = {"cifar10": ("cifar10_c", ""), "cifar100": ("cifar100_c", "~/data/CIFAR-100-C"),
       "tiny_imagenet": ("tiny_imagenet_c", "~/data/Tiny-ImageNet-C")}


def get_config(arg: str = "cifar10,resnet18"):
  parts = [p for p in str(arg).split(",") if p]
  dataset = parts[0] if parts else "cifar10"
  model = parts[1] if len(parts) > 1 else "resnet18"
  method = parts[2] if len(parts) > 2 else "pgd_at"
  if dataset not in DATASETS or model not in MODELS or len(parts) > 3:
    raise ValueError(f"variant {arg!r} is not allowed; use <dataset>,<model>"
                     f"[,<method>] with dataset in {', '.join(DATASETS)} and model "
                     f"in {', '.join(MODELS)}")
  base_data = "cifar10" if dataset == "tiny_imagenet" else dataset
  c = methods_paper.get_config(f"{method},{model},{base_data}")
  c.unlock()
  c.data.name = dataset
  if dataset == "tiny_imagenet":
    c.data.data_dir = "~/data/tiny-imagenet-200"
  c.data.val_size = 2000
  c.rift.mrc.num_examples = 2000
  c.rift.mrc.batch_size = 100   # 20 ascent steps a pass, 200 a module
  source, root = OOD[dataset]
  c.rift.ood.enabled = True
  c.rift.ood.source = source
  c.rift.ood.root = root
  c.rift.ood.corruptions = "standard"
  return c.lock()
