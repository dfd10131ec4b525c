"""2-D convolution whose input gradient suits XLA:CPU.

PGD spends nearly all its time in convolutions and their input gradients.
XLA computes the input gradient of a stride-s convolution as a stride-1
convolution over the output gradient dilated with s-1 zeros between pixels:
for stride 2 three quarters of its multiply-adds hit zeros, and on XLA:CPU
that one op costs ~4x the forward convolution (measured: 102 ms vs 27 ms for
ResNet-18's `layer2.0.conv1` at batch 128). For a first layer with 1-3 input
channels the gradient is a convolution with 1-3 output channels, which
XLA:CPU runs at ~20 GFLOP/s.

`conv2d(..., impl="phase")` keeps XLA's forward convolution and kernel
gradient and replaces the input gradient by exact rewrites:
- stride s > 1 (sub-pixel / phase decomposition): input pixel u = s*m + r
  only receives kernel taps a with a = r + padding (mod s), from output
  pixels m + (r + padding - a) / s. Each of the s*s phases (r, q) is one
  small stride-1 VALID convolution over the output gradient with the taps
  of that phase; the phases are interleaved back into the input grid.
  No multiply-add touches a zero.
- stride 1 and at most `_FEW_CHANNELS` input channels: one matmul of the
  output gradient with the kernel (the gradient of every im2col patch),
  then the k*k shifted patch gradients are summed back onto the image.
Both give the same numbers as XLA's rule up to float rounding (tests); the
kernel gradient and every second derivative come from differentiating plain
`lax` code, so reverse-over-reverse (CURE's curvature term) works. Forward
mode (`jax.jvp`) is not defined for a `custom_vjp` function; use
impl="xla" for that.

`impl="auto"` picks "phase" on CPU and "xla" elsewhere (cuDNN and the TPU
compiler handle strided gradients themselves). `benchmarks/base.py`
(`--conv_impl`) measures both.

`Conv` is the Flax layer every model uses: bias-free, PyTorch's padding
(k-1)//2, params `{'kernel': HWIO}` as `flax.linen.Conv`, so checkpoints and
converted PyTorch weights are unchanged.

Mixed precision (`Conv(dtype=jnp.bfloat16)`, `model.compute_dtype`): the
kernel stays a float32 param and is cast to the compute dtype inside the
layer, with the input; `conv2d` then runs in that dtype and its custom input
gradient returns the input's dtype (bfloat16 in, bfloat16 out, as XLA's own
rule). The few-channel rule sums its k*k shifted patch gradients in float32
and rounds once, as XLA's transposed convolution accumulates; the phase rule
adds nothing across phases. The kernel gradient comes back in the compute
dtype and the cast's transpose makes it float32 at the param. In float32 every
cast is a no-op: the float32 program is the one without this feature.

Rewrites that were measured and left out are in docs/performance.md.

Layouts are NHWC inputs and HWIO kernels, square kernels and strides, the
same padding on every side (what the models use: PyTorch's `padding=k//2`).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from rift_jax import sharding
from rift_jax.errors import check_choice

_DIMS = ("NHWC", "HWIO", "NHWC")
# Stride-1 convolutions with this many input channels or fewer (the first
# layer of an image model) take the matmul + col2im input gradient.
_FEW_CHANNELS = 4

IMPLS = ("auto", "phase", "xla")


def resolve_impl(impl: str) -> str:
  """'auto' -> 'phase' on CPU, 'xla' on GPU/TPU (`sharding.cpu_paths`)."""
  check_choice("conv impl", impl, IMPLS)
  if impl == "auto":
    return "phase" if sharding.cpu_paths() else "xla"
  return impl


def _xla_conv(x, kernel, stride: int, padding: int):
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
      dimension_numbers=_DIMS)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0,
           impl: str = "auto") -> jax.Array:
  """NHWC x HWIO convolution, the same `padding` on all four sides."""
  if resolve_impl(impl) == "xla":
    return _xla_conv(x, kernel, stride, padding)
  return _phase_conv(x, kernel, stride, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _phase_conv(x, kernel, stride, padding):
  return _xla_conv(x, kernel, stride, padding)


def _phase_conv_fwd(x, kernel, stride, padding):
  return _xla_conv(x, kernel, stride, padding), (x, kernel)


def _phase_conv_bwd(stride, padding, res, g):
  x, kernel = res
  _, kernel_vjp = jax.vjp(lambda k: _xla_conv(x, k, stride, padding), kernel)
  (d_kernel,) = kernel_vjp(g)
  # Cotangents must have their primals' dtypes (a no-op when all are equal).
  dx = input_grad(g, kernel, x.shape, stride, padding).astype(x.dtype)
  return dx, d_kernel.astype(kernel.dtype)


_phase_conv.defvjp(_phase_conv_fwd, _phase_conv_bwd)


def input_grad(g: jax.Array, kernel: jax.Array, x_shape, stride: int,
               padding: int) -> jax.Array:
  """d(conv(x, kernel))/dx applied to the output gradient `g`."""
  if stride > 1:
    return _strided_input_grad(g, kernel, x_shape, stride, padding)
  if x_shape[-1] <= _FEW_CHANNELS:
    return _few_channel_input_grad(g, kernel, x_shape, padding)
  _, x_vjp = jax.vjp(lambda x: _xla_conv(x, kernel, stride, padding),
                     jnp.zeros(x_shape, g.dtype))
  return x_vjp(g)[0]


def _strided_input_grad(g, kernel, x_shape, stride, padding):
  """Phase decomposition (see the module docstring)."""
  n, height, width, c_in = x_shape
  k = kernel.shape[0]
  rows = -(-height // stride)  # every phase padded to this many rows/columns
  cols = -(-width // stride)

  def taps(r):  # [(kernel index a, output offset d)] for phase r, d ascending
    return sorted(((a, (r + padding - a) // stride) for a in range(k)
                   if (a - r - padding) % stride == 0), key=lambda t: t[1])

  phases = []
  for r in range(stride):
    row_taps = taps(r)
    per_col = []
    for q in range(stride):
      col_taps = taps(q)
      if not row_taps or not col_taps:
        per_col.append(jnp.zeros((n, rows, cols, c_in), g.dtype))
        continue
      # Output rows m + d for phase rows m = 0..rows-1: pad (or crop) g so a
      # VALID convolution over it yields exactly `rows` x `cols` pixels.
      (d0r, d1r), (d0c, d1c) = ((row_taps[0][1], row_taps[-1][1]),
                                (col_taps[0][1], col_taps[-1][1]))
      gp = lax.pad(g, jnp.zeros((), g.dtype), (
          (0, 0, 0), (-d0r, rows + d1r - g.shape[1], 0),
          (-d0c, cols + d1c - g.shape[2], 0), (0, 0, 0)))
      sub = jnp.stack([jnp.stack([kernel[a, b] for b, _ in col_taps])
                       for a, _ in row_taps])  # taps x taps x c_in x c_out
      per_col.append(lax.conv_general_dilated(
          gp, jnp.swapaxes(sub, 2, 3), (1, 1), "VALID", dimension_numbers=_DIMS))
    phases.append(jnp.stack(per_col, axis=3))  # n, rows, cols, q, c_in
  full = jnp.stack(phases, axis=2)  # n, rows, r, cols, q, c_in
  full = full.reshape(n, rows * stride, cols * stride, c_in)
  return full[:, :height, :width]


def _few_channel_input_grad(g, kernel, x_shape, padding):
  """Stride 1: gradient of each im2col patch by one matmul, then col2im."""
  n, height, width, c_in = x_shape
  k = kernel.shape[0]
  # Half-precision g: the matmul and the k*k-term sum in float32, rounded
  # once at the end (float32 g: exactly the float32 code).
  acc = jnp.promote_types(g.dtype, jnp.float32)
  if acc == g.dtype:
    patches = jnp.einsum("nhwo,abio->nhwabi", g, kernel)
  else:
    patches = jnp.einsum("nhwo,abio->nhwabi", g, kernel,
                         preferred_element_type=acc)
  out_h, out_w = g.shape[1], g.shape[2]
  padded = jnp.zeros((n, height + 2 * padding, width + 2 * padding, c_in), acc)
  for a in range(k):
    for b in range(k):
      padded = padded.at[:, a:a + out_h, b:b + out_w].add(patches[:, :, :, a, b])
  out = padded[:, padding:padding + height, padding:padding + width]
  return out.astype(g.dtype)


# He-normal fan-out for conv kernels (torchvision's ResNet init); checkpoints
# converted from PyTorch bring their own weights.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Conv(nn.Module):
  """NHWC convolution layer; `impl` as `conv2d`. `dtype`: the compute dtype
  (input and kernel are cast to it); the kernel param is always float32."""
  features: int
  kernel_size: int
  stride: int = 1
  impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", conv_init, (self.kernel_size, self.kernel_size,
                                              x.shape[-1], self.features),
                        jnp.float32)
    return conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride,
                  (self.kernel_size - 1) // 2, self.impl)
