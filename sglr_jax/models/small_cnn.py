"""The small Conv-BN-ReLU classifier, sized for MNIST on a 2-core CPU."""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn

from sglr_jax.models.layers import Classifier, batch_norm, computing_in, float32_logits


class SmallCNN(Classifier):
  """Conv-BN-ReLU stack then dense layers.

  Default: conv32 3x3 stride 2, conv64 3x3 stride 2, dense 128.
  ``batch_norm=False`` drops the BatchNorm layers (the convolutions then get biases):
  without them the wide variant memorises noisy labels much sooner, which is the
  robust-overfitting setting of the noise studies.
  With ``kernel=5, strides=1, use_pool=True, dense=1024`` it is Madry et al.'s MNIST net.
  ``conv`` and ``pool`` are the convolution module and the 2x2 max-pool function: the
  experiment builder swaps in versions with faster gradients on some platforms (same
  parameters, same values).
  """
  features: Sequence[int] = (32, 64)
  kernel: int = 3
  strides: int = 2
  use_pool: bool = False
  dense: int = 128
  batch_norm: bool = True
  pool: Callable = nn.max_pool

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = batch_norm(train, self.bn_axis_name, self.dtype)
    conv, dense = computing_in(self.conv, self.dtype), computing_in(nn.Dense, self.dtype)
    for f in self.features:
      x = conv(f, (self.kernel, self.kernel), strides=self.strides, padding='SAME',
               use_bias=not self.batch_norm)(x)
      x = nn.relu(norm()(x) if self.batch_norm else x)
      if self.use_pool:
        x = self.pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))  # [B, H*W*C]
    x = nn.relu(dense(self.dense)(x))
    return float32_logits(dense(self.num_classes)(x))
