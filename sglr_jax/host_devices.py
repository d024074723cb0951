"""Split a CPU host into several XLA devices, one per core (set before jax starts).

Why. XLA:CPU runs one program on one device and keeps little more than one core busy
on these models (measured: 1.1-1.3 cores of 2 for the small CNN's forward and input
gradient). Declared as N host devices, the ('data',) mesh gives each core its own
slice of every batch: the same SPMD program as on N accelerators, BatchNorm statistics
and gradients averaged over the mesh, so the numbers are those of one device up to
float summation order. Only the CPU platform is affected: on a GPU/TPU host the extra
CPU devices exist but are not used.

Also here, for the same reason (XLA_FLAGS is read once, when jax starts): which library
runs the convolutions on XLA:CPU (``cpu_convs``). This jaxlib hands convolutions and
matmuls to YNNPACK by default; for the ResNet family XLA's own convolutions are faster
here (``python bench/vs_torch.py --model resnet18 --mode at --devices 2``: batch 32,
5.27-5.42 img/s with XLA's convolutions vs 4.67-5.01 with YNNPACK's; batch 128 1.33-1.52x
PyTorch vs 1.10x), while for the small CNN in its Madry form YNNPACK is faster (batch
128: 184 vs 149 img/s) and for the default small CNN the two are within noise. So
``auto`` takes XLA's convolutions for ``XLA_CONV_MODELS`` only; matmuls stay with
YNNPACK either way.

Nothing here imports jax: ``configure`` must run before it is imported.
"""
from __future__ import annotations

import math
import os
import sys

FLAG = '--xla_force_host_platform_device_count'
MAX_AUTO = 8
YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
YNN_DOTS_ONLY = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'
XLA_CONV_MODELS = ('resnet18', 'resnet34', 'resnet50', 'preact_resnet18', 'wrn34_10')
CPU_CONVS = ('auto', 'ynnpack', 'xla')
MEASURED_JAXLIB = '0.10.'  # the flag is experimental: other versions keep XLA's default


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


def _jaxlib_version() -> str:
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version('jaxlib')
  except Exception:  # pylint: disable=broad-except
    return ''


def set_cpu_convs(choice: str, model_name: str) -> str:
  """Sets XLA_FLAGS so that XLA:CPU runs convolutions itself (``'xla'``) or leaves them
  to YNNPACK (``'ynnpack'``, XLA's default); ``'auto'``: ``'xla'`` for
  ``XLA_CONV_MODELS``. Returns the library in force: ``'xla'``, ``'ynnpack'`` or
  ``'XLA_FLAGS'`` (it sets the YNNPACK flag itself; left as it is). Changes nothing once
  jax is imported, or for a jaxlib other than the one measured."""
  if choice not in CPU_CONVS:
    raise ValueError(f'parallel.cpu_convs={choice!r}: one of {", ".join(CPU_CONVS)}')
  flags = os.environ.get('XLA_FLAGS', '')
  if YNN_FLAG in flags:
    return 'XLA_FLAGS'
  if choice == 'auto':
    choice = 'xla' if model_name in XLA_CONV_MODELS else 'ynnpack'
  if (choice == 'ynnpack' or 'jax' in sys.modules
      or not _jaxlib_version().startswith(MEASURED_JAXLIB)):
    return 'ynnpack'
  os.environ['XLA_FLAGS'] = f'{flags} {YNN_FLAG}={YNN_DOTS_ONLY}'.strip()
  return 'xla'


def configure(requested: int, config) -> int:
  """Sets XLA_FLAGS for ``requested`` host devices (-1 = ``auto_count``; 1 = leave XLA's
  default) and returns the count in force. Leaves everything as it is when XLA_FLAGS
  already sets a count, when jax is already imported, or for a multi-process run."""
  if requested == 0 or requested < -1:
    raise ValueError(f'--cpu_devices={requested}: -1 (auto) or a positive count')
  set_cpu_convs(str(config.parallel.get('cpu_convs', 'auto')), str(config.model.name))
  if requested == -1:
    distributed = (str(config.distributed.enabled).lower() == 'true'
                   or config.distributed.coordinator_address
                   or os.environ.get('JAX_COORDINATOR_ADDRESS'))
    requested = 1 if distributed else auto_count(
        (config.train.batch_size, config.eval.batch_size), usable_cores())
  return _apply(requested)
