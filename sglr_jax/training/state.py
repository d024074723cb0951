"""The training state (everything a checkpoint must hold to resume exactly), the
optimizer and its learning-rate schedule."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from sglr_jax import errors, sglr_table

SCHEDULES = ('piecewise', 'cosine')


class TrainState(train_state.TrainState):
  """Optax ``TrainState`` plus BatchNorm statistics, the label table and run state.

  ``label_table [N, K]``: SGLR's soft labels (or TE's prediction ensemble); one-hot
  at initialisation, refined rows written by the train step.
  ``epoch``: number of completed epochs (so it is the 0-based index of the running one).
  ``rng``: base key; a step's key is ``fold_in(rng, step)``.
  ``best_metric``: best test PGD-20 accuracy so far (-1 before the first evaluation).
  ``swa_params``, ``swa_batch_stats``, ``swa_count``: stochastic weight averaging (None
  when it is off, so checkpoints of runs without it keep their layout): the mean of the
  ``swa_count`` collected snapshots of ``params``, and BatchNorm statistics recomputed
  for that mean on the training data (``training.swa``).
  """
  batch_stats: Any
  label_table: jax.Array
  epoch: jax.Array
  rng: jax.Array
  best_metric: jax.Array
  swa_params: Any = None
  swa_batch_stats: Any = None
  swa_count: Optional[jax.Array] = None


@dataclasses.dataclass(frozen=True)
class OptimParams:
  """SGD (the config's ``optim`` section)."""
  lr: float = 0.1
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 5e-4  # coupled (PyTorch-style) L2


@dataclasses.dataclass(frozen=True)
class ScheduleParams:
  """The learning-rate schedule (the config's ``schedule`` section and ``train.epochs``)."""
  name: str = 'piecewise'
  decay_epochs: tuple[int, ...] = (100, 150)
  decay_factor: float = 0.1
  epochs: int = 200


def create_optimizer(optim: OptimParams, schedule: ScheduleParams,
                     steps_per_epoch: int) -> tuple[optax.GradientTransformation, Any]:
  """SGD with momentum and coupled (PyTorch-style) weight decay, and its LR schedule."""
  lr = lr_schedule(optim.lr, schedule, steps_per_epoch)
  tx = optax.chain(
      optax.add_decayed_weights(optim.weight_decay),
      optax.sgd(lr, momentum=optim.momentum, nesterov=optim.nesterov))
  return tx, lr


def lr_schedule(base_lr: float, schedule: ScheduleParams, steps_per_epoch: int):
  """Per-step learning rate: 'piecewise' decays by ``decay_factor`` at each of
  ``decay_epochs`` (epoch counts, as in the paper's 100 and 150 of 200); 'cosine'
  anneals to 0 over ``epochs``."""
  if schedule.name == 'piecewise':
    boundaries = {int(e) * steps_per_epoch: schedule.decay_factor
                  for e in schedule.decay_epochs}
    return optax.piecewise_constant_schedule(base_lr, boundaries)
  if schedule.name == 'cosine':
    return optax.cosine_decay_schedule(base_lr, schedule.epochs * steps_per_epoch)
  raise errors.ConfigError(f'schedule.name={schedule.name!r}; allowed: {", ".join(SCHEDULES)}')


def init_variables(model, image_shape, key, compiler_options: Optional[dict] = None):
  """``model.init`` on a zero batch of one image, as one jitted program.

  ``compiler_options``: the platform's options for this one-off program (e.g. less
  optimisation on XLA:CPU, where compiling the initialisers dominates).
  """
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  return jax.jit(lambda k: model.init(k, x, train=False),
                 compiler_options=compiler_options)(key)


def create_train_state(model, tx, image_shape, labels, num_classes, key, table_rows: int = 0,
                       compiler_options: Optional[dict] = None, swa: bool = False) -> TrainState:
  """Initialises parameters from ``key`` and the label table from the training labels.

  ``table_rows`` (>= N) pads the table so that it splits evenly over devices; the
  padding rows are never read. ``swa``: hold a weight average (empty until collected).
  """
  table = sglr_table.init_table(labels, num_classes)
  if table_rows > table.shape[0]:
    table = jnp.pad(table, ((0, table_rows - table.shape[0]), (0, 0)))
  init_key, run_key = jax.random.split(key)
  variables = init_variables(model, image_shape, init_key, compiler_options)
  return TrainState.create(
      apply_fn=model.apply,
      params=variables['params'],
      batch_stats=variables.get('batch_stats', {}),
      tx=tx,
      label_table=table,
      epoch=jnp.zeros((), jnp.int32),
      rng=run_key,
      best_metric=jnp.full((), -1.0, jnp.float32),
      swa_params=jax.tree.map(jnp.copy, variables['params']) if swa else None,
      swa_batch_stats=(jax.tree.map(jnp.copy, variables.get('batch_stats', {}))
                       if swa else None),
      swa_count=jnp.zeros((), jnp.int32) if swa else None,
  )
