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

__all__ = ['hutchinson_trace', 'probe_keys', 'quadratic_form', 'rademacher_like', 'summarise']


def rademacher_like(key, tree):
  """A tree like ``tree`` of independent +-1 entries (in each leaf's dtype)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([
      jax.random.rademacher(k, jnp.shape(x), jnp.float32).astype(jnp.result_type(x))
      for k, x in zip(keys, leaves)])


def probe_keys(key, probes: int):
  """The keys of the ``probes`` single estimates drawn from ``key``."""
  if probes < 1:
    raise ValueError(f'probes={probes!r} must be >= 1')
  return jax.random.split(key, probes)


def quadratic_form(loss_fn: Callable, params, key):
  """``v^T H v`` for the Rademacher ``v`` of ``key`` (traceable: jit or shard_map it).
  The loss is linear in its examples, so summing this over chunks of the data with one
  ``key`` gives the form of the whole loss."""
  v = rademacher_like(key, params)
  _, hv = jax.jvp(jax.grad(loss_fn), (params,), (v,))  # H v
  return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(hv)))


def summarise(estimates) -> dict:
  """``{'trace', 'stderr', 'probes'}`` of the single-probe estimates (independent, so
  ``stderr`` is their sample deviation / sqrt(n); NaN for one probe)."""
  est = np.asarray(estimates, np.float64)
  n = len(est)
  stderr = float(est.std(ddof=1) / np.sqrt(n)) if n > 1 else float('nan')
  return {'trace': float(est.mean()), 'stderr': stderr, 'probes': int(n)}


def hutchinson_trace(loss_fn: Callable, params, key, probes: int = 8) -> dict:
  """``{'trace': mean estimate, 'stderr': its standard error, 'probes': n}``.

  ``loss_fn(params) -> scalar`` (close over a batch or a few). The weights are an
  argument of the compiled program, not constants in it: XLA would otherwise try to
  fold the network's first layers over them at compile time (tens of seconds).
  """
  one = jax.jit(lambda p, k: quadratic_form(loss_fn, p, k))
  return summarise([float(one(params, k)) for k in probe_keys(key, probes)])
