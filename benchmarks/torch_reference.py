"""PyTorch reference versions of our algorithms, as their authors' code runs them.

For `benchmarks/mrc.py` (speed against the PyTorch stack the papers used,
and a cross-check of our numbers). Needs torch (`pip install .[torch]`).

- `official_mrc`: RiFT's module robust criticality as the authors' code
  computes it (microsoft/robustlearn, RiFT/main.py, `layer_sharpness`),
  written here from the facts of that code: for one module, a deep copy of
  the model in eval mode in which only that module's weight requires grad;
  `torch.optim.SGD(lr=1)` (no momentum, no weight decay) on the NEGATED
  cross-entropy (gradient ascent), batches of 512 over the fixed adversarial
  set, 10 passes; after each pass the weight is projected back onto
  ‖w − w0‖_F ≤ ε‖w0‖_F (ε = 0.1, via the state_dict as the authors do) and
  the loss is evaluated on the whole fixed set; MRC = max over passes of
  (loss − original loss). One departure: the authors' DataLoader shuffles
  the fixed set every pass; here the batches keep the set's order, as
  `rift_jax.mrc` does, so the two compute the same sequence of steps and
  their MRC values can be compared number for number (the cost of a pass
  does not depend on the order).

The batches are slices of one tensor (no DataLoader, no collation), which
if anything flatters PyTorch's time.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int):
  for i in range(0, len(y), batch_size):
    yield x[i:i + batch_size], y[i:i + batch_size]


@torch.no_grad()
def robust_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                batch_size: int) -> tuple[float, float]:
  """(mean cross-entropy, accuracy in %) of `model` (as it is: call
  `.eval()` first) on the fixed set `x` `[N, C, H, W]`, `y` `[N]`, batch by
  batch, as the authors' code sums it (mean of a batch × its size, / N)."""
  total, loss, correct = 0, 0.0, 0
  for xb, yb in _batches(x, y, batch_size):
    out = model(xb)
    total += yb.shape[0]
    loss += F.cross_entropy(out, yb).item() * yb.shape[0]
    correct += out.argmax(1).eq(yb).sum().item()
  return loss / total, 100.0 * correct / total


def official_mrc(model: nn.Module, module: str, x: torch.Tensor,
                 y: torch.Tensor, *, epsilon: float = 0.1,
                 learning_rate: float = 1.0, num_passes: int = 10,
                 batch_size: int = 512, origin: tuple[float, float] | None = None
                 ) -> dict:
  """The MRC of one module (`module`, e.g. 'layer2.1.conv2': its `.weight`)
  by the authors' loop (module docstring).

  Args:
    model: the network holding θ (not modified: the loop runs on a deep copy,
      in eval mode).
    x, y: the fixed adversarial set `[N, C, H, W]` float32 and labels `[N]`
      int64.
    origin: (loss, accuracy %) of θ on the set, if already computed (the
      authors compute it once for all modules); else computed here.

  Returns {'mrc': max over passes of loss − origin loss (the authors' value,
  negative when no pass raised the loss), 'mrc_clipped': max(0, mrc) (our
  `rift_jax.mrc` convention: Δw = 0 is feasible), 'adv_acc_drop': accuracy
  at θ minus at the pass of the maximum (pp), 'origin_loss', 'origin_acc',
  'loss_per_pass', 'acc_per_pass', 'relative_norm_per_pass'}.
  """
  model.eval()
  if origin is None:
    origin = robust_loss(model, x, y, batch_size)
  origin_loss, origin_acc = origin
  param_name = f"{module}.weight"
  clone = copy.deepcopy(model)
  clone.eval()
  init = None
  for name, p in clone.named_parameters():
    p.requires_grad_(name == param_name)
    if name == param_name:
      init = p.detach().clone()
  if init is None:
    raise ValueError(f"the model has no parameter {param_name!r}")
  optimizer = torch.optim.SGD(clone.parameters(), lr=learning_rate)
  losses, accs, norms = [], [], []
  for _ in range(num_passes):
    for xb, yb in _batches(x, y, batch_size):   # gradient ascent
      optimizer.zero_grad()
      loss = -F.cross_entropy(clone(xb), yb)
      loss.backward()
      optimizer.step()
    sd = clone.state_dict()                     # per-pass projection
    diff = sd[param_name] - init
    times = torch.linalg.norm(diff) / torch.linalg.norm(init)
    if times > epsilon:
      sd[param_name] = init + diff / times * epsilon
      clone.load_state_dict(sd)
    norms.append(min(float(times), epsilon))
    loss_p, acc_p = robust_loss(clone, x, y, batch_size)
    losses.append(loss_p)
    accs.append(acc_p)
  best = max(range(num_passes), key=lambda i: losses[i])
  mrc = losses[best] - origin_loss
  return dict(mrc=mrc, mrc_clipped=max(0.0, mrc),
              adv_acc_drop=origin_acc - accs[best], origin_loss=origin_loss,
              origin_acc=origin_acc, loss_per_pass=losses, acc_per_pass=accs,
              relative_norm_per_pass=norms)
