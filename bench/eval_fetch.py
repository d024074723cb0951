"""The evaluation pass: logits fetched to the host per batch (the former loop) vs once.

``evaluation.predict.predict`` keeps each batch's logits on the devices and fetches the
whole pass at the end; the former loop copied the clean and the adversarial logits of
every batch to the host right after dispatching it, so the host waited for each batch
before preparing the next. Both run alternately inside one process (the machine is
shared: only the ratio within one run means much), on the devices ``run.py`` would use:

  python -m bench.eval_fetch                       # small CNN, clean pass and PGD-20
  python -m bench.eval_fetch --model resnet18 --width 8 --pgd-steps 0,5 --repeats 5

Lines: {"kind": "pass", model, batch, examples, pgd_steps, variant, median_s, times_s}
and {"kind": "ratio", ..., "per_batch_over_once": median per-batch / median once}, and
a {"kind": "check", ...} line: both variants give the same logits.
"""
from __future__ import annotations

import argparse
import json
import time

from sglr_jax.platforms.xla_cpu import host_devices

host_devices.one_per_core()  # before jax starts: one XLA device per core, as run.py

import jax  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from jax.experimental import multihost_utils  # noqa: E402  pylint: disable=g-import-not-at-top

from sglr_jax import data, experiment, mesh as mesh_lib, models  # noqa: E402
from sglr_jax.evaluation import predict  # noqa: E402  pylint: disable=g-import-not-at-top

_SHAPES = {'small_cnn': (28, 28, 1, 10), 'resnet18': (32, 32, 3, 10)}


def per_batch_predict(eval_step, variables, images, labels, batch_size, mesh, key):
  """The former loop: both logits of every batch copied to the host at once."""
  clean, adv = [], []
  for batch in data.eval_batches(images, labels, batch_size, jax.process_index(),
                                 jax.process_count()):
    batch.pop('mask')
    c, a = eval_step(variables, mesh_lib.to_global(batch, mesh), key)
    clean.append(_host(c))
    adv.append(_host(a))
  n = len(labels)
  return np.concatenate(clean)[:n], np.concatenate(adv)[:n]


def _host(x):
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


VARIANTS = {'per_batch': per_batch_predict, 'once': predict.predict}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--model', default='small_cnn', choices=sorted(_SHAPES))
  p.add_argument('--width', type=int, default=16)
  p.add_argument('--examples', type=int, default=2000)
  p.add_argument('--batch', type=int, default=200)
  p.add_argument('--pgd-steps', default='0,20', help='comma-separated; 0 = the clean pass')
  p.add_argument('--repeats', type=int, default=5)
  args = p.parse_args()

  h, w, c, k = _SHAPES[args.model]
  mesh = mesh_lib.make_mesh(0)
  parts = experiment.platform_parts(args.model)
  depth = {'resnet18': {'depth': (1, 1, 1, 1)}}.get(args.model, {})
  model = models.create_model('resnet' if depth else args.model, k, width=args.width,
                              bn_axis_name=mesh_lib.AXIS, **depth, **parts.model_parts)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.examples, h, w, c), dtype=np.uint8)  # [M, H, W, C]
  labels = rng.integers(0, k, args.examples).astype(np.int32)  # [M]
  variables = model.init(jax.random.key(0), np.zeros((1, h, w, c), np.float32), train=False)
  variables = jax.device_put(variables, mesh_lib.replicated(mesh))
  batch = mesh_lib.eval_batch_size(args.batch, mesh)
  key = jax.random.PRNGKey(0)
  for steps in (int(s) for s in args.pgd_steps.split(',')):
    step = predict.make_eval_step(model, mesh, eps=8 / 255, step_size=2 / 255, steps=steps,
                                  ops=parts.attack_ops)
    run = {name: (lambda fn=fn: fn(step, variables, images, labels, batch, mesh, key))
           for name, fn in VARIANTS.items()}
    outs = {name: f() for name, f in run.items()}  # compile and warm up both
    diff = max(float(np.abs(outs['once'][i] - outs['per_batch'][i]).max()) for i in (0, 1))
    times = {name: [] for name in run}
    for _ in range(args.repeats):
      for name, f in run.items():  # alternating
        t0 = time.perf_counter()
        f()
        times[name].append(time.perf_counter() - t0)
    common = {'model': args.model, 'batch': batch, 'examples': args.examples,
              'pgd_steps': steps, 'devices': mesh.size}
    for name, ts in times.items():
      print(json.dumps({'kind': 'pass', **common, 'variant': name,
                        'median_s': round(float(np.median(ts)), 4),
                        'times_s': [round(t, 4) for t in ts]}), flush=True)
    ratio = float(np.median(times['per_batch']) / np.median(times['once']))
    print(json.dumps({'kind': 'ratio', **common, 'per_batch_over_once': round(ratio, 3)}))
    print(json.dumps({'kind': 'check', **common, 'max_abs_logit_diff': diff}))


if __name__ == '__main__':
  main()
