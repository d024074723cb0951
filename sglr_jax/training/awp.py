"""Adversarial weight perturbation (Wu et al. 2020): the train step's gradient is taken
at weights moved, layer by layer, in the direction that increases the training loss.

For every weight tensor with more than one dimension (convolution and dense kernels;
biases and BatchNorm scales stay), ``v = gamma ||w|| g / ||g||``, ``g`` the gradient of
the objective's loss at the current weights (averaged over the data axis before it is
normalised, so every device perturbs alike). The optimizer then applies the gradient at
``w + v`` to ``w`` itself: the perturbed weights exist only inside the step.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# Guards the division for an all-zero gradient (then ``v = 0``).
_TINY = 1e-20


class AWPParams(NamedTuple):
  """Plain values, static under jit."""
  gamma: float  # size of each layer's perturbation relative to its weight norm
  warmup_epochs: int = 0  # epochs (0-based index) before which the step is plain


def perturbed(w) -> bool:
  """Which parameters are perturbed: kernels, not biases or BatchNorm parameters."""
  return jnp.ndim(w) > 1


def perturbation(params, grads, gamma: float):
  """``v = gamma ||w|| g / ||g||`` per perturbed tensor, zeros elsewhere (``params``' tree)."""
  def one(w, g):
    if not perturbed(w):
      return jnp.zeros_like(w)
    w32, g32 = w.astype(jnp.float32), g.astype(jnp.float32)
    v = gamma * jnp.linalg.norm(w32.ravel()) * g32 / (jnp.linalg.norm(g32.ravel()) + _TINY)
    return v.astype(w.dtype)
  return jax.tree.map(one, params, grads)


def add(params, v, scale=1.0):
  """``params + scale * v``; ``scale`` may be a traced 0/1 (warm-up)."""
  return jax.tree.map(lambda w, d: w + (scale * d).astype(w.dtype), params, v)
