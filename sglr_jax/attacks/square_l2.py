"""Square Attack's L2 proposals (the reference's ``square.py``, ``norm='L2'`` branch).

The L2 attack paints windows with a "meta-pseudo-Gaussian" pattern (``eta``: two
rectangles of opposite sign, each a sum of nested squares weighted 1 / k^2) times a
random sign per channel. Each query moves the perturbation's mass of a second random
window into the first, rescaled so that the whole perturbation keeps L2 norm ``eps``.

The patterns depend only on the image size and the query, so they are built once in
numpy; each example draws its own windows, signs and transposes (the reference draws
them once per batch; every point's distribution of proposals is the same).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from sglr_jax.attacks.common import l2_norm, normalize, per_example


def eta_rectangles(x: int, y: int) -> np.ndarray:
  """``[x, y]``: nested rectangles around the centre, weight ``1 / (k + 1)^2``, L2-normalised."""
  delta = np.zeros((x, y), np.float64)
  x_c, y_c = x // 2 + 1, y // 2 + 1
  c0, c1 = x_c - 1, y_c - 1
  for counter in range(max(x_c, y_c)):
    delta[max(c0, 0):min(c0 + 2 * counter + 1, x),
          max(0, c1):min(c1 + 2 * counter + 1, y)] += 1.0 / (counter + 1)**2
    c0, c1 = c0 - 1, c1 - 1
  return delta / max(np.sqrt(np.sum(delta**2)), 1e-300) if delta.size else delta


def eta(s: int) -> np.ndarray:
  """``[s, s]``: the upper half positive, the lower half negative, unit L2 norm."""
  delta = np.zeros((s, s), np.float64)
  delta[:s // 2] = eta_rectangles(s // 2, s)
  delta[s // 2:] = -eta_rectangles(s - s // 2, s)
  return (delta / np.sqrt(np.sum(delta**2))).astype(np.float32)


def window_sizes(height: int, width: int, p_schedule) -> np.ndarray:
  """L2 window side per query: ``round(sqrt(p h w))``, at least 3, odd, at most min(h, w)."""
  out = []
  for p in p_schedule:
    s = max(int(round(math.sqrt(p * height * width))), 3)
    s += 1 if s % 2 == 0 else 0
    out.append(min(s, min(height, width)))
  return np.asarray(out, np.int32)


@functools.lru_cache(maxsize=16)
def _pattern_table(height: int, width: int, sizes: tuple):
  """``(patterns [n, 2, H, W], index of each size)``: ``eta(s)`` and its transpose in the
  top-left corner of an ``H x W`` canvas, for every distinct side."""
  distinct = sorted(set(sizes))
  table = np.zeros((len(distinct), 2, height, width), np.float32)
  for i, s in enumerate(distinct):
    table[i, 0, :s, :s] = eta(s)
    table[i, 1, :s, :s] = eta(s).T
  return table, {s: i for i, s in enumerate(distinct)}


def init_pattern(height: int, width: int):
  """The reference's start: ``eta(h // 5)`` tiles; ``(block id [H, W] (-1: none),
  pattern [2, H, W] (as is, transposed), number of blocks)``."""
  s = height // 5
  if s < 1:
    raise ValueError(f'L2 Square needs images of height >= 5, not {height}')
  sp = (height - 5 * s) // 2
  block = -np.ones((height, width), np.int32)
  pat = np.zeros((2, height, width), np.float32)
  e = np.stack([eta(s), eta(s).T])
  n = 0
  for i in range(height // s):
    for j in range(width // s):
      vh, vw = sp + i * s, sp + j * s
      hh, ww = min(s, height - vh), min(s, width - vw)
      if hh > 0 and ww > 0:
        block[vh:vh + hh, vw:vw + ww] = n
        pat[:, vh:vh + hh, vw:vw + ww] = e[:, :hh, :ww]
      n += 1
  return block, pat, n


def l2_start(x, keys, eps):
  """``x + eps * normalize(delta_init)`` in [0, 1]; ``keys`` one per example."""
  _, h, w, c = x.shape
  block, pat, n = init_pattern(h, w)
  k2 = jax.vmap(lambda k: jax.random.split(k, 2))(keys)
  signs = jax.vmap(lambda k: jax.random.rademacher(k, (n, c), jnp.float32))(k2[:, 0])
  flips = jax.vmap(lambda k: jax.random.bernoulli(k, 0.5, (n,)))(k2[:, 1])   # [B, n]
  bid = jnp.asarray(np.maximum(block, 0))                                      # [H, W]
  inside = jnp.asarray(block >= 0)[None, :, :, None]
  flip = jnp.take(flips, bid, axis=1)[..., None]                               # [B, H, W, 1]
  p = jnp.where(flip, jnp.asarray(pat[1])[None, :, :, None], jnp.asarray(pat[0])[None, :, :, None])
  delta = jnp.where(inside, p * jnp.take(signs, bid, axis=1), 0.0)             # [B, H, W, C]
  return jnp.clip(x + normalize(delta, 'L2') * eps, 0.0, 1.0)


def _window(h, w, vh, vw, size):
  """``[B, H, W, 1]`` masks of the squares at ``(vh [B], vw [B])`` with side ``size``."""
  rows = jnp.arange(h)[None, :, None, None]
  cols = jnp.arange(w)[None, None, :, None]
  vh, vw = vh[:, None, None, None], vw[:, None, None, None]
  return ((rows >= vh) & (rows < vh + size) & (cols >= vw) & (cols < vw + size)).astype(
      jnp.float32)


def l2_proposal(x, x_best, it, keys, eps, sizes_np: np.ndarray):
  """One query's candidates ``[B, H, W, C]``: window 2's mass moved into window 1."""
  _, h, w, c = x.shape
  table_np, index = _pattern_table(h, w, tuple(int(s) for s in sizes_np))
  table = jnp.asarray(table_np)
  size = jnp.asarray(sizes_np)[it]
  pat_id = jnp.asarray(np.asarray([index[int(s)] for s in sizes_np], np.int32))[it]
  k = jax.vmap(lambda kk: jax.random.split(kk, 6))(keys)
  pos = lambda kk, n: jnp.floor((n - size) * jax.vmap(jax.random.uniform)(kk)).astype(
      jnp.int32)  # the reference's random_int(0, n - s)
  vh, vw, vh2, vw2 = pos(k[:, 0], h), pos(k[:, 1], w), pos(k[:, 2], h), pos(k[:, 3], w)
  sign = jax.vmap(lambda kk: jax.random.rademacher(kk, (1, 1, c), jnp.float32))(k[:, 4])
  flip = jax.vmap(lambda kk: jax.random.bernoulli(kk, 0.5))(k[:, 5]).astype(jnp.int32)
  pat = table[pat_id][flip]                                                # [B, H, W]
  pat = jax.vmap(lambda p, a, b: jnp.roll(p, (a, b), axis=(0, 1)))(pat, vh, vw)[..., None]

  delta = x_best - x
  m1, m2 = _window(h, w, vh, vw, size), _window(h, w, vh2, vw2, size)
  hw_norm = lambda v: jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2), keepdims=True))  # [B,1,1,C]
  norm_w1 = hw_norm(delta * m1)
  norm_image = per_example(l2_norm(delta), x)
  norm_windows = hw_norm(delta * jnp.maximum(m1, m2))
  new = pat * sign + delta * m1 / (1e-12 + norm_w1)
  budget = jnp.maximum(eps**2 - norm_image**2, 0.0) / c + norm_windows**2
  new = new / (1e-12 + hw_norm(new)) * jnp.sqrt(budget)
  delta = delta * (1.0 - m2)
  delta = delta * (1.0 - m1) + new * m1
  return jnp.clip(x + normalize(delta, 'L2') * eps, 0.0, 1.0)
