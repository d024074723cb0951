"""Information in weights (IIW), the estimate of the PAC-Bayes information bottleneck.

Wang et al. (ICLR 2022, the paper's ref. [32]) bound the information the weights hold
about the training set, for a Gaussian posterior around the trained weights ``w`` and a
prior centred on the initial weights ``w0``, by a quadratic form of the Fisher
information. With the Fisher approximated by the outer product of the mean training-loss
gradient ``g``, the form of layer ``l`` is

    IIW_l = (Δw_l^T F_l Δw_l) ≈ (Δw_l · g_l)^2,   Δw_l = w_l - w0_l,

and IIW is the sum over the layers' weight matrices (kernels: leaves with two or more
axes; biases and BatchNorm scales are left out, as in the authors' estimator). It is
exactly 0 at the initial weights, grows while the network fits the labels and drops as
it compresses; the paper reads robust overfitting in a late rise.
"""
from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ['information_in_weights', 'information_of_gradient', 'mean_gradient', 'is_kernel']


def is_kernel(leaf) -> bool:
  """Weight matrices and convolution kernels: the leaves IIW sums over."""
  return jnp.ndim(leaf) >= 2


def mean_gradient(loss_fn: Callable, params, batches: Iterable):
  """The mean over ``batches`` of ``grad loss_fn(params, batch)`` (a params-shaped tree)."""
  grad_fn = jax.jit(jax.grad(loss_fn))
  total, n = None, 0
  for batch in batches:
    g = grad_fn(params, batch)
    total = g if total is None else jax.tree.map(jnp.add, total, g)
    n += 1
  if n == 0:
    raise ValueError('mean_gradient needs at least one batch')
  return jax.tree.map(lambda t: t / n, total)


def information_in_weights(loss_fn: Callable, params, params0, batches: Iterable) -> dict:
  """``{'iiw': float, 'per_layer': {path: float}, 'grad_norm': float}``.

  ``loss_fn(params, batch) -> scalar`` is the training loss (mean over the batch);
  ``params0`` the initial weights (same tree); ``batches`` a few training batches whose
  mean gradient stands for the full-data gradient. ``grad_norm`` is the norm of that
  mean gradient over all parameters (the paper's Fig. 1 plots it beside IIW).
  """
  return information_of_gradient(params, params0, mean_gradient(loss_fn, params, batches))


def information_of_gradient(params, params0, g) -> dict:
  """``information_in_weights`` from an already computed mean gradient ``g`` (a
  params-shaped tree), for callers that compute it their own way (sharded, chunked).
  The sums are taken on the host in float64."""
  per_layer = {}
  flat_w = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_w0 = jax.tree.leaves(params0)
  flat_g = jax.tree.leaves(g)
  if len(flat_w0) != len(flat_w) or len(flat_g) != len(flat_w):
    raise ValueError('params0 and the gradient must have the structure of params')
  for (path, w), w0, gl in zip(flat_w, flat_w0, flat_g):
    if not is_kernel(w):
      continue
    dw = np.asarray(w, np.float64) - np.asarray(w0, np.float64)
    per_layer[jax.tree_util.keystr(path)] = float(np.dot(dw.ravel(), np.asarray(
        gl, np.float64).ravel()) ** 2)
  grad_norm = float(np.sqrt(sum(np.sum(np.asarray(gl, np.float64) ** 2) for gl in flat_g)))
  return {'iiw': float(sum(per_layer.values())), 'per_layer': per_layer,
          'grad_norm': grad_norm}
