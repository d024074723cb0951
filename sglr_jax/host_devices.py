"""Split a CPU host into several XLA devices, one per core (set before jax starts).

Why. XLA:CPU runs one program on one device and keeps little more than one core busy
on these models (measured: 1.1-1.3 cores of 2 for the small CNN's forward and input
gradient). Declared as N host devices, the ('data',) mesh gives each core its own
slice of every batch: the same SPMD program as on N accelerators, BatchNorm statistics
and gradients averaged over the mesh, so the numbers are those of one device up to
float summation order. Only the CPU platform is affected: on a GPU/TPU host the extra
CPU devices exist but are not used.

Nothing here imports jax: ``configure`` must run before it is imported.
"""
from __future__ import annotations

import math
import os
import sys

FLAG = '--xla_force_host_platform_device_count'
MAX_AUTO = 8


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def auto_count(batch_sizes, cores: int) -> int:
  """The largest ``d <= min(cores, MAX_AUTO)`` that divides every batch size and leaves
  at least 8 examples per device of each."""
  g = 0
  for b in batch_sizes:
    g = math.gcd(g, int(b))
  best = 1
  for d in range(1, min(cores, MAX_AUTO) + 1):
    if g % d == 0 and all(int(b) // d >= 8 for b in batch_sizes):
      best = d
  return best


def _apply(n: int) -> int:
  """Sets ``n`` host devices in XLA_FLAGS; returns the count in force (an explicit count
  in XLA_FLAGS wins; once jax is imported nothing changes: 1)."""
  flags = os.environ.get('XLA_FLAGS', '')
  if FLAG in flags:
    return int(flags.split(FLAG + '=', 1)[1].split()[0])
  if 'jax' in sys.modules:
    return 1
  if n > 1:
    os.environ['XLA_FLAGS'] = f'{flags} {FLAG}={n}'.strip()
  return n


def one_per_core() -> int:
  """For scripts without a config (benchmarks): one host device per usable core (at
  most ``MAX_AUTO``) unless XLA_FLAGS sets a count or jax is already imported."""
  return _apply(min(usable_cores(), MAX_AUTO))


def configure(requested: int, config) -> int:
  """Sets XLA_FLAGS for ``requested`` host devices (-1 = ``auto_count``; 1 = leave XLA's
  default) and returns the count in force. Leaves everything as it is when XLA_FLAGS
  already sets a count, when jax is already imported, or for a multi-process run."""
  if requested == 0 or requested < -1:
    raise ValueError(f'--cpu_devices={requested}: -1 (auto) or a positive count')
  if requested == -1:
    distributed = (str(config.distributed.enabled).lower() == 'true'
                   or config.distributed.coordinator_address
                   or os.environ.get('JAX_COORDINATOR_ADDRESS'))
    requested = 1 if distributed else auto_count(
        (config.train.batch_size, config.eval.batch_size), usable_cores())
  return _apply(requested)
