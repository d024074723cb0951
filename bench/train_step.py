"""Throughput of the PGD-10 AT step and of AT + SGLR, AT + AWP and AT + SWA, and
compile time vs PGD steps.

  python -m bench.train_step               # small CNN b128 and ResNet-18 b32
  python -m bench.train_step --quick       # tiny sizes, a smoke run

Prints one JSON line per measurement: model, batch, objective, pgd_steps, img_s,
compile_s. The variants are timed alternately in the same run (rounds), so a busy
machine slows all alike; the ratio line gives each one's time over AT's (AWP: one more
forward-backward pass; SWA, averaging after every step here: one pass over the weights).
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from sglr_jax import data, experiment, mesh as mesh_lib
from sglr_jax.configs import default
from sglr_jax.training import step as step_lib


# The timed variants: objective label -> config fields on top of PGD-AT.
VARIANTS = {
    'at': {},
    'at+sglr': {'sglr.enabled': True},
    'at+awp': {'objective.awp_gamma': 5e-3},
    'at+swa': {'train.swa_start_epoch': 0, 'train.swa_every_steps': 1},
}


def make(model_name, batch, sglr, pgd_steps, width=0, image_shape=(32, 32, 3), k=10,
         fields=None):
  """One device, synthetic data of 4 batches, the platform's parts (as a run gets them).

  ``fields``: dotted config fields to set (a variant of ``VARIANTS``)."""
  c = default.get_config()
  c.model.name = model_name
  c.model.width = width
  c.attack.steps = pgd_steps
  c.sglr.enabled = sglr
  c.sglr.start_epoch = 0
  c.train.batch_size = batch
  c.parallel.num_devices = 1
  for key, value in (fields or {}).items():
    section, name = key.split('.')
    c[section][name] = value
  n = batch * 4
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n,) + image_shape, dtype=np.uint8)
  labels = rng.integers(0, k, n).astype(np.int32)
  ds = data.Dataset('synthetic', k, images, labels, labels, images[:1], labels[:1])
  exp = experiment.build(c, ds=ds)
  st = experiment.initial_state(exp)
  step = step_lib.make_train_step(exp.model, exp.step, exp.mesh, st, ops=exp.attack_ops)
  batches = [mesh_lib.to_global(b, exp.mesh) for b in data.train_batches(ds, 0, 0, batch)]
  return step, st, batches


def compile_seconds(step, st, batch):
  t = time.perf_counter()
  step.lower(st, batch).compile()
  return time.perf_counter() - t


def timed(step, st, batches, iters):
  st, m = step(st, batches[0])  # warm
  jax.block_until_ready(m)
  t = time.perf_counter()
  for i in range(iters):
    st, m = step(st, batches[i % len(batches)])
  jax.block_until_ready(m)
  return (time.perf_counter() - t) / iters, st


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--quick', action='store_true')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--iters', type=int, default=3)
  args = p.parse_args()
  cases = [('small_cnn', 128, 0, (28, 28, 1)), ('resnet18', 32, 0, (32, 32, 3))]
  if args.quick:
    cases = [('small_cnn', 32, 8, (28, 28, 1)), ('resnet18', 8, 8, (32, 32, 3))]
  for name, batch, width, shape in cases:
    built = {}
    for label, fields in VARIANTS.items():
      step, st, batches = make(name, batch, False, 10, width, shape, fields=fields)
      cs = compile_seconds(step, st, batches[0])
      built[label] = [step, st, batches, cs, []]
    for _ in range(args.rounds):
      for label in VARIANTS:
        step, st, batches, _, times = built[label]
        dt, built[label][1] = timed(step, st, batches, args.iters)
        times.append(dt)
    for label in VARIANTS:
      _, _, _, cs, times = built[label]
      print(json.dumps({'model': name, 'batch': batch, 'objective': label,
                        'pgd_steps': 10, 'img_s': round(batch / float(np.median(times)), 2),
                        'compile_s': round(cs, 2)}), flush=True)
    median = {label: float(np.median(built[label][4])) for label in VARIANTS}
    ratios = {f'{label.split("+")[1]}_over_at_time': round(median[label] / median['at'], 4)
              for label in VARIANTS if label != 'at'}
    print(json.dumps({'model': name, 'batch': batch, **ratios}), flush=True)
    for steps in (10, 40):
      step, st, batches = make(name, batch, True, steps, width, shape)
      print(json.dumps({'model': name, 'batch': batch, 'objective': 'at+sglr',
                        'pgd_steps': steps, 'img_s': None,
                        'compile_s': round(compile_seconds(step, st, batches[0]), 2)}), flush=True)


if __name__ == '__main__':
  main()
