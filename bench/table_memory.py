"""Label-table memory per device, replicated vs row-sharded, and the train step time
of both layouts.

  python -m bench.table_memory                       # memory on 8 devices + step time on 4
  python -m bench.table_memory --skip-step-time      # memory only
  python -m bench.table_memory --alloc-limit-gb 0    # no allocation: shard shapes only

Runs on simulated CPU devices (``--xla_force_host_platform_device_count``, 8 unless
XLA_FLAGS already sets a count). One JSON line per figure:

  {"kind": "memory", "dataset", "devices", "layout", "bytes_per_device", "rows",
   "classes", "method"}

``method``: 'allocated' = the table was created with that sharding (as
``experiment.initial_state`` places it) and ``bytes_per_device`` is the largest
``shard.data.nbytes`` over its addressable shards (all devices share host RAM
here, so this is the bytes each device holds, not free memory); 'shard_shape' =
not allocated because the copies on all devices would exceed ``--alloc-limit-gb``
(ImageNet-1k replicated: 8 x 5.1 GB), and the figure is
``prod(sharding.shard_shape(shape)) * itemsize``, the same formula the allocated
cases are checked against. Rows are padded to a multiple of the device count
(``mesh.table_rows``).

  {"kind": "step_time", "devices", "layout", "median_s", "times_s", "ratio_vs_replicated",
   "paired_ratio_median", ...}

The train step (PGD-AT + SGLR, refinement on) on a synthetic CIFAR-100-sized
problem (50,000 x 100 table, 32x32x3 images), layouts alternating within one run.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import time

if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                             + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from sglr_jax import data, experiment, mesh as mesh_lib  # noqa: E402
from sglr_jax.configs import default  # noqa: E402
from sglr_jax.training import step as step_lib  # noqa: E402

DATASETS = {'cifar100': (50_000, 100), 'imagenet1k': (1_281_167, 1_000)}


def _emit(**kw):
  print(json.dumps(kw), flush=True)


def table_memory(devices: int, alloc_limit_gb: float):
  mesh = mesh_lib.make_mesh(devices)
  for name, (n, k) in DATASETS.items():
    rows = mesh_lib.table_rows(n, mesh)
    shape, dtype = (rows, k), jnp.dtype(jnp.float32)
    for layout in mesh_lib.TABLE_LAYOUTS:
      sharding = NamedSharding(mesh, P(mesh_lib.AXIS) if layout == 'sharded' else P())
      per_device = int(np.prod(sharding.shard_shape(shape))) * dtype.itemsize
      if per_device * devices <= alloc_limit_gb * 2**30:
        table = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()
        shard_bytes = [s.data.nbytes for s in table.addressable_shards]
        assert len(shard_bytes) == devices and len(set(shard_bytes)) == 1, shard_bytes
        assert shard_bytes[0] == per_device, (shard_bytes[0], per_device)
        measured, method = shard_bytes[0], 'allocated'
        table.delete()
      else:
        measured, method = per_device, 'shard_shape'
      _emit(kind='memory', dataset=name, devices=devices, layout=layout,
            bytes_per_device=measured, rows=rows, classes=k, method=method)


def _setup(devices: int, layout: str, batch: int, attack_steps: int, width: int):
  """An ``Experiment`` on synthetic CIFAR-100-sized data (the step does not care
  what the pixels are; the table has 50,000 x 100 entries)."""
  n, k = DATASETS['cifar100']
  c = default.get_config()
  c.data.name = 'cifar100'
  c.model.name, c.model.width = 'small_cnn', width
  c.sglr.enabled, c.sglr.start_epoch, c.sglr.table_sharding = True, 0, layout
  c.attack.steps = attack_steps
  c.train.batch_size = batch
  c.parallel.num_devices = devices
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, k, n).astype(np.int32)
  ds = data.Dataset('synthetic-cifar100', k, images, labels, labels, images[:batch],
                    labels[:batch])
  return experiment.build(c, ds=ds)


def step_time(devices: int, batch: int, attack_steps: int, width: int, repeats: int,
              steps_per_repeat: int):
  runs = {}
  for layout in mesh_lib.TABLE_LAYOUTS:
    s = _setup(devices, layout, batch, attack_steps, width)
    st = experiment.initial_state(s)
    step = step_lib.make_train_step(s.model, s.step, s.mesh, st, ops=s.attack_ops)
    batches = [mesh_lib.to_global(b, s.mesh) for b in
               itertools.islice(data.train_batches(s.ds, 0, 0, batch), steps_per_repeat)]
    for b in batches[:2]:  # compile and warm up
      st, m = step(st, b)
    jax.block_until_ready(st)
    runs[layout] = {'step': step, 'state': st, 'batches': batches, 'times': [],
                    'table_bytes': st.label_table.addressable_shards[0].data.nbytes}
  for _ in range(repeats):  # alternate the layouts: the host is shared
    for layout, r in runs.items():
      st = r['state']
      t0 = time.perf_counter()
      for b in r['batches']:
        st, _ = r['step'](st, b)
      jax.block_until_ready(st)
      r['times'].append((time.perf_counter() - t0) / len(r['batches']))
      r['state'] = st
  base = float(np.median(runs['replicated']['times']))
  for layout, r in runs.items():
    med = float(np.median(r['times']))
    # each repeat ran both layouts back to back: the ratio within a pair is less
    # exposed to the load of a shared host than the ratio of the medians
    paired = np.asarray(r['times']) / np.asarray(runs['replicated']['times'])
    _emit(kind='step_time', devices=devices, layout=layout, median_s=round(med, 5),
          times_s=[round(t, 5) for t in r['times']], ratio_vs_replicated=round(med / base, 4),
          paired_ratio_median=round(float(np.median(paired)), 4),
          batch=batch, attack_steps=attack_steps, model=f'small_cnn(width={width})',
          table=list(DATASETS['cifar100']), table_bytes_per_device=r['table_bytes'])


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--devices', type=int, default=8, help='devices for the memory figures')
  p.add_argument('--alloc-limit-gb', type=float, default=6.0,
                 help='allocate a layout when all its copies together fit in this')
  p.add_argument('--skip-step-time', action='store_true')
  p.add_argument('--step-devices', type=int, default=4)
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--attack-steps', type=int, default=10)
  p.add_argument('--width', type=int, default=32)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--steps-per-repeat', type=int, default=3)
  a = p.parse_args()
  table_memory(a.devices, a.alloc_limit_gb)
  if not a.skip_step_time:
    step_time(a.step_devices, a.batch, a.attack_steps, a.width, a.repeats, a.steps_per_repeat)


if __name__ == '__main__':
  main()
