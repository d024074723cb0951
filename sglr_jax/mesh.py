"""The ``('data',)`` mesh, shardings, and host-local batches as global arrays.

One SPMD program serves one device, many devices and many hosts: the per-device
train step (``jax.shard_map``) averages gradients and BatchNorm statistics with
named-axis collectives over ``data``. Under ``jax.distributed`` each process feeds
only its slice of every global batch.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sglr_jax import errors

AXIS = 'data'
TABLE_LAYOUTS = ('replicated', 'sharded')


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh over the first ``num_devices`` devices (0 = all, across hosts)."""
  devices = jax.devices()
  n = num_devices or len(devices)
  if n > len(devices):
    raise errors.ConfigError(f'parallel.num_devices={n} but only {len(devices)} devices exist')
  return Mesh(np.asarray(devices[:n]), (AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def table_rows(n: int, mesh: Mesh) -> int:
  """Rows of the label table: ``n`` rounded up to a multiple of the device count."""
  d = mesh.size
  return -(-n // d) * d


def state_specs(state, table_layout: str):
  """PartitionSpecs for the train state: replicated, except a row-sharded table."""
  if table_layout not in TABLE_LAYOUTS:
    raise errors.ConfigError(
        f'sglr.table_sharding={table_layout!r}; allowed: {", ".join(TABLE_LAYOUTS)}')
  specs = jax.tree.map(lambda _: P(), state)
  if table_layout == 'sharded':
    specs = specs.replace(label_table=P(AXIS))
  return specs


def state_shardings(state, mesh: Mesh, table_layout: str):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs(state, table_layout),
                      is_leaf=lambda x: isinstance(x, P))


def check_batch_size(batch_size: int, mesh: Mesh, field: str):
  """The global batch must split evenly over devices and processes (the train batch:
  padding it would change the gradient). The error names the nearest valid sizes."""
  d = math.lcm(mesh.size, jax.process_count())
  if batch_size % d:
    below, above = batch_size // d * d, -(-batch_size // d) * d
    near = ' or '.join(str(b) for b in (below, above) if b > 0)
    raise errors.ConfigError(
        f'{field}={batch_size} must be divisible by the number of devices ({mesh.size}) '
        f'and processes ({jax.process_count()}); nearest valid values: {near}')


def eval_batch_size(requested: int, mesh: Mesh) -> int:
  """``eval.batch_size`` rounded up to a multiple of the global device count (and of the
  process count): every evaluator pads its last batch and masks the padding rows, so a
  larger batch changes no result, and the shipped configs run on any device count."""
  if requested < 1:
    raise errors.ConfigError(f'eval.batch_size={requested}: a positive count')
  d = math.lcm(mesh.size, jax.process_count())
  return -(-requested // d) * d


def to_global(batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy slices -> global arrays sharded on ``data`` (big_vision style)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
