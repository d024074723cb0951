"""Input-layer convolutions whose input gradient is fast on XLA:CPU.

Why. A PGD attack needs the gradient with respect to the image at every iteration,
so it runs the input gradient of the first convolution (few input channels: 1 for
MNIST, 3 for CIFAR). As a convolution that gradient has only 1-3 output channels,
a degenerate GEMM (N = 1..3) that XLA:CPU runs several times slower per FLOP than
the forward (docs/PERFORMANCE.md has the measurement).

How. The same sum written as one well-shaped matmul plus col2im:
``P = g [B*H*W, O] @ w^T [O, kh*kw*C]`` (N = kh*kw*C = 25 or 27), then each kernel
tap's slice of ``P`` is shifted into place and summed (one fused elementwise pass).
Same products and sums as the transposed convolution, summation order aside.

``conv_general_dilated`` has ``lax.conv_general_dilated``'s signature (a Flax
``nn.Conv(conv_general_dilated=...)`` argument; ``parts.model_parts`` injects it on
CPU only). It takes this path for NHWC / HWIO stride-1 convolutions without dilation
or groups with at most ``MAX_IN_CHANNELS`` input channels; everything else is
``lax.conv_general_dilated`` unchanged.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ['conv_general_dilated', 'input_layer_conv', 'input_gradient', 'MAX_IN_CHANNELS']

MAX_IN_CHANNELS = 4
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _plain(x, w, pads):
  return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=_NHWC)


def input_gradient(g, w, in_hw, pads):
  """``d/dx`` of ``_plain(x, w, pads)`` for output gradient ``g [B, Ho, Wo, O]``.

  Returns ``[B, H, W, C]`` for ``w [kh, kw, C, O]``.
  """
  b, ho, wo, o = g.shape
  kh, kw, c, _ = w.shape
  (plh, phh), (plw, phw) = pads
  wt = jnp.transpose(w, (3, 0, 1, 2)).reshape(o, kh * kw * c)  # [O, kh*kw*C]
  p = jnp.dot(g.reshape(-1, o), wt).reshape(b, ho, wo, kh, kw, c)
  zero = jnp.zeros((), g.dtype)
  out = None
  for i in range(kh):
    for j in range(kw):
      # Tap (i, j) of output pixel (h, w) touches padded input (h + i, w + j).
      cfg = [(0, 0, 0), (i - plh, kh - 1 - i - phh, 0), (j - plw, kw - 1 - j - phw, 0),
             (0, 0, 0)]
      t = lax.pad(p[:, :, :, i, j, :], zero, cfg)
      out = t if out is None else out + t
  assert out.shape[1:3] == tuple(in_hw), (out.shape, in_hw)
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def input_layer_conv(x, w, pads):
  """Stride-1 NHWC / HWIO convolution with explicit ``pads``; fast input gradient."""
  return _plain(x, w, pads)


def _fwd(x, w, pads):
  return _plain(x, w, pads), (x, w)


def _bwd(pads, res, g):
  x, w = res
  _, vjp_w = jax.vjp(lambda w_: _plain(x, w_, pads), w)
  return input_gradient(g, w, x.shape[1:3], pads), vjp_w(g)[0]


input_layer_conv.defvjp(_fwd, _bwd)


def _applicable(lhs, rhs, strides, lhs_dilation, rhs_dilation, dimension_numbers,
                feature_group_count, batch_group_count):
  if lhs.ndim != 4 or feature_group_count != 1 or batch_group_count != 1:
    return False
  if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
    return False
  if any(int(s) != 1 for s in strides):
    return False
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if dn != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC):
    return False
  return lhs.shape[3] <= MAX_IN_CHANNELS


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
  """``lax.conv_general_dilated``; input-layer convs get the fast input gradient."""
  if (precision is None and preferred_element_type is None and
      _applicable(lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
                  feature_group_count, batch_group_count)):
    if isinstance(padding, str):
      pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    else:
      pads = padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    return input_layer_conv(lhs, rhs, pads)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)
