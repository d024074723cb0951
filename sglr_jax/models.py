"""Classifiers (Flax Linen), all taking NHWC float images in [0, 1].

Names (``MODEL_NAMES``): ``small_cnn``; CIFAR-stem ``resnet18/34/50``;
``preact_resnet18`` (the PreActResNet-18 of Rice et al. 2020, 11.17M parameters);
``wrn34_10`` (the WRN-34-10 of TRADES / Rice et al., 46.16M parameters).

Every model takes ``train: bool``: BatchNorm uses batch statistics (and, when
``bn_axis_name`` is set, averages them over that mesh axis: synchronised BatchNorm)
in training mode and running statistics in inference mode (the attacks).
Width and depth can be overridden so tests build tiny variants of each.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from sglr_jax import fastconv, fastpool

ModuleDef = Any


def _batch_norm(train: bool, axis_name: Optional[str]):
  return functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
      axis_name=axis_name if train else None)


class SmallCNN(nn.Module):
  """Conv-BN-ReLU stack then dense layers: sized for MNIST on a 2-core CPU.

  Default: conv32 3x3 stride 2, conv64 3x3 stride 2, dense 128.
  With ``kernel=5, strides=1, pool=True, dense=1024`` it is Madry et al.'s MNIST net.
  """
  num_classes: int = 10
  features: Sequence[int] = (32, 64)
  kernel: int = 3
  strides: int = 2
  pool: bool = False
  dense: int = 128
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = _batch_norm(train, self.bn_axis_name)
    for f in self.features:
      x = nn.Conv(f, (self.kernel, self.kernel), strides=self.strides,
                  padding='SAME', use_bias=False,
                  conv_general_dilated=fastconv.conv_general_dilated)(x)  # lax's off CPU
      x = nn.relu(norm()(x))
      if self.pool:
        x = fastpool.max_pool(x, (2, 2), strides=(2, 2))  # nn.max_pool off CPU
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.dense)(x))
    return nn.Dense(self.num_classes)(x)


class BasicBlock(nn.Module):
  """ResNet basic block (two 3x3 convs), post-activation."""
  features: int
  strides: int
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(self.features, (3, 3), self.strides, padding=1, use_bias=False)(x)
    y = nn.relu(self.norm()(y))
    y = nn.Conv(self.features, (3, 3), 1, padding=1, use_bias=False)(y)
    y = self.norm()(y)
    if x.shape[-1] != self.features or self.strides != 1:
      x = nn.Conv(self.features, (1, 1), self.strides, use_bias=False)(x)
      x = self.norm()(x)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """ResNet bottleneck block (1x1, 3x3, 1x1 with 4x expansion), post-activation."""
  features: int
  strides: int
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    out = self.features * 4
    y = nn.relu(self.norm()(nn.Conv(self.features, (1, 1), use_bias=False)(x)))
    y = nn.Conv(self.features, (3, 3), self.strides, padding=1, use_bias=False)(y)
    y = nn.relu(self.norm()(y))
    y = self.norm()(nn.Conv(out, (1, 1), use_bias=False)(y))
    if x.shape[-1] != out or self.strides != 1:
      x = self.norm()(nn.Conv(out, (1, 1), self.strides, use_bias=False)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """CIFAR ResNet: 3x3 stem, no max-pool, four stages, global average pool."""
  num_classes: int = 10
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = 'basic'
  width: int = 64
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = _batch_norm(train, self.bn_axis_name)
    block_cls = {'basic': BasicBlock, 'bottleneck': Bottleneck}[self.block]
    x = nn.Conv(self.width, (3, 3), padding=1, use_bias=False)(x)
    x = nn.relu(norm()(x))
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        strides = 2 if i > 0 and j == 0 else 1
        x = block_cls(self.width * 2**i, strides, norm)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


class PreActBlock(nn.Module):
  """Pre-activation basic block (He et al. 2016b): BN-ReLU-conv twice.

  The projection shortcut (when shape changes) takes the pre-activated input,
  as in the PreActResNet-18 of Rice et al. (2020) / kuangliu's CIFAR code.
  """
  features: int
  strides: int
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    out = nn.relu(self.norm(name='bn1')(x))
    shortcut = x
    if x.shape[-1] != self.features or self.strides != 1:
      shortcut = nn.Conv(self.features, (1, 1), self.strides, use_bias=False,
                         name='shortcut')(out)
    y = nn.Conv(self.features, (3, 3), self.strides, padding=1, use_bias=False,
                name='conv1')(out)
    y = nn.relu(self.norm(name='bn2')(y))
    y = nn.Conv(self.features, (3, 3), 1, padding=1, use_bias=False, name='conv2')(y)
    return y + shortcut


class PreActResNet(nn.Module):
  """CIFAR pre-activation ResNet: 3x3 stem conv (no BN), four stages, final BN-ReLU.

  Parameter names follow the PyTorch reference (conv1, layer{s}_{b}/{bn1, conv1, bn2,
  conv2, shortcut}, bn, linear) so converted checkpoints map one to one.
  """
  num_classes: int = 10
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = _batch_norm(train, self.bn_axis_name)
    x = nn.Conv(self.width, (3, 3), padding=1, use_bias=False, name='conv1')(x)
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        strides = 2 if i > 0 and j == 0 else 1
        x = PreActBlock(self.width * 2**i, strides, norm, name=f'layer{i + 1}_{j}')(x)
    x = nn.relu(norm(name='bn')(x))
    x = jnp.mean(x, axis=(1, 2))  # [B, C]
    return nn.Dense(self.num_classes, name='linear')(x)


# He-normal over fan-out: the conv init of the reference WRN (TRADES, Rice et al.).
_WRN_CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class WideBlock(nn.Module):
  """WRN basic block, pre-activation (Zagoruyko & Komodakis; TRADES code).

  When the width or stride changes, the block pre-activates ``x`` once and feeds
  it to both the 3x3 conv and the 1x1 projection shortcut; otherwise the identity
  shortcut carries the raw ``x``.
  """
  features: int
  strides: int
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_WRN_CONV_INIT)
    out = nn.relu(self.norm(name='bn1')(x))
    if x.shape[-1] != self.features or self.strides != 1:
      shortcut = conv(self.features, (1, 1), self.strides, name='shortcut')(out)
    else:
      shortcut = x
    y = conv(self.features, (3, 3), self.strides, padding=1, name='conv1')(out)
    y = nn.relu(self.norm(name='bn2')(y))
    y = conv(self.features, (3, 3), 1, padding=1, name='conv2')(y)
    return y + shortcut


class WideResNet(nn.Module):
  """CIFAR WideResNet WRN-d-k (Zagoruyko & Komodakis 2016) as in TRADES / Rice et al.

  16-channel stem, three stages of widths 16k, 32k, 64k (k = ``widen``) with
  strides 1, 2, 2, final BN-ReLU, global mean, dense. ``stage_sizes`` (blocks per
  stage) is (d - 4) / 6 each: (5, 5, 5) for WRN-34-10. No dropout (TRADES uses
  none). Parameter names follow the PyTorch reference (conv1, block{s}_{b}/{bn1,
  conv1, bn2, conv2, shortcut (its convShortcut)}, bn1, fc), and convs use its
  He-normal fan-out init.
  """
  num_classes: int = 10
  stage_sizes: Sequence[int] = (5, 5, 5)
  widen: int = 10
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = _batch_norm(train, self.bn_axis_name)
    x = nn.Conv(16, (3, 3), padding=1, use_bias=False, kernel_init=_WRN_CONV_INIT,
                name='conv1')(x)
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        strides = 2 if i > 0 and j == 0 else 1
        x = WideBlock(16 * self.widen * 2**i, strides, norm, name=f'block{i + 1}_{j}')(x)
    x = nn.relu(norm(name='bn1')(x))
    x = jnp.mean(x, axis=(1, 2))  # [B, C]
    return nn.Dense(self.num_classes, name='fc')(x)


_RESNETS = {
    'resnet18': dict(stage_sizes=(2, 2, 2, 2), block='basic'),
    'resnet34': dict(stage_sizes=(3, 4, 6, 3), block='basic'),
    'resnet50': dict(stage_sizes=(3, 4, 6, 3), block='bottleneck'),
}

MODEL_NAMES = ('small_cnn',) + tuple(_RESNETS) + ('preact_resnet18', 'wrn34_10')


def _wrn_stage_sizes(depth: Sequence[int]) -> tuple[int, ...]:
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


def create_model(name: str, num_classes: int, width: int = 0,
                 depth: Sequence[int] = (), bn_axis_name: Optional[str] = None,
                 **kwargs) -> nn.Module:
  """Builds a model by name. ``width``/``depth`` of 0/() keep the architecture's own.

  Meaning of ``width`` and ``depth`` by model:
    * ``resnet18/34/50``, ``preact_resnet18``: ``width`` is the stem width (64;
      stage widths are width * 1, 2, 4, 8) and ``depth`` the blocks per stage
      (four numbers, e.g. (2, 2, 2, 2)).
    * ``wrn34_10``: ``width`` is the widen factor k (10; stage widths 16k, 32k, 64k)
      and ``depth`` either ``(total_depth,)`` with total_depth = 6n + 4 (34 -> n = 5
      blocks per stage) or three blocks-per-stage numbers. ``width=1, depth=(10,)``
      is a tiny WRN-10-1.
    * ``small_cnn``: ``width`` scales the conv features (32 -> the default) and
      ``depth`` is ignored.
  """
  if name == 'small_cnn':
    if width:
      kwargs['features'] = tuple(int(f * width / 32) for f in kwargs.get('features', (32, 64)))
    return SmallCNN(num_classes=num_classes, bn_axis_name=bn_axis_name, **kwargs)
  if name in _RESNETS:
    spec = dict(_RESNETS[name])
    if depth:
      spec['stage_sizes'] = tuple(depth)
    return ResNet(num_classes=num_classes, width=width or 64,
                  bn_axis_name=bn_axis_name, **spec, **kwargs)
  if name == 'preact_resnet18':
    return PreActResNet(num_classes=num_classes, width=width or 64,
                        stage_sizes=tuple(depth) if depth else (2, 2, 2, 2),
                        bn_axis_name=bn_axis_name, **kwargs)
  if name == 'wrn34_10':
    return WideResNet(num_classes=num_classes, widen=width or 10,
                      stage_sizes=_wrn_stage_sizes(depth) if depth else (5, 5, 5),
                      bn_axis_name=bn_axis_name, **kwargs)
  raise ValueError(f'model.name={name!r} is unknown; allowed: {", ".join(MODEL_NAMES)}')
