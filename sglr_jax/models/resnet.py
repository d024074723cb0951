"""CIFAR ResNets (He et al. 2016): basic and bottleneck blocks, post-activation."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from sglr_jax.models.layers import (Block, Classifier, batch_norm, block_strides,
                                     computing_in, float32_logits)


class BasicBlock(Block):
  """ResNet basic block (two 3x3 convs), post-activation."""

  @nn.compact
  def __call__(self, x):
    conv = computing_in(self.conv, self.dtype)
    y = conv(self.features, (3, 3), self.strides, padding=1, use_bias=False)(x)
    y = nn.relu(self.norm()(y))
    y = conv(self.features, (3, 3), 1, padding=1, use_bias=False)(y)
    y = self.norm()(y)
    if x.shape[-1] != self.features or self.strides != 1:
      x = conv(self.features, (1, 1), self.strides, use_bias=False)(x)
      x = self.norm()(x)
    return nn.relu(x + y)


class Bottleneck(Block):
  """ResNet bottleneck block (1x1, 3x3, 1x1 with 4x expansion), post-activation."""

  @nn.compact
  def __call__(self, x):
    conv = computing_in(self.conv, self.dtype)
    out = self.features * 4
    y = nn.relu(self.norm()(conv(self.features, (1, 1), use_bias=False)(x)))
    y = conv(self.features, (3, 3), self.strides, padding=1, use_bias=False)(y)
    y = nn.relu(self.norm()(y))
    y = self.norm()(conv(out, (1, 1), use_bias=False)(y))
    if x.shape[-1] != out or self.strides != 1:
      x = self.norm()(conv(out, (1, 1), self.strides, use_bias=False)(x))
    return nn.relu(x + y)


class ResNet(Classifier):
  """CIFAR ResNet: 3x3 stem, no max-pool, four stages, global average pool."""
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = 'basic'
  width: int = 64

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = batch_norm(train, self.bn_axis_name, self.dtype)
    conv = computing_in(self.conv, self.dtype)
    block_cls = {'basic': BasicBlock, 'bottleneck': Bottleneck}[self.block]
    x = conv(self.width, (3, 3), padding=1, use_bias=False)(x)
    x = nn.relu(norm()(x))
    for i, _, strides in block_strides(self.stage_sizes):
      x = block_cls(self.width * 2**i, strides, norm, conv=self.conv, dtype=self.dtype)(x)
    x = jnp.mean(x, axis=(1, 2))  # [B, C]
    return float32_logits(computing_in(nn.Dense, self.dtype)(self.num_classes)(x))
