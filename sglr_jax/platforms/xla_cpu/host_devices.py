"""Split a CPU host into several XLA devices, one per core (set before jax starts).

Why. XLA:CPU runs one program on one device and keeps little more than one core busy
on these models (docs/PERFORMANCE.md). Declared as N host devices, the ('data',) mesh
gives each core its own slice of every batch: the same SPMD program as on N
accelerators, BatchNorm statistics and gradients averaged over the mesh, so the numbers
are those of one device up to float summation order. Only the CPU platform is
affected: on a GPU/TPU host the extra CPU devices exist but are not used.

Also here, for the same reason (XLA_FLAGS is read once, when jax starts): which library
runs the convolutions on XLA:CPU (``cpu_convs``). The pinned jaxlib hands convolutions
and matmuls to YNNPACK by default; for the ResNet family XLA's own convolutions are
faster, while for the small CNN YNNPACK is as fast or faster (measured with
``bench/vs_torch.py``; figures in docs/PERFORMANCE.md). So ``auto`` takes XLA's
convolutions for ``XLA_CONV_MODELS`` only; matmuls stay with YNNPACK either way. The
YNNPACK flag is experimental: ``tests/test_host_devices.py`` starts jax with it, so a
jaxlib that drops it fails there instead of at a user's start.

Only on CPU hosts (``cpu_host``): an XLA build for GPU / TPU that does not know an XLA:CPU
flag aborts at start, and the extra host devices are useless there. Which platform jax
will pick is decided from what it reads itself, without importing it: ``JAX_PLATFORMS``
when set (its first entry), else the accelerator plugins that are installed (the
``jax_plugins`` entry points and namespace packages jax loads, and ``libtpu``). A host
with a plugin but no usable accelerator then runs on CPU without these flags: slower, the
same results.

Nothing here imports jax (or the config): ``configure`` must run before jax is
imported, and takes plain values.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import pkgutil
import sys

FLAG = '--xla_force_host_platform_device_count'
MAX_AUTO = 8
YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
YNN_DOTS_ONLY = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'
# The ResNet family: presets and the generic names behind them.
XLA_CONV_MODELS = ('resnet18', 'resnet34', 'resnet50', 'preact_resnet18', 'wrn34_10',
                   'resnet', 'resnet_bottleneck', 'preact_resnet', 'wide_resnet')
CPU_CONVS = ('auto', 'ynnpack', 'xla')


def accelerator_plugins() -> list[str]:
  """The installed PJRT plugins jax would load (names), found without importing jax:
  entry points of the ``jax_plugins`` group, modules of the ``jax_plugins`` namespace
  package (e.g. CUDA's), and ``libtpu``."""
  names = {e.name for e in importlib.metadata.entry_points(group='jax_plugins')}
  try:
    spec = importlib.util.find_spec('jax_plugins')
  except (ImportError, ValueError):
    spec = None
  if spec is not None and spec.submodule_search_locations:
    names |= {m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)}
  for module in ('libtpu',):
    try:
      if importlib.util.find_spec(module) is not None:
        names.add(module)
    except (ImportError, ValueError):
      pass
  return sorted(names)


def cpu_host(environ=None) -> bool:
  """Whether jax will run on XLA:CPU: ``JAX_PLATFORMS`` (or the older
  ``JAX_PLATFORM_NAME``) names ``cpu`` first, or it is unset and no accelerator plugin
  is installed."""
  env = os.environ if environ is None else environ
  platforms = (env.get('JAX_PLATFORMS') or env.get('JAX_PLATFORM_NAME') or '').strip().lower()
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  return not accelerator_plugins()


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
  most ``MAX_AUTO``) unless XLA_FLAGS sets a count, jax is already imported or the
  host is not a CPU host."""
  if not cpu_host():
    return 1
  return _apply(min(usable_cores(), MAX_AUTO))


def set_cpu_convs(choice: str, model_name: str) -> str:
  """Sets XLA_FLAGS so that XLA:CPU runs convolutions itself (``'xla'``) or leaves them
  to YNNPACK (``'ynnpack'``, XLA's default); ``'auto'``: ``'xla'`` for
  ``XLA_CONV_MODELS``. Returns the library in force: ``'xla'``, ``'ynnpack'`` or
  ``'XLA_FLAGS'`` (it sets the YNNPACK flag itself; left as it is), or ``''`` on a host
  that is not a CPU host. Changes nothing once jax is imported."""
  if choice not in CPU_CONVS:
    raise ValueError(f'parallel.cpu_convs={choice!r}: one of {", ".join(CPU_CONVS)}')
  if not cpu_host():
    return ''
  flags = os.environ.get('XLA_FLAGS', '')
  if YNN_FLAG in flags:
    return 'XLA_FLAGS'
  if choice == 'auto':
    choice = 'xla' if model_name in XLA_CONV_MODELS else 'ynnpack'
  if choice == 'ynnpack' or 'jax' in sys.modules:
    return 'ynnpack'
  os.environ['XLA_FLAGS'] = f'{flags} {YNN_FLAG}={YNN_DOTS_ONLY}'.strip()
  return 'xla'


def configure(requested: int, *, batch_sizes: tuple[int, ...], model_name: str,
              cpu_convs: str, distributed: bool) -> int:
  """Sets XLA_FLAGS for ``requested`` host devices and the conv library; returns the
  device count in force.

  Args:
    requested: -1 = ``auto_count`` over ``batch_sizes``; 1 = leave XLA's default.
    batch_sizes: every global batch size the run splits over the devices.
    model_name: picks the conv library when ``cpu_convs`` is ``'auto'``.
    cpu_convs: one of ``CPU_CONVS`` (``set_cpu_convs``).
    distributed: a multi-process run (``JAX_COORDINATOR_ADDRESS`` in the environment
      counts as one too): 'auto' then keeps one device per process.

  Leaves the device count as it is when XLA_FLAGS already sets one or when jax is
  already imported; sets no flag at all on a host that is not a CPU host (``cpu_host``),
  and returns 1 there.
  """
  if requested == 0 or requested < -1:
    raise ValueError(f'--cpu_devices={requested}: -1 (auto) or a positive count')
  if not cpu_host():
    return 1
  set_cpu_convs(cpu_convs, model_name)
  if requested == -1:
    distributed = distributed or bool(os.environ.get('JAX_COORDINATOR_ADDRESS'))
    requested = 1 if distributed else auto_count(batch_sizes, usable_cores())
  return _apply(requested)
