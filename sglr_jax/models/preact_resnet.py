"""The CIFAR pre-activation ResNet of Rice et al. (2020) (PreActResNet-18)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from sglr_jax.models.layers import (Block, Classifier, batch_norm, block_strides,
                                     computing_in, float32_logits)


class PreActBlock(Block):
  """Pre-activation basic block (He et al. 2016b): BN-ReLU-conv twice.

  The projection shortcut (when shape changes) takes the pre-activated input,
  as in the PreActResNet-18 of Rice et al. (2020) / kuangliu's CIFAR code.
  """

  @nn.compact
  def __call__(self, x):
    conv = computing_in(self.conv, self.dtype)
    out = nn.relu(self.norm(name='bn1')(x))
    shortcut = x
    if x.shape[-1] != self.features or self.strides != 1:
      shortcut = conv(self.features, (1, 1), self.strides, use_bias=False,
                           name='shortcut')(out)
    y = conv(self.features, (3, 3), self.strides, padding=1, use_bias=False,
                  name='conv1')(out)
    y = nn.relu(self.norm(name='bn2')(y))
    y = conv(self.features, (3, 3), 1, padding=1, use_bias=False, name='conv2')(y)
    return y + shortcut


class PreActResNet(Classifier):
  """CIFAR pre-activation ResNet: 3x3 stem conv (no BN), four stages, final BN-ReLU.

  Parameter names follow the PyTorch reference (conv1, layer{s}_{b}/{bn1, conv1, bn2,
  conv2, shortcut}, bn, linear) so converted checkpoints map one to one.
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = batch_norm(train, self.bn_axis_name, self.dtype)
    conv = computing_in(self.conv, self.dtype)
    x = conv(self.width, (3, 3), padding=1, use_bias=False, name='conv1')(x)
    for i, j, strides in block_strides(self.stage_sizes):
      x = PreActBlock(self.width * 2**i, strides, norm, conv=self.conv, dtype=self.dtype,
                      name=f'layer{i + 1}_{j}')(x)
    x = nn.relu(norm(name='bn')(x))
    x = jnp.mean(x, axis=(1, 2))  # [B, C]
    dense = computing_in(nn.Dense, self.dtype)
    return float32_logits(dense(self.num_classes, name='linear')(x))
