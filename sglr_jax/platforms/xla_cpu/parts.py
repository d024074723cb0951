"""What the experiment builder injects into the core when the backend is XLA:CPU.

Each function returns exactly the parts that CPU runs used before they became
injectable, so CPU programs (and their numbers) are unchanged; other backends use the
core's defaults (``nn.Conv``, ``nn.max_pool``, ``attacks.common.DEFAULT_OPS``).
"""
from __future__ import annotations

import functools

import flax.linen as nn

from sglr_jax.attacks.common import AttackOps
from sglr_jax.platforms.xla_cpu import canonical_loop, conv, pool

__all__ = ['attack_ops', 'model_parts', 'init_compiler_options']

# One object for every call, so models built twice compare (and hash) equal.
_FAST_INPUT_CONV = functools.partial(nn.Conv, conv_general_dilated=conv.conv_general_dilated)
_ATTACK_OPS = AttackOps(loop=canonical_loop.attack_loop,
                        grad_transform=canonical_loop.canonicalize_convs)

# XLA:CPU spends seconds per shape compiling the initialisers' normal sampling
# (erf_inv); the one-off init program does not need optimising.
_INIT_OPTIONS = (('xla_backend_optimization_level', 0),
                 ('xla_llvm_disable_expensive_passes', True))


def attack_ops() -> AttackOps:
  """Attack loops and gradient functions whose convolutions stay canonical in loops."""
  return _ATTACK_OPS


def model_parts(model_name: str) -> dict:
  """``create_model`` keyword arguments for ``model_name`` (``{}``: the defaults).

  Only the small CNN gains: its input layer (1-3 channels) has a slow input gradient
  and its 2x2 max-pool a slow select-and-scatter gradient on XLA:CPU. The ResNets'
  convolutions are left to XLA (``host_devices`` picks the conv library for them).
  """
  if model_name == 'small_cnn':
    return {'conv': _FAST_INPUT_CONV, 'pool': pool.max_pool}
  return {}


def init_compiler_options() -> dict:
  """``jax.jit(compiler_options=...)`` for the one-off parameter initialisation."""
  return dict(_INIT_OPTIONS)
