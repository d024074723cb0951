"""CIFAR training augmentation on device: random crop with zero padding + horizontal flip.

``augment_one(key, image)`` handles one ``[H, W, C]`` image and is meant to be
vmapped over per-example keys (the training step does this so an example's
augmentation depends on its own key only, not on how the batch is sharded);
``augment_batch(key, images)`` is that vmap for a whole ``[B, H, W, C]`` batch.
Both keep shape and dtype (uint8 or float): the crop is a shifted window of the
zero-padded image and the flip reverses the width axis, so no pixel is
interpolated or rescaled.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

PADDING = 4  # CIFAR standard: pad 32 -> 40, crop back to 32


@functools.partial(jax.jit, static_argnames=('padding', 'crop_size', 'flip'))
def augment_one(key: jax.Array, image: jax.Array, padding: int = PADDING,
                crop_size: Optional[int] = None, flip: bool = True) -> jax.Array:
  """Random ``crop_size`` crop of ``image`` zero-padded by ``padding``, then a coin-flip
  horizontal flip. ``image``: [H, W, C]; ``crop_size`` None means H (= W), 32 on CIFAR.

  Returns [crop_size, crop_size, C] of the input dtype. The crop offsets are
  uniform in [0, H + 2 * padding - crop_size] on each axis.
  """
  h, w, _ = image.shape
  size = h if crop_size is None else crop_size
  if size > h + 2 * padding or size > w + 2 * padding:
    raise ValueError(f'crop_size={size} exceeds the padded image {h + 2 * padding}x'
                     f'{w + 2 * padding}')
  k_crop, k_flip = jax.random.split(key)
  padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))  # zeros
  max_off = jnp.array([h + 2 * padding - size, w + 2 * padding - size])
  off = jax.random.randint(k_crop, (2,), 0, max_off + 1)  # [dy, dx]
  out = jax.lax.dynamic_slice(padded, (off[0], off[1], 0), (size, size, image.shape[2]))
  if flip:
    out = jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1], out)
  return out


@functools.partial(jax.jit, static_argnames=('padding', 'crop_size', 'flip'))
def augment_batch(key: jax.Array, images: jax.Array, padding: int = PADDING,
                  crop_size: Optional[int] = None, flip: bool = True) -> jax.Array:
  """``augment_one`` on each image of ``images`` [B, H, W, C] with keys split from ``key``."""
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda k, x: augment_one(k, x, padding, crop_size, flip))(keys, images)
