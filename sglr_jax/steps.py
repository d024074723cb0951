"""The pure train and eval steps: one per-device SPMD program over the ``data`` axis.

``make_train_step`` returns ``jit(shard_map(per_device_step))``: each device attacks
its slice of the batch (model in inference mode), computes the loss on ``x'`` with
the target of ``labels.py`` (train-mode BatchNorm synchronised over ``data``),
averages gradients with ``pmean``, and writes the refined rows of the whole global
batch into the label table (replicated: every device writes all rows; sharded:
each device writes the rows it owns).

Random numbers are per example: ``fold_in(fold_in(rng, step), index)``, so the
result does not depend on how the batch is split over devices.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from sglr_jax import labels as labels_lib
from sglr_jax import objectives
from sglr_jax.attacks import pgd
from sglr_jax.parallel import AXIS, state_specs


class StepConfig(NamedTuple):
  """Everything static the train step needs (hashable, plain values)."""
  objective: objectives.ObjectiveParams
  sglr: Optional[labels_lib.SGLRParams]
  num_classes: int
  augment: bool
  table_layout: str


def step_config(config, num_classes: int) -> StepConfig:
  o, s = config.objective, config.sglr
  obj = objectives.ObjectiveParams(
      name=o.name, eps=float(config.attack.eps), step_size=float(config.attack.step_size),
      steps=int(config.attack.steps), beta=float(o.beta), ls_eps=float(o.ls_eps),
      te_weight=float(o.te_weight), te_momentum=float(o.te_momentum),
      te_rampup_epochs=int(o.te_rampup_epochs))
  sglr = labels_lib.SGLRParams(
      momentum=float(s.momentum), lam=float(s.lam), temperature=float(s.temperature),
      alpha=float(s.alpha), start_epoch=int(s.start_epoch)) if s.enabled else None
  return StepConfig(obj, sglr, num_classes, bool(config.data.augment), s.table_sharding)


def example_keys(key, index):
  """One key per example ``[B, 2]``, from the example's index."""
  return jax.vmap(jax.random.fold_in, (None, 0))(key, index)


def to_float(image):
  """uint8 ``[B, H, W, C]`` -> float32 in [0, 1]."""
  return image.astype(jnp.float32) / 255.0


def _gather_rows(table, all_index, local_index, layout):
  """The stored table rows of this device's examples ``[b, K]``."""
  if layout == 'replicated':
    return table[local_index]
  offset = jax.lax.axis_index(AXIS) * table.shape[0]
  rows = jax.lax.psum(labels_lib.read_owned_rows(table, all_index, offset), AXIS)
  b = local_index.shape[0]
  return jax.lax.dynamic_slice_in_dim(rows, jax.lax.axis_index(AXIS) * b, b)


def _write_rows(table, all_index, all_rows, layout):
  if layout == 'replicated':
    return labels_lib.write_rows(table, all_index, all_rows)
  offset = jax.lax.axis_index(AXIS) * table.shape[0]
  return labels_lib.write_owned_rows(table, all_index, all_rows, offset)


def train_step_fn(model, sc: StepConfig) -> Callable:
  """The per-device step ``(state, batch) -> (state, metrics)``; metrics are sums."""
  obj = sc.objective
  uses_table = sc.sglr is not None or obj.name == 'te'

  def step(state, batch):
    x = to_float(batch['image'])
    labels, index = batch['label'], batch['index']
    keys = example_keys(jax.random.fold_in(state.rng, state.step), index)
    split = jax.vmap(jax.random.split)(keys)  # [b, 2, 2]
    aug_keys, attack_keys = split[:, 0], split[:, 1]
    if sc.augment:
      from sglr_jax import augment  # pylint: disable=g-import-not-at-top
      x = jax.vmap(augment.augment_one)(aug_keys, x)

    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    logits_fn = lambda z: model.apply(variables, z, train=False)
    x_adv = objectives.attack(obj, logits_fn, x, labels, attack_keys)

    all_index = jax.lax.all_gather(index, AXIS, tiled=True)  # [B]
    rows = _gather_rows(state.label_table, all_index, index, sc.table_layout) if uses_table else None
    base = objectives.base_targets(obj, labels, sc.num_classes)

    def loss_fn(params):
      v = {'params': params, 'batch_stats': state.batch_stats}
      logits_clean = None
      if obj.name == 'trades':
        logits_clean, upd = model.apply(v, x, train=True, mutable=['batch_stats'])
        v = {'params': params, **upd}
      logits_adv, upd = model.apply(v, x_adv, train=True, mutable=['batch_stats'])
      new_rows, targets, ensemble = rows, base, None
      if sc.sglr is not None:
        if logits_clean is None:  # the extra clean pass; its BatchNorm update is dropped
          logits_clean = model.apply(v, x, train=True, mutable=['batch_stats'])[0]
        new_rows, targets = labels_lib.refine_batch(
            rows, logits_adv, logits_clean, base, sc.sglr,
            state.epoch >= sc.sglr.start_epoch)
      elif obj.name == 'te':
        ensemble = rows
        probs = jax.nn.softmax(jax.lax.stop_gradient(logits_adv))
        new_rows = obj.te_momentum * rows + (1 - obj.te_momentum) * probs
      per_example = objectives.loss(obj, logits_adv, logits_clean, targets, ensemble, state.epoch)
      return jnp.mean(per_example), (upd['batch_stats'], logits_adv, new_rows, per_example)

    grads, (batch_stats, logits_adv, new_rows, per_example) = jax.grad(
        loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if uses_table:
      all_rows = jax.lax.all_gather(new_rows, AXIS, tiled=True)
      new_state = new_state.replace(
          label_table=_write_rows(state.label_table, all_index, all_rows, sc.table_layout))
    correct = jnp.argmax(logits_adv, -1) == labels
    metrics = {
        'loss_sum': jax.lax.psum(jnp.sum(per_example), AXIS),
        'adv_correct': jax.lax.psum(jnp.sum(correct), AXIS),
        'count': jax.lax.psum(labels.shape[0], AXIS),
        'grad_norm': optax.tree.norm(grads),
    }
    return new_state, metrics

  return step


def make_train_step(model, sc: StepConfig, mesh, state):
  """``jit(shard_map(step))`` with the state donated."""
  specs = state_specs(state, sc.table_layout)
  mapped = jax.shard_map(train_step_fn(model, sc), mesh=mesh,
                         in_specs=(specs, P(AXIS)), out_specs=(specs, P()),
                         check_vma=False)
  return jax.jit(mapped, donate_argnums=0)


def make_eval_step(model, mesh, *, eps: float, step_size: float, steps: int):
  """``(variables, batch, key) -> (clean logits, adversarial logits)``, both ``[B, K]``
  sharded like the batch. PGD (CE, random start) runs with ``steps > 0``."""

  def step(variables, batch, key):
    x = to_float(batch['image'])
    logits_fn = lambda z: model.apply(variables, z, train=False)
    clean = logits_fn(x)
    if steps <= 0:
      return clean, clean
    keys = example_keys(key, batch['index'])
    x_adv = pgd.pgd_attack(logits_fn, x, batch['label'], eps=eps, step_size=step_size,
                           steps=steps, key=keys)
    return clean, logits_fn(x_adv)

  mapped = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS), P()),
                         out_specs=(P(AXIS), P(AXIS)), check_vma=False)
  return jax.jit(mapped)
