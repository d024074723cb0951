"""jax.distributed start-up only when asked, and the process barrier's public route.

Several real processes (start-up, barriers, preemption across them) are exercised by
tests/test_multihost.py.
"""
import inspect

import orbax.checkpoint as ocp
import pytest

import _mp_worker as w
from sglr_jax import distributed, experiment


def test_distributed_initialisation_only_when_asked(monkeypatch):
  for v in ('JAX_COORDINATOR_ADDRESS', 'SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS',
            'SLURM_PROCID', 'SLURM_LOCALID', 'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(v, raising=False)
  c = w.config()
  assert distributed.maybe_initialize(experiment.distributed_params(c)) is False  # 'auto'
  # a one-task SLURM job or a single TPU host runs like a workstation
  for k, v in {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'n1', 'SLURM_NTASKS': '1',
               'SLURM_PROCID': '0', 'SLURM_LOCALID': '0', 'TPU_WORKER_HOSTNAMES': 'h0'}.items():
    monkeypatch.setenv(k, v)
  assert distributed.cluster_detected() == ''
  assert distributed.maybe_initialize(experiment.distributed_params(c)) is False
  monkeypatch.setenv('SLURM_NTASKS', '4')
  assert distributed.cluster_detected() == 'slurm'
  monkeypatch.setenv('SLURM_NTASKS', '1')
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'h0,h1')
  assert distributed.cluster_detected() == 'tpu'
  c.distributed.enabled = 'false'
  assert distributed.maybe_initialize(experiment.distributed_params(c)) is False
  c.distributed.enabled = 'sometimes'
  with pytest.raises(ValueError, match='distributed.enabled'):
    distributed.maybe_initialize(experiment.distributed_params(c))


def test_distributed_params_from_the_config():
  c = w.config()
  c.distributed.coordinator_address = 'h0:1234'
  c.distributed.num_processes = 4
  c.distributed.process_id = 2
  c.distributed.local_device_ids = '0,1'
  assert experiment.distributed_params(c) == distributed.DistributedParams(
      enabled='auto', coordinator_address='h0:1234', num_processes=4, process_id=2,
      local_device_ids=(0, 1))


def test_barrier_route_is_orbax_public_api():
  """``sync_processes`` waits on Orbax's public ``multihost.get_barrier_sync_fn()``
  (JAX has no public barrier with a timeout); fail loudly here if it changes shape.
  On one process the barrier is a no-op and ``sync_processes`` returns at once."""
  params = inspect.signature(ocp.multihost.get_barrier_sync_fn).parameters
  assert list(params) == ['processes']
  assert params['processes'].kind == inspect.Parameter.KEYWORD_ONLY
  barrier = ocp.multihost.get_barrier_sync_fn()
  assert barrier(key='sglr_test', timeout_ms=1000) is None
  assert distributed.sync_processes('sglr_test') is None
