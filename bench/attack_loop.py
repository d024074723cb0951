"""PGD loop variants on XLA:CPU: ``lax.fori_loop`` vs Python-unrolled vs ``attack_loop``.

Prints one JSON line per measurement. Variants run alternately inside one process
(the machine is shared, so only ratios within one run mean much):

  python bench/attack_loop.py                      # resnet18 b32 + small_cnn b128, PGD-10
  python bench/attack_loop.py --models resnet18 --repeats 5
  python bench/attack_loop.py --compile-steps 10,40 --models small_cnn,resnet18

Lines: {"kind": "run", model, batch, steps, variant, median_s, times_s, ratio_vs_fori}
and {"kind": "compile", model, steps, variant, lower_s, compile_s} and a
{"kind": "check", ...} line with the largest difference between variants' results.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sglr_jax.attacks import losses
from sglr_jax.models import create_model
from sglr_jax.platforms.xla_cpu import parts
from sglr_jax.platforms.xla_cpu.canonical_loop import attack_loop

_SHAPES = {'resnet18': (32, 32, 3), 'small_cnn': (28, 28, 1)}


def _fori(body, init, steps):
  return lax.fori_loop(0, steps, body, init)


def _unrolled(body, init, steps):
  for i in range(steps):
    init = body(i, init)
  return init


def _fixed(body, init, steps):
  return attack_loop(body, init, steps)


def _fixed_nohoist(body, init, steps):
  return attack_loop(body, init, steps, hoist=False)


VARIANTS = {'fori_loop': _fori, 'unrolled': _unrolled, 'attack_loop': _fixed,
            'attack_loop_nohoist': _fixed_nohoist}


def make_pgd(model, loop, steps, eps=8 / 255, step_size=2 / 255):
  """A plain L-inf PGD (random start) whose loop is ``loop(body, init, steps)``."""
  def pgd(variables, x, y, key):
    def logits_fn(z):
      return model.apply(variables, z, train=False)

    def loss(z):
      return jnp.sum(losses.cross_entropy(logits_fn(z), y))

    def body(_, z):
      g = jax.grad(loss)(z)
      z = z + step_size * jnp.sign(g)
      return jnp.clip(jnp.clip(z, x - eps, x + eps), 0.0, 1.0)

    z0 = jnp.clip(x + jax.random.uniform(key, x.shape, minval=-eps, maxval=eps), 0.0, 1.0)
    return loop(body, z0, steps)
  return jax.jit(pgd)


def setup(name, batch):
  model = create_model(name, 10, **parts.model_parts(name))  # the model a CPU run builds
  shape = _SHAPES[name]
  k0, k1, k2 = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.uniform(k1, (batch,) + shape)
  y = jax.random.randint(k2, (batch,), 0, 10)
  variables = model.init(k0, x[:2], train=False)
  return model, variables, x, y


def emit(**kw):
  print(json.dumps(kw), flush=True)


def bench_run(name, batch, steps, repeats, variants):
  model, variables, x, y = setup(name, batch)
  key = jax.random.PRNGKey(1)
  fns = {v: make_pgd(model, VARIANTS[v], steps) for v in variants}
  outs = {}
  for v, fn in fns.items():
    t = time.perf_counter()
    outs[v] = np.asarray(fn(variables, x, y, key))
    emit(kind='first_call', model=name, batch=batch, steps=steps, variant=v,
         seconds=round(time.perf_counter() - t, 3))
  # Sign steps amplify float differences (different conv algorithms) into whole
  # step_size moves at pixels whose gradient is ~0: report how many differ.
  for r in variants[:2]:
    ref = outs[r]
    emit(kind='check', model=name, reference=r,
         max_abs_diff={v: float(np.abs(o - ref).max()) for v, o in outs.items()},
         frac_diff={v: float(np.mean(np.abs(o - ref) > 1e-6)) for v, o in outs.items()})
  # Wall time and process CPU time (all threads): on a shared, oversubscribed
  # machine the CPU seconds our process burns are the steadier measure of work.
  times = {v: [] for v in variants}
  cpu = {v: [] for v in variants}
  for _ in range(repeats):
    for v, fn in fns.items():  # alternate variants within each repeat
      t, c = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn(variables, x, y, key))
      times[v].append(time.perf_counter() - t)
      cpu[v].append(time.process_time() - c)
  base = np.median(times['fori_loop']) if 'fori_loop' in times else None
  cbase = np.median(cpu['fori_loop']) if 'fori_loop' in cpu else None
  for v in variants:
    med, cmed = float(np.median(times[v])), float(np.median(cpu[v]))
    emit(kind='run', model=name, batch=batch, steps=steps, variant=v,
         median_s=round(med, 3), times_s=[round(t, 3) for t in times[v]],
         median_cpu_s=round(cmed, 3), cpu_s=[round(t, 3) for t in cpu[v]],
         speedup_vs_fori=round(base / med, 2) if base else None,
         cpu_speedup_vs_fori=round(cbase / cmed, 2) if cbase else None)


def bench_compile(name, batch, steps_list, variants):
  model, variables, x, y = setup(name, batch)
  key = jax.random.PRNGKey(1)
  # Warm-up (not reported): the first compile in a process pays one-off costs.
  make_pgd(model, VARIANTS['fori_loop'], 1).lower(variables, x, y, key).compile()
  for steps in steps_list:
    for v in variants:
      fn = make_pgd(model, VARIANTS[v], steps)
      t = time.perf_counter()
      lowered = fn.lower(variables, x, y, key)
      t1 = time.perf_counter()
      lowered.compile()
      t2 = time.perf_counter()
      emit(kind='compile', model=name, batch=batch, steps=steps, variant=v,
           lower_s=round(t1 - t, 3), compile_s=round(t2 - t1, 3))


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--models', default='resnet18,small_cnn')
  p.add_argument('--batch', default='resnet18=32,small_cnn=128')
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--variants', default='fori_loop,unrolled,attack_loop')
  p.add_argument('--compile-steps', default='10,40',
                 help='comma list; empty to skip the compile-time lines')
  p.add_argument('--compile-variants', default='fori_loop,unrolled,attack_loop')
  p.add_argument('--no-run', action='store_true')
  a = p.parse_args()
  batches = dict(kv.split('=') for kv in a.batch.split(','))
  variants = a.variants.split(',')
  emit(kind='env', jax=jax.__version__, backend=jax.default_backend(),
       cpus=os.cpu_count(), xla_flags=os.environ.get('XLA_FLAGS', ''))
  for name in a.models.split(','):
    b = int(batches.get(name, 32))
    if not a.no_run:
      bench_run(name, b, a.steps, a.repeats, variants)
    if a.compile_steps:
      bench_compile(name, b, [int(s) for s in a.compile_steps.split(',')],
                    a.compile_variants.split(','))


if __name__ == '__main__':
  main()
