"""Clean and PGD logits of a model on a whole split: the jitted eval step and the host loop.

The step is one SPMD program over the ``data`` axis (the variables replicated, the
batch sharded); the host loop feeds each process its slice of every padded batch and
gathers the logits of all processes, so every host gets all of them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from sglr_jax import data, mesh as mesh_lib
from sglr_jax.attacks import pgd
from sglr_jax.attacks.common import DEFAULT_OPS, AttackOps, example_keys

IN_FLIGHT = 2  # eval batches dispatched ahead of the one the host waits for


def make_eval_step(model, mesh, *, eps: float, step_size: float, steps: int,
                   norm: str = 'Linf', ops: AttackOps = DEFAULT_OPS):
  """``(variables, batch, key) -> (clean logits, adversarial logits)``, both ``[B, K]``
  sharded like the batch. PGD (CE, random start, ``norm`` ball) runs with ``steps > 0``."""

  def step(variables, batch, key):
    x = batch['image'].astype(jnp.float32) / 255.0  # uint8 -> [0, 1], [b, H, W, C]
    logits_fn = lambda z: model.apply(variables, z, train=False)
    clean = logits_fn(x)
    if steps <= 0:
      return clean, clean
    keys = example_keys(key, batch['index'])
    x_adv = pgd.pgd_attack(logits_fn, x, batch['label'], eps=eps, step_size=step_size,
                           steps=steps, key=keys, norm=norm, ops=ops)
    return clean, logits_fn(x_adv)

  mapped = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(mesh_lib.AXIS), P()),
                         out_specs=(P(mesh_lib.AXIS), P(mesh_lib.AXIS)), check_vma=False)
  jitted = jax.jit(mapped)
  jitted.clean_only = steps <= 0  # both outputs are the clean logits: ``predict`` fetches one
  return jitted


def predict(eval_step, variables, images, labels, batch_size, mesh, key):
  """Clean and adversarial logits ``[M, K]`` (numpy) for all of ``images``, on every host.

  The logits stay on the devices until the pass ends and come to the host in one
  fetch: a copy per batch would make the host wait for every batch, with the devices
  idle while it prepares the next one. At most ``IN_FLIGHT`` batches are queued ahead
  (their inputs wait in device memory).
  """
  clean_only = getattr(eval_step, 'clean_only', False)
  outs = []  # per batch: clean [B, K] (clean_only) or (clean, adv), global device arrays
  for batch in data.eval_batches(images, labels, batch_size, jax.process_index(),
                                 jax.process_count()):
    batch.pop('mask')  # the padding rows are cut off below ([:n])
    c, a = eval_step(variables, mesh_lib.to_global(batch, mesh), key)
    outs.append(c if clean_only else (c, a))
    if len(outs) > IN_FLIGHT:
      jax.block_until_ready(outs[-IN_FLIGHT - 1])
  host = fetch(outs)
  n = len(labels)
  if clean_only:
    clean = np.concatenate(host)[:n]
    return clean, clean
  return (np.concatenate([c for c, _ in host])[:n],
          np.concatenate([a for _, a in host])[:n])


def fetch(tree):
  """Global device arrays -> numpy, in one transfer (all processes' rows on every host)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
