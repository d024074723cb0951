"""Stochastic weight averaging (Izmailov et al. 2018), as Chen et al. 2021 use it
against robust overfitting: the mean of the weights collected every ``every_steps``
optimizer steps from ``start_step`` on, and BatchNorm statistics recomputed for that
mean on the training data (train-mode passes on clean images, no attack), because the
running statistics of the trained weights do not fit the averaged ones.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from sglr_jax.mesh import AXIS


class SWAParams(NamedTuple):
  """Plain values, static under jit."""
  start_step: int  # the first snapshot is taken after step start_step + every_steps
  every_steps: int  # steps between snapshots


def due(sp: SWAParams, steps_done):
  """Whether the weights after ``steps_done`` optimizer steps are a snapshot."""
  after = steps_done - sp.start_step
  return (after > 0) & (after % sp.every_steps == 0)


def collect(avg, count, params, take):
  """``(avg, count)`` with ``params`` added to the running mean when ``take``.

  ``avg n / (n + 1) + params / (n + 1)``: the first snapshot is copied exactly.
  """
  n = count.astype(jnp.float32)
  new = jax.tree.map(lambda a, p: jnp.where(take, a * (n / (n + 1)) + p / (n + 1), a),
                     avg, params)
  return new, count + take.astype(count.dtype)


def make_bn_pass(model, mesh):
  """``(params, batch_stats, images [B, H, W, C] uint8) -> batch_stats`` after one
  train-mode pass (statistics synchronised over the data axis)."""
  def per_device(params, stats, images):
    x = images.astype(jnp.float32) / 255.0
    _, updates = model.apply({'params': params, 'batch_stats': stats}, x, train=True,
                             mutable=['batch_stats'])
    return updates['batch_stats']
  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(AXIS)),
                               out_specs=P(), check_vma=False))


def recompute_batch_stats(bn_pass, params, template, batches: Iterable[dict]):
  """The mean over ``batches`` (equal sizes) of the batch means and variances.

  Each pass starts from zero statistics, so it returns ``(1 - m)`` times the batch's
  statistics, ``m`` the model's BatchNorm momentum; one more pass from ones gives ``m``
  (``m + (1 - m) s - (1 - m) s``) without assuming the model's setting.
  """
  if not jax.tree.leaves(template):
    return template
  zeros = jax.tree.map(jnp.zeros_like, template)
  total, n, momentum = None, 0, None
  for batch in batches:
    got = bn_pass(params, zeros, batch['image'])
    if momentum is None:
      ones = jax.tree.map(jnp.ones_like, template)
      momentum = jax.tree.map(jnp.subtract, bn_pass(params, ones, batch['image']), got)
    total = got if total is None else jax.tree.map(jnp.add, total, got)
    n += 1
  if n == 0:
    raise ValueError('SWA: no training batch to recompute the BatchNorm statistics on')
  return jax.tree.map(lambda t, m: t / (n * (1.0 - m)), total, momentum)
