"""Epoch time with synchronous checkpoints (three writes at an epoch end) vs one
asynchronous ``latest`` write with ``best`` / ``final`` as links.

Each "epoch" is ``--steps`` real train steps (``training.step``) of a config's model on
synthetic data, then the epoch-end saves: ``sync`` writes ``latest``, ``best`` and
``final`` one after another and waits for each (the loop before asynchronous saves);
``async`` starts ``latest`` in the background with ``best`` and ``final`` linked to it,
and the next epoch's steps run while it is written (its wait is at the next save). The
variants alternate inside one process (the machine is shared: only the ratio within one
run means much):

  python -m bench.checkpointing                       # small CNN, width 64
  python -m bench.checkpointing --model resnet18 --width 16 --steps 4 --repeats 3

Lines: {"kind": "epochs", variant, state_mb, median_epoch_s, times_s} per variant and
{"kind": "ratio", "sync_over_async": ...}.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

from sglr_jax.platforms.xla_cpu import host_devices

host_devices.one_per_core()  # before jax starts: one XLA device per core, as run.py

import jax  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from sglr_jax import checkpoints, data, experiment, mesh as mesh_lib  # noqa: E402
from sglr_jax.configs import cifar10_sglr, mnist_sglr  # noqa: E402
from sglr_jax.training import step as step_lib  # noqa: E402

_CONFIGS = {'small_cnn': (mnist_sglr, (28, 28, 1)), 'resnet18': (cifar10_sglr, (32, 32, 3))}


def _experiment(args):
  module, shape = _CONFIGS[args.model]
  c = module.get_config()
  c.model.width = args.width
  if args.model == 'resnet18':
    c.model.name, c.model.depth = 'resnet', (1, 1, 1, 1)
  c.train.batch_size = args.batch
  c.attack.steps = 1
  n = args.batch * args.steps
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, n).astype(np.int32)  # [N]
  ds = data.Dataset(
      name='synthetic', train_images=rng.integers(0, 256, (n, *shape), dtype=np.uint8),
      train_labels=labels, train_clean_labels=labels,
      test_images=rng.integers(0, 256, (args.batch, *shape), dtype=np.uint8),
      test_labels=rng.integers(0, 10, args.batch).astype(np.int32), num_classes=10)
  return experiment.build(c, ds=ds)


def _epochs(exp, st, train_step, variant: str, epochs: int, workdir: str) -> list[float]:
  times, step = [], 0
  for epoch in range(epochs):
    t0 = time.perf_counter()
    for batch in data.train_batches(exp.ds, exp.seed, epoch, exp.train.batch_size):
      st, _ = train_step(st, mesh_lib.to_global(batch, exp.mesh))
      step += 1
    jax.block_until_ready(st)
    if variant == 'sync':
      for kind, key in (('best', epoch + 1), ('latest', step), ('final', epoch + 1)):
        checkpoints.save(workdir, kind, st, key)
    else:
      checkpoints.save(workdir, 'latest', st, step, asynchronous=True,
                       also=(('best', epoch + 1), ('final', epoch + 1)))
    times.append(time.perf_counter() - t0)
  checkpoints.wait()
  return times


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--model', default='small_cnn', choices=sorted(_CONFIGS))
  p.add_argument('--width', type=int, default=64)
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--steps', type=int, default=4, help='train steps per epoch')
  p.add_argument('--epochs', type=int, default=3, help='epochs per measurement')
  p.add_argument('--repeats', type=int, default=3)
  args = p.parse_args()
  exp = _experiment(args)
  st = experiment.initial_state(exp)
  train_step = step_lib.make_train_step(exp.model, exp.step, exp.mesh, st, ops=exp.attack_ops)
  mb = sum(x.nbytes for x in jax.tree.leaves(st)) / 2**20
  times = {'sync': [], 'async': []}
  for r in range(args.repeats + 1):  # the first round warms up (compiles) and is dropped
    for variant in times:  # alternating
      workdir = tempfile.mkdtemp(prefix='sglr_ckpt_bench_')
      try:
        fresh = jax.tree.map(lambda x: x.copy(), st)  # the step donates its input state
        got = _epochs(exp, fresh, train_step, variant, args.epochs, workdir)
      finally:
        shutil.rmtree(workdir, ignore_errors=True)
      if r:
        times[variant] += got
  for variant, ts in times.items():
    print(json.dumps({'kind': 'epochs', 'variant': variant, 'model': args.model,
                      'width': args.width, 'state_mb': round(mb, 2), 'steps': args.steps,
                      'median_epoch_s': round(float(np.median(ts)), 4),
                      'times_s': [round(t, 4) for t in ts]}), flush=True)
  ratio = float(np.median(times['sync']) / np.median(times['async']))
  print(json.dumps({'kind': 'ratio', 'model': args.model, 'state_mb': round(mb, 2),
                    'sync_over_async': round(ratio, 3)}))


if __name__ == '__main__':
  main()
