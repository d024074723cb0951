"""Hutchinson's estimate of the trace of the training loss's Hessian (paper Fig. B.7).

``tr(H) = E[v^T H v]`` for Rademacher ``v`` (entries +-1). ``H v`` is a forward-mode
derivative of the gradient (no Hessian is formed), so a probe costs about two backward
passes. A flat minimum (small trace) goes with the better-generalising, smoother
solutions the paper attributes to SGLR and to the cosine schedule.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ['hutchinson_trace']


def _rademacher_like(key, tree):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([
      jax.random.rademacher(k, jnp.shape(x), jnp.float32).astype(jnp.result_type(x))
      for k, x in zip(keys, leaves)])


def hutchinson_trace(loss_fn: Callable, params, key, probes: int = 8) -> dict:
  """``{'trace': mean estimate, 'stderr': its standard error, 'probes': n}``.

  ``loss_fn(params) -> scalar`` (close over a batch or a few). The estimates of the
  single probes are independent, so ``stderr`` is their sample deviation / sqrt(n).
  """
  if probes < 1:
    raise ValueError(f'probes={probes!r} must be >= 1')
  grad = jax.grad(loss_fn)

  @jax.jit
  def one(k):
    v = _rademacher_like(k, params)
    _, hv = jax.jvp(grad, (params,), (v,))  # H v
    return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(hv)))

  est = np.array([float(one(k)) for k in jax.random.split(key, probes)], np.float64)
  stderr = float(est.std(ddof=1) / np.sqrt(probes)) if probes > 1 else float('nan')
  return {'trace': float(est.mean()), 'stderr': stderr, 'probes': int(probes)}
