"""The CIFAR WideResNet of TRADES / Rice et al. (WRN-34-10 and its smaller kin)."""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from sglr_jax.models.layers import (Block, Classifier, batch_norm, block_strides,
                                     computing_in, float32_logits)

# He-normal over fan-out: the conv init of the reference WRN (TRADES, Rice et al.).
_WRN_CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class WideBlock(Block):
  """WRN basic block, pre-activation (Zagoruyko & Komodakis; TRADES code).

  When the width or stride changes, the block pre-activates ``x`` once and feeds
  it to both the 3x3 conv and the 1x1 projection shortcut; otherwise the identity
  shortcut carries the raw ``x``.
  """

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(computing_in(self.conv, self.dtype), use_bias=False,
                             kernel_init=_WRN_CONV_INIT)
    out = nn.relu(self.norm(name='bn1')(x))
    if x.shape[-1] != self.features or self.strides != 1:
      shortcut = conv(self.features, (1, 1), self.strides, name='shortcut')(out)
    else:
      shortcut = x
    y = conv(self.features, (3, 3), self.strides, padding=1, name='conv1')(out)
    y = nn.relu(self.norm(name='bn2')(y))
    y = conv(self.features, (3, 3), 1, padding=1, name='conv2')(y)
    return y + shortcut


class WideResNet(Classifier):
  """CIFAR WideResNet WRN-d-k (Zagoruyko & Komodakis 2016) as in TRADES / Rice et al.

  16-channel stem, three stages of widths 16k, 32k, 64k (k = ``widen``) with
  strides 1, 2, 2, final BN-ReLU, global mean, dense. ``stage_sizes`` (blocks per
  stage) is (d - 4) / 6 each: (5, 5, 5) for WRN-34-10. No dropout (TRADES uses
  none). Parameter names follow the PyTorch reference (conv1, block{s}_{b}/{bn1,
  conv1, bn2, conv2, shortcut (its convShortcut)}, bn1, fc), and convs use its
  He-normal fan-out init.
  """
  stage_sizes: Sequence[int] = (5, 5, 5)
  widen: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = batch_norm(train, self.bn_axis_name, self.dtype)
    conv = computing_in(self.conv, self.dtype)
    x = conv(16, (3, 3), padding=1, use_bias=False, kernel_init=_WRN_CONV_INIT, name='conv1')(x)
    for i, j, strides in block_strides(self.stage_sizes):
      x = WideBlock(16 * self.widen * 2**i, strides, norm, conv=self.conv, dtype=self.dtype,
                    name=f'block{i + 1}_{j}')(x)
    x = nn.relu(norm(name='bn1')(x))
    x = jnp.mean(x, axis=(1, 2))  # [B, C]
    dense = computing_in(nn.Dense, self.dtype)
    return float32_logits(dense(self.num_classes, name='fc')(x))


def stage_sizes(depth: Sequence[int]) -> tuple[int, ...]:
  """``(total_depth,)`` -> blocks per stage; three numbers are blocks per stage already."""
  depth = tuple(int(d) for d in depth)
  if len(depth) == 1:
    if depth[0] < 10 or (depth[0] - 4) % 6:
      raise ValueError(f'model.depth={depth}: a WRN total depth must be 6n + 4 with n >= 1 '
                       '(e.g. 10, 16, 28, 34)')
    return ((depth[0] - 4) // 6,) * 3
  if len(depth) == 3:
    return depth
  raise ValueError(f'model.depth={depth}: for a WRN give (total_depth,) like (34,) '
                   'or three blocks-per-stage numbers like (5, 5, 5)')
