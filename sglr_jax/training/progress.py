"""What a ``latest`` checkpoint holds besides the state, and resuming from it.

A checkpoint taken inside an epoch (SIGTERM, ``train.checkpoint_every_steps``) stores
the per-step metric sums of that epoch's finished steps and its train time, so the
resumed epoch logs the numbers of an uninterrupted one.
"""
from __future__ import annotations

import logging

import jax

from sglr_jax import checkpoints, errors

VERSION = 1


def record(epoch: int, sums: list, steps_per_epoch: int, train_time_s: float) -> dict:
  """The running epoch (0-based), the steps done in it and their metric sums (exact:
  JSON floats round-trip)."""
  return {'version': VERSION, 'epoch': epoch, 'step_in_epoch': len(sums),
          'steps_per_epoch': steps_per_epoch, 'train_time_s': round(float(train_time_s), 3),
          'metrics': [{k: float(v) for k, v in m.items()} for m in sums]}


def resume(workdir: str, state, shardings, steps_per_epoch: int, epochs: int = 0,
           commit: str = 'auto'):
  """The newest readable ``latest`` checkpoint (or ``state``) and, when it was taken
  inside an epoch, that epoch's saved per-step metrics and train time.

  ``epochs``: the run's epoch count, to say so when all are done; ``commit``: the run's
  ``train.checkpoint_commit``.
  Returns ``(state, sums, train_time_s)``.
  """
  spe = steps_per_epoch
  got = checkpoints.restore(workdir, 'latest', state, shardings, with_progress=True,
                            commit=commit)
  if got is None:
    return state, [], 0.0
  state, key, prog = got
  epoch, step = int(state.epoch), int(state.step)
  k = step - epoch * spe
  if jax.process_index() == 0 and epochs and epoch >= epochs and k == 0:
    logging.warning('checkpoint latest/%d: all %d epochs are done', key, epochs)
  elif jax.process_index() == 0:
    logging.warning('resuming from checkpoint latest/%d: epoch %d, step %d of %d', key,
                    epoch + 1, k, spe)
  if k == 0:
    return state, [], 0.0
  if not 0 < k < spe:
    raise errors.ConfigError(
        f'the latest checkpoint is at step {step} in epoch {epoch + 1}, which does not fit '
        f'{spe} steps per epoch; were train.batch_size or data.train_size changed? '
        'Use a fresh --workdir for a different setup')
  if not prog or prog.get('epoch') != epoch or len(prog.get('metrics', ())) != k:
    logging.warning('checkpoint latest/%d has no metrics of the %d finished steps of epoch %d; '
                    "that epoch's train metrics will cover the remaining steps only", key, k,
                    epoch + 1)
    return state, [], 0.0
  return state, list(prog['metrics']), float(prog.get('train_time_s', 0.0))
