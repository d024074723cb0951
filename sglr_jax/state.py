"""The training state: everything a checkpoint must hold to resume exactly."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from sglr_jax import labels as labels_lib


class TrainState(train_state.TrainState):
  """Optax ``TrainState`` plus BatchNorm statistics, the label table and run state.

  ``label_table [N, K]``: SGLR's soft labels (or TE's prediction ensemble); one-hot
  at initialisation, refined rows written by the train step.
  ``epoch``: number of completed epochs (so it is the 0-based index of the running one).
  ``rng``: base key; a step's key is ``fold_in(rng, step)``.
  ``best_metric``: best test PGD-20 accuracy so far (-1 before the first evaluation).
  """
  batch_stats: Any
  label_table: jax.Array
  epoch: jax.Array
  rng: jax.Array
  best_metric: jax.Array


def create_optimizer(config, steps_per_epoch: int) -> tuple[optax.GradientTransformation, Any]:
  """SGD with momentum and coupled (PyTorch-style) weight decay, and its LR schedule."""
  schedule = lr_schedule(config, steps_per_epoch)
  tx = optax.chain(
      optax.add_decayed_weights(config.optim.weight_decay),
      optax.sgd(schedule, momentum=config.optim.momentum, nesterov=config.optim.nesterov))
  return tx, schedule


def lr_schedule(config, steps_per_epoch: int):
  """Per-step learning rate: 'piecewise' decays by ``decay_factor`` at each of
  ``decay_epochs`` (epoch counts, as in the paper's 100 and 150 of 200); 'cosine'
  anneals to 0 over ``train.epochs``."""
  base = config.optim.lr
  if config.schedule.name == 'piecewise':
    boundaries = {int(e) * steps_per_epoch: config.schedule.decay_factor
                  for e in config.schedule.decay_epochs}
    return optax.piecewise_constant_schedule(base, boundaries)
  if config.schedule.name == 'cosine':
    return optax.cosine_decay_schedule(base, config.train.epochs * steps_per_epoch)
  raise ValueError(f'schedule.name={config.schedule.name!r}; allowed: piecewise, cosine')


# XLA:CPU spends seconds per shape compiling the initialisers' normal sampling
# (erf_inv); the one-off init program does not need optimising (2.5x faster here).
_CPU_INIT_OPTIONS = {'xla_backend_optimization_level': 0,
                     'xla_llvm_disable_expensive_passes': True}


def init_variables(model, image_shape, key):
  """``model.init`` on a zero batch of one image, as one jitted program."""
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  options = _CPU_INIT_OPTIONS if jax.default_backend() == 'cpu' else None
  return jax.jit(lambda k: model.init(k, x, train=False), compiler_options=options)(key)


def create_train_state(config, model, image_shape, labels, num_classes, steps_per_epoch,
                       key, table_rows: int = 0) -> TrainState:
  """Initialises parameters from ``key`` and the label table from the training labels.

  ``table_rows`` (>= N) pads the table so that it splits evenly over devices; the
  padding rows are never read.
  """
  table = labels_lib.init_table(labels, num_classes)
  if table_rows > table.shape[0]:
    table = jnp.pad(table, ((0, table_rows - table.shape[0]), (0, 0)))
  init_key, run_key = jax.random.split(key)
  variables = init_variables(model, image_shape, init_key)
  tx, _ = create_optimizer(config, steps_per_epoch)
  return TrainState.create(
      apply_fn=model.apply,
      params=variables['params'],
      batch_stats=variables.get('batch_stats', {}),
      tx=tx,
      label_table=table,
      epoch=jnp.zeros((), jnp.int32),
      rng=run_key,
      best_metric=jnp.full((), -1.0, jnp.float32),
  )
