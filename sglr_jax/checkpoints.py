"""Orbax checkpoints of the full train state: ``latest`` (resume), ``best``, ``final``.

Each is its own ``CheckpointManager`` under ``WORKDIR/checkpoints/``, keyed by the
number of completed epochs. ``latest`` keeps two so that a damaged newest one can
fall back to the one before. Restoring reads the label table at its saved shape
and pads or trims it to the current device count, so a checkpoint written on 4
devices restores on 1 or 2.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

KINDS = ('latest', 'best', 'final')


class NoCheckpointError(FileNotFoundError):
  pass


def _manager(workdir: str, kind: str, create: bool = True) -> ocp.CheckpointManager:
  path = os.path.abspath(os.path.join(workdir, 'checkpoints', kind))
  keep = 2 if kind == 'latest' else 1
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=create, enable_async_checkpointing=False,
      cleanup_tmp_directories=True)
  return ocp.CheckpointManager(path, options=options)


def save(workdir: str, kind: str, state, epoch: int):
  """Saves ``state`` (all processes take part; Orbax writes each shard once)."""
  mngr = _manager(workdir, kind)
  mngr.save(epoch, args=ocp.args.StandardSave(state), force=True)
  mngr.wait_until_finished()
  mngr.close()


def available(workdir: str, kind: str) -> list[int]:
  path = os.path.join(workdir, 'checkpoints', kind)
  if not os.path.isdir(path):
    return []
  mngr = _manager(workdir, kind, create=False)
  steps = list(mngr.all_steps())
  mngr.close()
  return sorted(steps)


def restore(workdir: str, kind: str, target, shardings=None) -> Optional[tuple]:
  """Restores the newest readable checkpoint of ``kind`` into the structure of
  ``target``. Returns ``(state, epoch)`` or None when there is none. A checkpoint
  that fails to read is skipped with a warning and the one before is tried."""
  steps = available(workdir, kind)
  if not steps:
    return None
  mngr = _manager(workdir, kind, create=False)
  try:
    for step in reversed(steps):
      try:
        state = _restore_step(mngr, step, target, shardings)
        return state, step
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('checkpoint %s/%d is unreadable (%s: %s); trying an earlier one',
                        kind, step, type(e).__name__, str(e).splitlines()[0][:200])
    return None
  finally:
    mngr.close()


def _restore_step(mngr, step, target, shardings):
  saved_rows = _saved_table_rows(mngr, step)
  rows = target.label_table.shape[0]
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  if shardings is not None:
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  if saved_rows is not None and saved_rows != rows:
    k = target.label_table.shape[1]
    rep = jax.sharding.SingleDeviceSharding(jax.devices()[0]) if jax.process_count() == 1 \
        else None
    abstract = abstract.replace(label_table=jax.ShapeDtypeStruct(
        (saved_rows, k), target.label_table.dtype, sharding=rep))
  state = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  if saved_rows is not None and saved_rows != rows:
    table = np.asarray(state.label_table)
    table = table[:rows] if saved_rows > rows else np.pad(table, ((0, rows - saved_rows), (0, 0)))
    table = jnp.asarray(table)
    if shardings is not None:
      table = jax.device_put(table, shardings.label_table)
    state = state.replace(label_table=table)
  return state


def _saved_table_rows(mngr, step) -> Optional[int]:
  try:
    meta = mngr.item_metadata(step)
    tree = getattr(meta, 'tree', meta)
    entry = tree['label_table'] if isinstance(tree, dict) else tree.label_table
    return int(entry.shape[0])
  except Exception:  # pylint: disable=broad-except
    return None
