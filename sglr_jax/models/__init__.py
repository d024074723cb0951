"""Classifiers (Flax Linen), all taking NHWC float images in [0, 1], and their registry.

Names (``MODEL_NAMES``): ``small_cnn``; the presets ``resnet18/34/50`` (CIFAR stem),
``preact_resnet18`` (the PreActResNet-18 of Rice et al. 2020, 11.17M parameters) and
``wrn34_10`` (the WRN-34-10 of TRADES / Rice et al., 46.16M parameters); and the
generic architectures behind them, ``resnet``, ``resnet_bottleneck``, ``preact_resnet``
and ``wide_resnet``, whose depth is free (``GENERIC`` maps each preset to its own).
A preset's name states its depth, so a ``depth`` that contradicts it is an error that
names the generic architecture to use instead; width overrides are allowed everywhere.

Every model takes ``train: bool``: BatchNorm uses batch statistics (and, when
``bn_axis_name`` is set, averages them over that mesh axis: synchronised BatchNorm)
in training mode and running statistics in inference mode (the attacks). Every model
takes its convolution module as ``conv`` (``nn.Conv`` by default; the small CNN also
its max-pool as ``pool``), so a platform can swap in faster-differentiating versions
without this package knowing about platforms. Every model takes ``dtype``, the compute
dtype of its convolutions and matmuls (``COMPUTE_DTYPES``; ``layers`` says what stays
float32).
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from sglr_jax.models.preact_resnet import PreActResNet
from sglr_jax.models.resnet import ResNet
from sglr_jax.models.small_cnn import SmallCNN
from sglr_jax.models.wide_resnet import WideResNet, stage_sizes as wrn_stage_sizes

__all__ = ['create_model', 'check_model', 'compute_dtype', 'MODEL_NAMES', 'GENERIC',
           'COMPUTE_DTYPES', 'SmallCNN', 'ResNet', 'PreActResNet', 'WideResNet']

GENERIC = {'resnet18': 'resnet', 'resnet34': 'resnet', 'resnet50': 'resnet_bottleneck',
           'preact_resnet18': 'preact_resnet', 'wrn34_10': 'wide_resnet'}
# Blocks per stage when depth=(): a preset's own (fixed), a generic architecture's default.
_OWN_STAGES = {'resnet18': (2, 2, 2, 2), 'resnet34': (3, 4, 6, 3), 'resnet50': (3, 4, 6, 3),
               'preact_resnet18': (2, 2, 2, 2), 'wrn34_10': (5, 5, 5),
               'resnet': (2, 2, 2, 2), 'resnet_bottleneck': (3, 4, 6, 3),
               'preact_resnet': (2, 2, 2, 2), 'wide_resnet': (5, 5, 5)}

MODEL_NAMES = ('small_cnn',) + tuple(_OWN_STAGES)
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str):
  """The jnp dtype for a compute-dtype name (ValueError, one line, if unknown)."""
  if name not in COMPUTE_DTYPES:
    raise ValueError(f'model.compute_dtype={name!r} is unknown; allowed: '
                     f'{", ".join(COMPUTE_DTYPES)}')
  return COMPUTE_DTYPES[name]


def _stages(generic: str, depth: Sequence[int]) -> tuple[int, ...]:
  """Blocks per stage of ``generic`` for a non-empty ``depth`` (ValueError if malformed)."""
  if not all(isinstance(d, int) and d > 0 for d in depth):
    raise ValueError(f'model.depth={tuple(depth)!r}: positive integers (blocks per stage)')
  if generic == 'wide_resnet':
    return wrn_stage_sizes(depth)
  if len(depth) != 4:
    raise ValueError(f'model.depth={tuple(depth)!r}: {generic} takes four blocks-per-stage '
                     'numbers like (2, 2, 2, 2)')
  return tuple(depth)


def _small_cnn_fields(width, depth, dense, features) -> None:
  if depth:
    raise ValueError(f'model.depth={tuple(depth)!r} does not apply to small_cnn (its conv '
                     'layers are model.features); set it to ()')
  if not all(isinstance(f, int) and f > 0 for f in features):
    raise ValueError(f'model.features={tuple(features)!r}: positive integers, one per conv '
                     'layer')
  if features and width:
    raise ValueError('model.features and model.width both set the conv widths; set one '
                     '(model.width=0 or model.features=())')
  if not isinstance(dense, int) or dense < 0:
    raise ValueError(f'model.dense={dense!r}: a positive integer (0 = its own, 128)')


def check_model(name: str, width: int = 0, depth: Sequence[int] = (), dense: int = 0,
                features: Sequence[int] = ()) -> None:
  """Raises ValueError (one line, naming the field) for a combination that cannot build.

  ``width``/``depth``/``dense``/``features`` of 0/() mean "the architecture's own".
  """
  if name not in MODEL_NAMES:
    raise ValueError(f'model.name={name!r} is unknown; allowed: {", ".join(MODEL_NAMES)}')
  if not isinstance(width, int) or width < 0:
    raise ValueError(f'model.width={width!r}: a positive integer (0 = the architecture\'s '
                     'own)')
  if name == 'small_cnn':
    _small_cnn_fields(width, tuple(depth), dense, tuple(features))
    return
  for field, value, unset in (('dense', dense, '0'), ('features', features, '()')):
    if value:
      raise ValueError(f'model.{field}={value!r} applies to small_cnn only '
                       f'(model.name={name!r}); set it to {unset}')
  generic = GENERIC.get(name, name)
  if depth and name in GENERIC and _stages(generic, depth) != _OWN_STAGES[name]:
    raise ValueError(f'model.depth={tuple(depth)!r} contradicts model.name={name!r} (blocks '
                     f'per stage {_OWN_STAGES[name]}); for another depth use '
                     f'model.name={generic!r}')
  if depth:
    _stages(generic, depth)


def create_model(name: str, num_classes: int, width: int = 0,
                 depth: Sequence[int] = (), bn_axis_name: Optional[str] = None,
                 **kwargs) -> nn.Module:
  """Builds a model by name. ``width``/``depth`` of 0/() keep the architecture's own.

  Meaning of ``width`` and ``depth`` by model:
    * ``resnet``, ``resnet_bottleneck``, ``preact_resnet`` (and their presets): ``width``
      is the stem width (64; stage widths are width * 1, 2, 4, 8) and ``depth`` the
      blocks per stage (four numbers, e.g. (2, 2, 2, 2)).
    * ``wide_resnet`` (and ``wrn34_10``): ``width`` is the widen factor k (10; stage
      widths 16k, 32k, 64k) and ``depth`` either ``(total_depth,)`` with total_depth =
      6n + 4 (34 -> n = 5 blocks per stage) or three blocks-per-stage numbers.
      ``width=1, depth=(10,)`` is a tiny WRN-10-1.
    * ``small_cnn``: ``width`` scales the conv features (32 -> the default); its layers
      are ``features=`` (and ``dense=``), not ``depth``.
  ``kwargs`` go to the model: ``conv=`` and ``dtype=`` (every model; ``dtype`` a jnp
  dtype or a ``COMPUTE_DTYPES`` name), ``pool=``, ``dense=``, ``features=`` (small_cnn).
  Raises ValueError as ``check_model`` does.
  """
  check_model(name, width, depth, kwargs.get('dense', 0), kwargs.get('features', ()))
  if isinstance(kwargs.get('dtype'), str):
    kwargs['dtype'] = compute_dtype(kwargs['dtype'])
  if name == 'small_cnn':
    if width:
      kwargs['features'] = tuple(int(f * width / 32) for f in SmallCNN.features)
    return SmallCNN(num_classes=num_classes, bn_axis_name=bn_axis_name, **kwargs)
  generic = GENERIC.get(name, name)
  stages = _stages(generic, depth) if depth else _OWN_STAGES[name]
  common = dict(num_classes=num_classes, stage_sizes=stages, bn_axis_name=bn_axis_name,
                **kwargs)
  if generic == 'wide_resnet':
    return WideResNet(widen=width or 10, **common)
  if generic == 'preact_resnet':
    return PreActResNet(width=width or 64, **common)
  block = 'basic' if generic == 'resnet' else 'bottleneck'
  return ResNet(width=width or 64, block=block, **common)
