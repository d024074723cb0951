"""A subprocess entry point for the multi-process AutoAttack test.

  python tests/_aa_mp_worker.py SPEC.json

with the spec ``{"processes": P, "process_id": I, "port": PORT, "workdir": DIR,
"out": PATH, "interrupt": [ATTACK, STEP]}`` runs ``evaluation.autoattack`` on a fixed
affine model (``problem``) over all devices of all processes (P > 1: joined by
``jax.distributed`` on 127.0.0.1); the parent sets the device count
(``_mp_worker.start``; the imports here start no backend). With ``interrupt`` it
then runs a second checkpoint kind that stops at that boundary and runs it again
(resumed from its state file).
"""
from __future__ import annotations

import json
import sys

import jax
import numpy as np

import conftest  # noqa: F401  (the tests' XLA flags, compilation cache)
from sglr_jax import mesh as mesh_lib
from sglr_jax.attacks import autoattack as aa
from sglr_jax.attacks.autoattack import hosts
from sglr_jax.evaluation import autoattack

N, HW, K, BATCH, EPS = 40, 6, 10, 8, 0.04


class Affine:
  """A linear classifier with the ``apply`` of a Flax model (fixed random weights)."""

  def apply(self, variables, z, train=False, rngs=None):
    del train, rngs
    return z.reshape(z.shape[0], -1) @ variables['w'] + variables['b']


def problem():
  """Weights, uint8 images and labels (every fifth label wrong, the rest the model's)."""
  rng = np.random.default_rng(4)
  w = rng.normal(size=(HW * HW, K)).astype(np.float32)
  b = rng.normal(size=K).astype(np.float32) * 0.1
  images = rng.integers(0, 256, size=(N, HW, HW, 1), dtype=np.uint8)
  y = (images.reshape(N, -1).astype(np.float32) / 255.0 @ w + b).argmax(1)
  y[::5] = (y[::5] + 1) % K
  return {'w': w, 'b': b}, images, y


class Interrupt(Exception):
  pass


def run(spec):
  """``evaluation.autoattack.AutoAttack`` on ``problem`` over the mesh of all devices
  of all processes: kind 'best' uninterrupted; with ``interrupt``, kind 'final' stopped
  at that boundary (its state saved at every boundary) and run again. Every process
  writes what it got to ``out`` (``.p<process>.npz``)."""
  if spec['processes'] > 1:
    jax.distributed.initialize(f'127.0.0.1:{spec["port"]}', spec['processes'],
                               spec['process_id'])
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  hosts.BROADCAST_CHUNK = 4096  # a state file in several broadcasts
  place, split = hosts.place, []

  def counted_place(a, sharding):  # the batches that span the devices of all processes
    split.append(not sharding.is_fully_addressable and tuple(sharding.spec) == ('data',))
    return place(a, sharding)

  hosts.place = counted_place
  mesh = mesh_lib.make_mesh()
  params, images, labels = problem()
  variables = {k: hosts.place(v, mesh_lib.replicated(mesh)) for k, v in params.items()}
  calls, results, seen = [], [], []
  run_autoattack = aa.run_autoattack

  def recorded(*args, **kwargs):  # the ensemble's full result, and its boundaries
    calls.append(len(calls))
    res = run_autoattack(*args, **kwargs, hook=hook, state_every_s=0.0)
    results.append(res)
    return res

  stop = tuple(spec['interrupt']) if spec.get('interrupt') else None

  def hook(name, step):  # calls: 0 'best', 1 'final' (interrupted), 2 'final' again
    seen.append(f'{calls[-1]} {name} {step}')
    if (name, step) == stop and calls[-1] == 1:
      raise Interrupt

  aa.run_autoattack = recorded
  evaluator = autoattack.AutoAttack(
      Affine(), mesh, images, labels, eps=EPS, key=jax.random.PRNGKey(0),
      batch_size=BATCH, examples=0, budget='smoke', progress=False,
      workdir=spec['workdir'])
  metrics = [evaluator.run(variables, 'best')]
  if stop is not None:
    try:
      evaluator.run(variables, 'final')
      raise AssertionError(f'the run never reached {stop}')
    except Interrupt:
      pass
    metrics.append(evaluator.run(variables, 'final'))
  try:  # batches that do not split evenly over the devices
    run_autoattack(Affine().apply, images / 255.0, labels, EPS, key=jax.random.key(0),
                   batch_size=jax.device_count() + 2, variables=params, progress=False,
                   config=aa.BUDGETS['smoke'], sharding=evaluator.sharding)
    uneven = ''
  except ValueError as e:
    uneven = str(e)
  out = {'devices': np.asarray([jax.device_count(), jax.process_count(), sum(split)]),
         'uneven': np.asarray(uneven),
         'metrics': np.asarray(json.dumps(metrics)), 'seen': np.asarray(seen)}
  for i, res in enumerate(results):
    out.update({f'{i}/{k}': np.asarray(res[k]) for k in ('robust', 'x_adv', 'broken_by')})
  np.savez(f'{spec["out"]}.p{jax.process_index()}.npz', **out)


if __name__ == '__main__':
  with open(sys.argv[1]) as f:
    run(json.load(f))
