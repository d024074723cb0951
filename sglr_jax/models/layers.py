"""What every model shares: the BatchNorm configuration, the common fields, the stages."""
from __future__ import annotations

import functools
from typing import Any, Iterator, Optional, Sequence

import flax.linen as nn

# A Flax module class or a partial of one (``nn.Conv``, a configured ``nn.BatchNorm``).
ModuleDef = Any


def batch_norm(train: bool, axis_name: Optional[str]) -> ModuleDef:
  """BatchNorm as PyTorch configures it (momentum 0.1 there is 0.9 here, eps 1e-5).

  Training uses batch statistics, averaged over ``axis_name`` when set (synchronised
  BatchNorm over the data mesh axis); inference uses the running statistics, which are
  per-example, so no collective is needed then.
  """
  return functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
      axis_name=axis_name if train else None)


class Classifier(nn.Module):
  """The fields of every model: classes, the BatchNorm mesh axis, the conv module."""
  num_classes: int = 10
  bn_axis_name: Optional[str] = None
  conv: ModuleDef = nn.Conv


class Block(nn.Module):
  """The fields of every residual block: output width, stride, norm and conv modules."""
  features: int
  strides: int
  norm: ModuleDef
  conv: ModuleDef = nn.Conv


def block_strides(stage_sizes: Sequence[int]) -> Iterator[tuple[int, int, int]]:
  """``(stage, block, stride)`` for every block: each stage after the first halves the
  resolution in its first block."""
  for i, n in enumerate(stage_sizes):
    for j in range(n):
      yield i, j, 2 if i > 0 and j == 0 else 1
