"""Is the accelerator starved? Input time per step vs step time, with and without prefetch.

  python -m bench.input_pipeline                  # the MNIST main job (configs/mnist_sglr.py)
  python -m bench.input_pipeline --cifar          # also CIFAR-shaped synthetic data
  python -m bench.input_pipeline --quick          # few steps, a smoke run

For each case it measures, per training step (medians over ``--rounds``, the two loops
alternated in each round so a busy machine slows both alike):

* ``input_s``: the host side alone: assembling the next host batch
  (``data.train_batches``) and placing it on the mesh (``mesh.to_global``), waited for.
* ``step_s``: the train step alone, on batches already on the devices.
* ``loop_s``: the training loop as it runs without prefetch (assemble, place, step).
* ``prefetch_loop_s``: the same loop over ``data.prefetch_to_mesh(..., size)``.

One JSON line per case with these and the ratios ``input_over_step`` (above 1: the
input alone is slower than the step), ``loop_over_step`` and ``prefetch_loop_over_step``
(1 means the input is hidden) and ``prefetch_speedup`` (``loop_s / prefetch_loop_s``).
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import time

import jax
import numpy as np

from sglr_jax import data, experiment, mesh as mesh_lib
from sglr_jax.training import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mnist_main_job(batch: int = 0):
  """configs/mnist_sglr.py on the packaged MNIST, SGLR refining (as in its late epochs)."""
  c = runpy.run_path(os.path.join(ROOT, 'configs', 'mnist_sglr.py'))['get_config']()
  c.sglr.start_epoch = 0
  if batch:
    c.train.batch_size = batch
  return c, None


def cifar_synthetic(batch: int, width: int, n: int):
  """The paper's CIFAR-10 config (ResNet-18, PGD-10 AT + SGLR) on random CIFAR-shaped data."""
  c = runpy.run_path(os.path.join(ROOT, 'configs', 'cifar10_sglr.py'))['get_config']()
  c.sglr.start_epoch = 0
  c.train.batch_size = batch
  c.model.width = width
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  return c, data.Dataset('synthetic', 10, images, labels, labels, images[:1], labels[:1])


def _batches(exp, epoch, steps):
  it = data.train_batches(exp.ds, exp.seed, epoch, exp.train.batch_size, jax.process_index(),
                          jax.process_count())
  for _, b in zip(range(steps), it):
    yield b


def time_input(exp, steps):
  t = time.perf_counter()
  for b in _batches(exp, 0, steps):
    jax.block_until_ready(mesh_lib.to_global(b, exp.mesh))
  return (time.perf_counter() - t) / steps


def time_step(step, st, placed):
  t = time.perf_counter()
  for b in placed:
    st, m = step(st, b)
  jax.block_until_ready(m)
  return (time.perf_counter() - t) / len(placed), st


def time_loop(step, st, exp, steps, prefetch_size):
  t = time.perf_counter()
  batches = _batches(exp, 1, steps)
  if prefetch_size:
    batches = data.prefetch_to_mesh(batches, exp.mesh, prefetch_size)
  else:
    batches = (mesh_lib.to_global(b, exp.mesh) for b in batches)
  for b in batches:
    st, m = step(st, b)
  jax.block_until_ready(m)
  return (time.perf_counter() - t) / steps, st


def measure(name, config, ds, steps, rounds, prefetch_size):
  exp = experiment.build(config, ds=ds) if ds is not None else experiment.build(config)
  steps = min(steps, exp.steps_per_epoch)
  st = experiment.initial_state(exp)
  step = step_lib.make_train_step(exp.model, exp.step, exp.mesh, st, ops=exp.attack_ops)
  placed = [mesh_lib.to_global(b, exp.mesh) for b in _batches(exp, 0, steps)]
  st, m = step(st, placed[0])  # compile and warm
  jax.block_until_ready(m)
  times = {'input_s': [], 'step_s': [], 'loop_s': [], 'prefetch_loop_s': []}
  for _ in range(rounds):
    times['input_s'].append(time_input(exp, steps))
    dt, st = time_step(step, st, placed)
    times['step_s'].append(dt)
    dt, st = time_loop(step, st, exp, steps, 0)
    times['loop_s'].append(dt)
    dt, st = time_loop(step, st, exp, steps, prefetch_size)
    times['prefetch_loop_s'].append(dt)
  med = {k: float(np.median(v)) for k, v in times.items()}
  out = {'case': name, 'model': exp.config.model.name, 'batch': exp.train.batch_size,
         'devices': exp.mesh.size, 'backend': jax.default_backend(), 'steps': steps,
         'rounds': rounds, 'prefetch_size': prefetch_size}
  out.update({k: round(v, 5) for k, v in med.items()})
  out['input_over_step'] = round(med['input_s'] / med['step_s'], 4)
  out['loop_over_step'] = round(med['loop_s'] / med['step_s'], 4)
  out['prefetch_loop_over_step'] = round(med['prefetch_loop_s'] / med['step_s'], 4)
  out['prefetch_speedup'] = round(med['loop_s'] / med['prefetch_loop_s'], 4)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--steps', type=int, default=20, help='steps per timed loop')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--prefetch', type=int, default=2, help='prefetch_to_mesh size')
  p.add_argument('--batch', type=int, default=0, help='MNIST batch (0: the config\'s)')
  p.add_argument('--cifar', action='store_true', help='also CIFAR-shaped synthetic data')
  p.add_argument('--cifar-batch', type=int, default=128)
  p.add_argument('--cifar-width', type=int, default=0, help='ResNet-18 width (0: its own)')
  p.add_argument('--quick', action='store_true', help='tiny sizes, a smoke run')
  args = p.parse_args(argv)
  if args.quick:
    args.steps, args.rounds = 3, 1
    args.batch, args.cifar_batch, args.cifar_width = args.batch or 32, 8, 4
  cases = [('mnist_main_job',) + mnist_main_job(args.batch)]
  if args.cifar:
    n = args.cifar_batch * (args.steps + 1)
    cases.append(('cifar_synthetic',) + cifar_synthetic(args.cifar_batch, args.cifar_width, n))
  for name, config, ds in cases:
    print(json.dumps(measure(name, config, ds, args.steps, args.rounds, args.prefetch)),
          flush=True)


if __name__ == '__main__':
  main()
