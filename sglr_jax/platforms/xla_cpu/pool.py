"""Non-overlapping max-pooling with an elementwise backward (fast on XLA:CPU).

Why. ``nn.max_pool``'s gradient is XLA ``select-and-scatter``, which XLA:CPU runs as a
slow scalar loop nest; the small MNIST CNN's input gradient (every PGD iteration)
goes through two of them. For a window equal to its stride (2x2, stride 2) the pool
is a reshape + max, and its gradient is a mask: each window's gradient goes to its
*first* maximal element in row-major window order, exactly what select-and-scatter
(``ge`` select) does, ties included.

``max_pool`` has ``nn.max_pool``'s signature (``parts.model_parts`` injects it on CPU
only); it uses the rewrite for VALID windows equal to their strides that divide the
input; everything else calls ``nn.max_pool`` unchanged.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ['max_pool', 'blocked_max_pool']


def _windows(x, window):
  """The window's elements in row-major order, each ``[B, oh, ow, C]``."""
  (wh, ww), (b, h, w, c) = window, x.shape
  xr = x.reshape(b, h // wh, wh, w // ww, ww, c)
  return [xr[:, :, i, :, j, :] for i in range(wh) for j in range(ww)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def blocked_max_pool(x, window):
  """``[B, H, W, C]`` -> ``[B, H/wh, W/ww, C]``, max over disjoint windows."""
  return functools.reduce(jnp.maximum, _windows(x, window))


def _fwd(x, window):
  parts = _windows(x, window)
  m = functools.reduce(jnp.maximum, parts)
  # Index of the first maximal element per window (row-major): select-and-scatter's pick.
  first = jnp.full(m.shape, len(parts) - 1, jnp.int8)
  for k in range(len(parts) - 2, -1, -1):
    first = jnp.where(parts[k] == m, jnp.int8(k), first)
  return m, first


def _bwd(window, first, g):
  wh, ww = window
  zero = jnp.zeros((), g.dtype)
  rows = [jnp.stack([jnp.where(first == i * ww + j, g, zero) for j in range(ww)], axis=3)
          for i in range(wh)]  # each [B, oh, ow, ww, C]
  gb = jnp.stack(rows, axis=2)  # [B, oh, wh, ow, ww, C]
  b, oh, _, ow, _, c = gb.shape
  return (gb.reshape(b, oh * wh, ow * ww, c),)


blocked_max_pool.defvjp(_fwd, _bwd)


def max_pool(inputs, window_shape, strides=None, padding='VALID'):
  """``nn.max_pool`` (NHWC); disjoint windows that tile the input use ``blocked_max_pool``."""
  window = tuple(int(w) for w in window_shape)
  strides = tuple(int(s) for s in strides) if strides is not None else (1,) * len(window)
  if (inputs.ndim == 4 and len(window) == 2 and strides == window and
      (padding == 'VALID' or padding == ((0, 0), (0, 0))) and
      inputs.shape[1] % window[0] == 0 and inputs.shape[2] % window[1] == 0):
    return blocked_max_pool(inputs, window)
  return nn.max_pool(inputs, window_shape, strides=strides, padding=padding)
