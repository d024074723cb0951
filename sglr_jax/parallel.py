"""The ``('data',)`` mesh, shardings, and host-local batches as global arrays.

One SPMD program serves one device, many devices and many hosts: the per-device
train step (``jax.shard_map``) averages gradients and BatchNorm statistics with
named-axis collectives over ``data``. Under ``jax.distributed`` each process feeds
only its slice of every global batch.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = 'data'
TABLE_LAYOUTS = ('replicated', 'sharded')


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh over the first ``num_devices`` devices (0 = all, across hosts)."""
  devices = jax.devices()
  n = num_devices or len(devices)
  if n > len(devices):
    raise ValueError(f'parallel.num_devices={n} but only {len(devices)} devices exist')
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
    raise ValueError(f'sglr.table_sharding={table_layout!r}; allowed: {", ".join(TABLE_LAYOUTS)}')
  specs = jax.tree.map(lambda _: P(), state)
  if table_layout == 'sharded':
    specs = specs.replace(label_table=P(AXIS))
  return specs


def state_shardings(state, mesh: Mesh, table_layout: str):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs(state, table_layout),
                      is_leaf=lambda x: isinstance(x, P))


def check_batch_size(batch_size: int, mesh: Mesh, field: str):
  """The global batch must split evenly over devices and processes."""
  if batch_size % mesh.size or batch_size % jax.process_count():
    raise ValueError(f'{field}={batch_size} must be divisible by the number of devices '
                     f'({mesh.size}) and processes ({jax.process_count()})')


def to_global(batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy slices -> global arrays sharded on ``data`` (big_vision style)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def sync_processes(name: str, timeout_s: float = 1800):
  """All processes wait here (a coordination-service barrier, no device collective).

  Called before the first cross-process collective: on CPU, gloo gives processes
  only 30 s to meet when it first connects a group of devices, and loading data or
  compiling can put them further apart than that on a busy host.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  client = distributed.global_state.client
  if client is None:  # processes without jax.distributed (not expected): a device barrier
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
  else:
    client.wait_at_barrier(name, timeout_in_ms=int(timeout_s * 1000))


def _cluster_detected() -> str:
  """Which multi-process launcher set this environment ('' = none): ``srun`` with
  more than one task, or a Cloud TPU pod slice with more than one host."""
  env = os.environ
  slurm = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID', 'SLURM_LOCALID')
  if all(v in env for v in slurm) and int(env['SLURM_NTASKS'] or 1) > 1:
    return 'slurm'
  hosts = [h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h.strip()]
  if len(hosts) > 1:
    return 'tpu'
  return ''


def maybe_initialize_distributed(dist_config) -> bool:
  """Calls ``jax.distributed.initialize`` when the config or the environment asks.

  ``distributed.enabled``: 'auto' initialises when a coordinator address is given
  (config or ``JAX_COORDINATOR_ADDRESS``), under ``srun`` with several tasks, or
  on a multi-host TPU pod slice, leaving the rest (address, process count and id)
  to JAX's cluster detection unless the config sets them; 'true' always calls it
  (any cluster JAX detects: SLURM, Open MPI, Kubernetes, TPU); 'false' never.
  A single process (workstation, one-task SLURM job) needs none of it.
  """
  mode = str(dist_config.enabled).lower()
  if mode not in ('auto', 'true', 'false'):
    raise ValueError(f"distributed.enabled={dist_config.enabled!r}; allowed: auto, true, false")
  if mode == 'false':
    return False
  if jax.distributed.is_initialized():  # e.g. a second in-process run
    return True
  kwargs = {}
  if dist_config.coordinator_address:
    kwargs['coordinator_address'] = dist_config.coordinator_address
  if dist_config.num_processes:
    kwargs['num_processes'] = int(dist_config.num_processes)
  if dist_config.process_id >= 0:
    kwargs['process_id'] = int(dist_config.process_id)
  if dist_config.local_device_ids:
    kwargs['local_device_ids'] = [int(i) for i in str(dist_config.local_device_ids).split(',')]
  asked = bool(kwargs.get('coordinator_address') or os.environ.get('JAX_COORDINATOR_ADDRESS'))
  if mode == 'auto' and not (asked or _cluster_detected()):
    return False
  # CPU collectives across processes (tests, CPU clusters); GPU/TPU are unaffected.
  # The backend must not be touched before initialize(), so no backend check here.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
  return True
