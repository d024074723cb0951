"""The pure train step: one per-device SPMD program over the ``data`` axis.

``make_train_step`` returns ``jit(shard_map(per_device_step))``: each device attacks
its slice of the batch (model in inference mode), computes the objective's loss on
``x'`` (train-mode BatchNorm synchronised over ``data``), averages gradients with
``pmean``, and writes the new rows of the whole global batch into the label table
(replicated: every device writes all rows; sharded: each device writes the rows it
owns).

Random numbers are per example: ``fold_in(fold_in(rng, step), index)``, so the
result does not depend on how the batch is split over devices.

Options on top of any objective: adversarial weight perturbation (``training.awp``: the
gradient is taken at perturbed weights and applied to the current ones), stochastic
weight averaging (``training.swa``: snapshots of the new weights join the state's
average), and KD's teachers (their variables are a replicated third argument).
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
from sglr_jax.training import awp as awp_lib, swa as swa_lib


class StepConfig(NamedTuple):
  """Everything static the train step needs (hashable, plain values)."""
  objective: objectives.ObjectiveParams
  sglr: Optional[sglr_table.SGLRParams]
  num_classes: int
  augment: bool
  table_layout: str
  awp: Optional[awp_lib.AWPParams] = None  # None: no weight perturbation
  swa: Optional[swa_lib.SWAParams] = None  # None: no weight averaging


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


def train_step_fn(model, sc: StepConfig, ops: AttackOps = DEFAULT_OPS,
                  teacher_models: tuple = ()) -> Callable:
  """The per-device step ``(state, batch[, teacher_variables]) -> (state, metrics)``;
  metrics are sums. ``teacher_models``: KD's teachers (flax modules), whose variables
  come as the third argument in the same order."""
  hp = sc.objective
  uses_table = objectives.uses_table(hp, sc.sglr)
  apply_train = lambda v, z: model.apply(v, z, train=True, mutable=['batch_stats'])

  def step(state, batch, teacher_variables=()):
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

    teacher_logits = tuple(  # [b, K] each, inference mode, constants of the loss
        jax.lax.stop_gradient(m.apply(v, x_adv, train=False))
        for m, v in zip(teacher_models, teacher_variables))

    def loss_fn(params):
      v = {'params': params, 'batch_stats': state.batch_stats}
      terms = objectives.train_loss(hp, sc.sglr, apply_train, v, x, x_adv, targets, rows,
                                    state.epoch, teacher_logits)
      return jnp.mean(terms.per_example), terms

    params = state.params
    if sc.awp is not None:  # the gradient at w + v; the BatchNorm update of this pass is dropped
      def weight_perturbation():
        g = jax.lax.pmean(jax.grad(lambda p: loss_fn(p)[0])(state.params), AXIS)
        return awp_lib.perturbation(state.params, g, sc.awp.gamma)
      zeros = lambda: jax.tree.map(jnp.zeros_like, state.params)
      if sc.awp.warmup_epochs > 0:
        v = jax.lax.cond(state.epoch >= sc.awp.warmup_epochs, weight_perturbation, zeros)
      else:
        v = weight_perturbation()
      params = awp_lib.add(state.params, v)
    grads, terms = jax.grad(loss_fn, has_aux=True)(params)
    grads = jax.lax.pmean(grads, AXIS)
    # applied to the unperturbed weights: w + v is never stored
    new_state = state.apply_gradients(grads=grads, batch_stats=terms.batch_stats)
    if sc.swa is not None:
      avg, count = swa_lib.collect(state.swa_params, state.swa_count, new_state.params,
                                   swa_lib.due(sc.swa, new_state.step))
      new_state = new_state.replace(swa_params=avg, swa_count=count)
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


class _WithTeachers:
  """The jitted step with the teachers' variables bound: ``(state, batch)`` like the
  others, and ``lower`` for ahead-of-time compilation."""

  def __init__(self, jitted, teacher_variables):
    self._jitted, self._teachers = jitted, teacher_variables

  def __call__(self, state, batch):
    return self._jitted(state, batch, self._teachers)

  def lower(self, state, batch):
    return self._jitted.lower(state, batch, self._teachers)


def make_train_step(model, sc: StepConfig, mesh, state, *, ops: AttackOps = DEFAULT_OPS,
                    teachers: tuple = ()):
  """``jit(shard_map(step))`` with the state donated; ``ops``: how the attack loops.

  ``teachers``: KD's ``(model, variables)`` pairs; the variables must be replicated
  on ``mesh`` (an argument, not a constant of the program: compiled once, not embedded).
  """
  specs = state_specs(state, sc.table_layout)
  models = tuple(m for m, _ in teachers)
  in_specs = (specs, P(AXIS), P()) if teachers else (specs, P(AXIS))
  mapped = jax.shard_map(train_step_fn(model, sc, ops, models), mesh=mesh,
                         in_specs=in_specs, out_specs=(specs, P()), check_vma=False)
  jitted = jax.jit(mapped, donate_argnums=0)
  if not teachers:
    return jitted
  return _WithTeachers(jitted, tuple(v for _, v in teachers))
