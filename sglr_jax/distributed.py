"""Several processes (hosts): ``jax.distributed`` start-up and a process barrier.

``maybe_initialize`` runs before anything touches a JAX backend (the CLI calls it first);
``sync_processes`` is the barrier the training loop and the checkpoints use between
processes. On one process both do nothing.
"""
from __future__ import annotations

import dataclasses
import os

import jax

from sglr_jax import errors

ENABLED = ('auto', 'true', 'false')
_SLURM_VARS = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
               'SLURM_LOCALID')


@dataclasses.dataclass(frozen=True)
class DistributedParams:
  """The config's ``distributed`` section as plain values (see configs/default.py)."""
  enabled: str = 'auto'
  coordinator_address: str = ''
  num_processes: int = 0  # 0 = from the environment / cluster
  process_id: int = -1  # -1 = from the environment / cluster
  local_device_ids: tuple[int, ...] = ()  # () = all local devices


def cluster_detected() -> str:
  """Which multi-process launcher set this environment ('' = none): ``srun`` with
  more than one task, or a Cloud TPU pod slice with more than one host."""
  env = os.environ
  if all(v in env for v in _SLURM_VARS) and int(env['SLURM_NTASKS'] or 1) > 1:
    return 'slurm'
  hosts = [h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h.strip()]
  if len(hosts) > 1:
    return 'tpu'
  return ''


def maybe_initialize(params: DistributedParams) -> bool:
  """Calls ``jax.distributed.initialize`` when the config or the environment asks.

  ``enabled``: 'auto' initialises when a coordinator address is given (config or
  ``JAX_COORDINATOR_ADDRESS``), under ``srun`` with several tasks, or on a multi-host
  TPU pod slice, leaving the rest (address, process count and id) to JAX's cluster
  detection unless the config sets them; 'true' always calls it (any cluster JAX
  detects: SLURM, Open MPI, Kubernetes, TPU); 'false' never. A single process
  (workstation, one-task SLURM job) needs none of it.
  """
  mode = str(params.enabled).lower()
  if mode not in ENABLED:
    raise errors.ConfigError(f'distributed.enabled={params.enabled!r}; allowed: '
                             f'{", ".join(ENABLED)}')
  if mode == 'false':
    return False
  if jax.distributed.is_initialized():  # e.g. a second in-process run
    return True
  kwargs = {}
  if params.coordinator_address:
    kwargs['coordinator_address'] = params.coordinator_address
  if params.num_processes:
    kwargs['num_processes'] = int(params.num_processes)
  if params.process_id >= 0:
    kwargs['process_id'] = int(params.process_id)
  if params.local_device_ids:
    kwargs['local_device_ids'] = list(params.local_device_ids)
  asked = bool(kwargs.get('coordinator_address') or os.environ.get('JAX_COORDINATOR_ADDRESS'))
  if mode == 'auto' and not (asked or cluster_detected()):
    return False
  # CPU collectives across processes (tests, CPU clusters); GPU/TPU are unaffected.
  # The backend must not be touched before initialize(), so no backend check here.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
  return True


def sync_processes(name: str, timeout_s: float = 1800) -> None:
  """All processes wait here: a barrier of the coordination service, no device collective.

  Called before the first cross-process collective: on CPU, gloo gives processes only
  30 s to meet when it first connects a group of devices, and loading data or
  compiling can put them further apart than that on a busy host. JAX has no public
  barrier with a timeout; Orbax's public ``multihost.get_barrier_sync_fn`` is one (it
  waits on the ``jax.distributed`` client). Every process must pass the same ``name``,
  once.
  """
  if jax.process_count() == 1:
    return
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  try:
    barrier = ocp.multihost.get_barrier_sync_fn()
  except ValueError:  # several processes without jax.distributed (not expected)
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
    return
  barrier(key=name, timeout_ms=int(timeout_s * 1000))
