"""Several processes (hosts): ``jax.distributed`` start-up and a process barrier.

``maybe_initialize`` runs before anything touches a JAX backend (the CLI calls it first);
``sync_processes`` is the barrier the training loop and the checkpoints use between
processes. On one process both do nothing.
"""
from __future__ import annotations

import dataclasses

import jax

from sglr_jax import errors

ENABLED = ('auto', 'true', 'false')
# jax.distributed.initialize's error when neither the arguments, JAX_COORDINATOR_ADDRESS
# nor any cluster JAX knows gives a coordinator: 'auto' then runs as one process.
_NO_CLUSTER = 'coordinator_address should be defined'
_TOO_LATE = 'must be called before'


@dataclasses.dataclass(frozen=True)
class DistributedParams:
  """The config's ``distributed`` section as plain values (see configs/default.py)."""
  enabled: str = 'auto'
  coordinator_address: str = ''
  num_processes: int = 0  # 0 = from the environment / cluster
  process_id: int = -1  # -1 = from the environment / cluster
  local_device_ids: tuple[int, ...] = ()  # () = all local devices


def _kwargs(params: DistributedParams) -> dict:
  kwargs = {}
  if params.coordinator_address:
    kwargs['coordinator_address'] = params.coordinator_address
  if params.num_processes:
    kwargs['num_processes'] = int(params.num_processes)
  if params.process_id >= 0:
    kwargs['process_id'] = int(params.process_id)
  if params.local_device_ids:
    kwargs['local_device_ids'] = list(params.local_device_ids)
  return kwargs


def maybe_initialize(params: DistributedParams) -> bool:
  """Calls ``jax.distributed.initialize`` when the config or the environment asks.

  ``enabled``: 'true' always calls it; 'false' never; 'auto' calls it and lets JAX find
  the cluster itself: the config's values, ``JAX_COORDINATOR_ADDRESS``, or any cluster
  JAX detects (SLURM, Open MPI, Kubernetes, Cloud TPU VMs through their metadata server,
  GKE TPU slices). When JAX finds no coordinator it raises before it starts anything,
  and the run is one process. Why not a list of environment variables here, or JAX's
  cluster classes: JAX's detection is the one that decides the coordinator, process
  count and id, it covers launchers as they are added (a plain Cloud TPU VM sets no
  environment variable at all), and its classes are private. The cost: a one-process
  job under a launcher JAX detects (a one-task ``srun``, a single TPU VM) also starts
  the coordination service, with one process; nothing else changes for it.
  Returns whether ``jax.distributed`` is initialised.
  """
  mode = str(params.enabled).lower()
  if mode not in ENABLED:
    raise errors.ConfigError(f'distributed.enabled={params.enabled!r}; allowed: '
                             f'{", ".join(ENABLED)}')
  if mode == 'false':
    return False
  if jax.distributed.is_initialized():  # e.g. a second in-process run
    return True
  try:
    jax.distributed.initialize(**_kwargs(params))
  except RuntimeError as e:
    # 'auto' in a process whose backend already started (a second in-process run, a
    # notebook): it cannot join a cluster any more and runs alone, as before.
    if mode == 'auto' and _TOO_LATE in str(e):
      return False
    raise
  except ValueError as e:
    if _NO_CLUSTER not in str(e) or jax.distributed.is_initialized():
      raise
    if mode == 'auto':
      return False
    raise errors.ConfigError(
        'distributed.enabled=true but no coordinator: set distributed.coordinator_address '
        '(or JAX_COORDINATOR_ADDRESS), or launch under a cluster JAX detects') from None
  # CPU collectives across processes (tests, CPU clusters); GPU/TPU are unaffected. Set
  # after initialize (which must come before any backend starts; this only records a
  # choice the CPU backend reads when it starts).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
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
