"""The pure train step: one per-device SPMD program over the ``data`` axis.

``make_train_step`` returns ``jit(shard_map(per_device_step))``: each device attacks
its slice of the batch (model in inference mode), computes the objective's loss on
``x'`` (train-mode BatchNorm synchronised over ``data``), averages gradients with
``pmean``, and writes the new rows of the whole global batch into the label table
(replicated: every device writes all rows; sharded: each device writes the rows it
owns).

Random numbers are per example: ``fold_in(fold_in(rng, step), index)``, so the
result does not depend on how the batch is split over devices.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from sglr_jax import objectives, sglr_table
from sglr_jax.attacks.common import DEFAULT_OPS, AttackOps, example_keys
from sglr_jax.data import augment
from sglr_jax.mesh import AXIS, state_specs


class StepConfig(NamedTuple):
  """Everything static the train step needs (hashable, plain values)."""
  objective: objectives.ObjectiveParams
  sglr: Optional[sglr_table.SGLRParams]
  num_classes: int
  augment: bool
  table_layout: str


def _gather_rows(table, all_index, local_index, layout):
  """The stored table rows of this device's examples ``[b, K]``."""
  if layout == 'replicated':
    return table[local_index]
  offset = jax.lax.axis_index(AXIS) * table.shape[0]
  rows = jax.lax.psum(sglr_table.read_owned_rows(table, all_index, offset), AXIS)
  b = local_index.shape[0]
  return jax.lax.dynamic_slice_in_dim(rows, jax.lax.axis_index(AXIS) * b, b)


def _write_rows(table, all_index, all_rows, layout):
  if layout == 'replicated':
    return sglr_table.write_rows(table, all_index, all_rows)
  offset = jax.lax.axis_index(AXIS) * table.shape[0]
  return sglr_table.write_owned_rows(table, all_index, all_rows, offset)


def train_step_fn(model, sc: StepConfig, ops: AttackOps = DEFAULT_OPS) -> Callable:
  """The per-device step ``(state, batch) -> (state, metrics)``; metrics are sums."""
  hp = sc.objective
  uses_table = objectives.uses_table(hp, sc.sglr)
  apply_train = lambda v, z: model.apply(v, z, train=True, mutable=['batch_stats'])

  def step(state, batch):
    x = batch['image'].astype(jnp.float32) / 255.0  # uint8 -> [0, 1], [b, H, W, C]
    labels, index = batch['label'], batch['index']
    keys = example_keys(jax.random.fold_in(state.rng, state.step), index)
    split = jax.vmap(jax.random.split)(keys)  # [b, 2, 2]
    aug_keys, attack_keys = split[:, 0], split[:, 1]
    if sc.augment:
      x = jax.vmap(augment.augment_one)(aug_keys, x)

    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    logits_fn = lambda z: model.apply(variables, z, train=False)
    x_adv = objectives.attack(hp, logits_fn, x, labels, attack_keys, ops)

    all_index = jax.lax.all_gather(index, AXIS, tiled=True)  # [B]
    rows = None  # [b, K] the stored rows of this device's examples
    if uses_table:
      rows = _gather_rows(state.label_table, all_index, index, sc.table_layout)
    targets = objectives.base_targets(hp, labels, sc.num_classes)  # [b, K]

    def loss_fn(params):
      v = {'params': params, 'batch_stats': state.batch_stats}
      terms = objectives.train_loss(hp, sc.sglr, apply_train, v, x, x_adv, targets, rows,
                                    state.epoch)
      return jnp.mean(terms.per_example), terms

    grads, terms = jax.grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    new_state = state.apply_gradients(grads=grads, batch_stats=terms.batch_stats)
    if uses_table:
      all_rows = jax.lax.all_gather(terms.rows, AXIS, tiled=True)  # [B, K]
      new_state = new_state.replace(
          label_table=_write_rows(state.label_table, all_index, all_rows, sc.table_layout))
    correct = jnp.argmax(terms.logits_adv, -1) == labels
    metrics = {
        'loss_sum': jax.lax.psum(jnp.sum(terms.per_example), AXIS),
        'adv_correct': jax.lax.psum(jnp.sum(correct), AXIS),
        'count': jax.lax.psum(labels.shape[0], AXIS),
        'grad_norm': optax.tree.norm(grads),
    }
    return new_state, metrics

  return step


def make_train_step(model, sc: StepConfig, mesh, state, *, ops: AttackOps = DEFAULT_OPS):
  """``jit(shard_map(step))`` with the state donated; ``ops``: how the attack loops."""
  specs = state_specs(state, sc.table_layout)
  mapped = jax.shard_map(train_step_fn(model, sc, ops), mesh=mesh,
                         in_specs=(specs, P(AXIS)), out_specs=(specs, P()),
                         check_vma=False)
  return jax.jit(mapped, donate_argnums=0)
