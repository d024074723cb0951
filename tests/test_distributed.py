"""jax.distributed start-up only when asked, and the process barrier's public route.

Several real processes (start-up, barriers, preemption across them) are exercised by
tests/test_multihost.py.
"""
import inspect
import json
import os
import subprocess
import sys

import orbax.checkpoint as ocp
import pytest

import _mp_worker as w
from sglr_jax import distributed, experiment


# What JAX's own cluster detection reads (jax/_src/clusters): none may be set for the
# 'auto' = one process case.
_CLUSTER_VARS = ('JAX_COORDINATOR_ADDRESS', 'SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS',
                 'SLURM_PROCID', 'SLURM_LOCALID', 'OMPI_MCA_orte_hnp_uri',
                 'KUBERNETES_SERVICE_HOST', 'TPU_WORKER_HOSTNAMES', 'TPU_PROCESS_ADDRESSES')

PROBE = r'''
import json, sys
import jax
from sglr_jax import distributed
mode = sys.argv[1]
try:
  got = distributed.maybe_initialize(distributed.DistributedParams(enabled=mode))
except Exception as e:
  got = f'{type(e).__name__}: {e}'
print(json.dumps({'got': got, 'initialized': jax.distributed.is_initialized(),
                  'processes': jax.process_count()}))
'''


def _probe(mode: str, **env):
  base = {k: v for k, v in os.environ.items() if k not in _CLUSTER_VARS}
  out = subprocess.run([sys.executable, '-c', PROBE, mode], cwd=w.ROOT, env={**base, **env},
                       capture_output=True, text=True, timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.splitlines()[-1])


def test_auto_without_a_cluster_is_one_process_and_true_is_a_config_error():
  """A fresh process (jax.distributed.initialize must come before the backend starts):
  'auto' asks JAX, which finds no cluster here, and the run is one process without a
  client; 'true' with no coordinator is one ConfigError line."""
  assert _probe('auto') == {'got': False, 'initialized': False, 'processes': 1}
  r = _probe('true')
  assert r['got'].startswith('ConfigError: distributed.enabled=true but no coordinator'), r
  assert not r['initialized']


def test_auto_joins_the_cluster_jax_detects():
  """A one-task SLURM step (the variables srun sets): JAX's own detection gives the
  coordinator, count and id, and 'auto' initialises (one process here)."""
  slurm = {'SLURM_JOB_ID': '4321', 'SLURM_STEP_NODELIST': '127.0.0.1', 'SLURM_NTASKS': '1',
           'SLURM_PROCID': '0', 'SLURM_LOCALID': '0',
           'JAX_COORDINATOR_PORT': str(w.free_port())}
  assert _probe('auto', **slurm) == {'got': True, 'initialized': True, 'processes': 1}


def test_auto_after_the_backend_started_stays_one_process(monkeypatch):
  """In-process runs (tests, notebooks) start the backend before the command line runs:
  'auto' cannot join a cluster then and runs alone; 'false' never asks."""
  for v in _CLUSTER_VARS:
    monkeypatch.delenv(v, raising=False)
  import jax  # pylint: disable=g-import-not-at-top
  jax.devices()  # the backend is started
  c = w.config()
  assert distributed.maybe_initialize(experiment.distributed_params(c)) is False  # 'auto'
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
