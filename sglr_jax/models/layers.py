"""What every model shares: the BatchNorm configuration, the common fields, the stages.

Mixed precision: a model's ``dtype`` is the compute dtype of its convolutions and
matmuls (float32, or bfloat16 on accelerators); its parameters and BatchNorm
statistics stay float32 whatever ``dtype`` is (so the optimizer, checkpoints and the
label table never see bfloat16), BatchNorm normalises in float32, and logits come back
as float32 (so losses, softmaxes and attacks run in float32). A float32 model computes
exactly what it did before ``dtype`` existed.
"""
from __future__ import annotations

import functools
from typing import Any, Iterator, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

# A Flax module class or a partial of one (``nn.Conv``, a configured ``nn.BatchNorm``).
ModuleDef = Any


def batch_norm(train: bool, axis_name: Optional[str], dtype: Any = jnp.float32) -> ModuleDef:
  """BatchNorm as PyTorch configures it (momentum 0.1 there is 0.9 here, eps 1e-5).

  Training uses batch statistics, averaged over ``axis_name`` when set (synchronised
  BatchNorm over the data mesh axis); inference uses the running statistics, which are
  per-example, so no collective is needed then. Statistics, scale, bias and the
  normalisation are float32 (``force_float32_reductions``); only the output is cast
  to ``dtype``, the compute dtype of the next convolution.
  """
  return functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
      axis_name=axis_name if train else None, dtype=dtype, param_dtype=jnp.float32,
      force_float32_reductions=True)


def computing_in(module: ModuleDef, dtype: Any) -> ModuleDef:
  """``module`` (a conv or dense) computing in ``dtype`` with float32 parameters."""
  return functools.partial(module, dtype=dtype, param_dtype=jnp.float32)


def float32_logits(logits):
  """Logits ``[B, K]`` as float32, whatever the compute dtype (no-op for float32)."""
  return logits.astype(jnp.float32)


class Classifier(nn.Module):
  """The fields of every model: classes, the BatchNorm mesh axis, the conv module, and
  the compute dtype of convolutions and matmuls (parameters are float32 regardless)."""
  num_classes: int = 10
  bn_axis_name: Optional[str] = None
  conv: ModuleDef = nn.Conv
  dtype: Any = jnp.float32


class Block(nn.Module):
  """The fields of every residual block: output width, stride, norm and conv modules,
  and the compute dtype (``norm`` is already configured with it)."""
  features: int
  strides: int
  norm: ModuleDef
  conv: ModuleDef = nn.Conv
  dtype: Any = jnp.float32


def block_strides(stage_sizes: Sequence[int]) -> Iterator[tuple[int, int, int]]:
  """``(stage, block, stride)`` for every block: each stage after the first halves the
  resolution in its first block."""
  for i, n in enumerate(stage_sizes):
    for j in range(n):
      yield i, j, 2 if i > 0 and j == 0 else 1
