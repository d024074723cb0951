"""What the paper's CIFAR runs cost on this machine's accelerator (or CPU), fp32 and bf16.

  python -m bench.accelerator                           # ResNet-18 and WRN-34-10, batch 128
  python -m bench.accelerator --models resnet18 --steps 3 --skip-autoattack --peak-tflops 0.5
  python -m bench.accelerator --tiny                    # everything tiny: a smoke run

For each model and compute dtype (``--dtypes``), built from the library's own pieces
(``experiment.build`` on the paper's config with a synthetic CIFAR-shaped dataset, then
``experiment.initial_state`` and ``training.step.make_train_step``; bf16 is the same
model with ``dtype=bfloat16``), prints one JSON line per measurement:

* ``train_step``: the PGD-10 AT + SGLR step on a global batch over all local devices:
  images/s, achieved TFLOP/s, its share of the devices' peak, and the projected time of
  200 epochs of CIFAR-10 (50,000 images; training steps only, per-epoch evaluation not
  included).
* ``eval_pgd20``: the evaluation step (clean + PGD-20 logits, ``evaluation.predict``).
* ``autoattack``: standard AutoAttack on ``--autoattack-n`` points: ``attack_s`` is the
  attacks' own time, ``setup_s`` the rest (compiling, clean predictions, sanity checks).
  The model is untrained, so its own predictions serve as labels (clean accuracy 100%)
  and ``robust_acc_after`` says how much work each attack had left: a trained robust
  model keeps more points alive, so its AutoAttack takes longer.

FLOPs: XLA's cost analysis of the compiled program, unless it is unavailable or counts
fewer than half the FLOPs of the convolutions and matmuls counted from the program's
jaxpr with loop trip counts (XLA's analysis may count a loop body once); the line says
which (``flops_source``) and carries both. Times exclude compilation and warm-up steps
and wait on ``block_until_ready``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import math
import os
import re
import sys
import time

# --tiny is a smoke run whose time goes to compiling (AutoAttack's programs above all):
# XLA's unoptimised backend compiles several times faster. Set before jax starts.
_O0 = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
if '--tiny' in sys.argv[1:] and 'xla_backend_optimization_level' not in os.environ.get(
    'XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _O0).strip()

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from sglr_jax import data, experiment, mesh as mesh_lib
from sglr_jax.attacks import autoattack
from sglr_jax.evaluation import predict as predict_lib
from sglr_jax.training import step as step_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

CONFIGS = {'resnet18': 'sglr_jax.configs.cifar10_sglr',
           'wrn34_10': 'sglr_jax.configs.cifar10_wrn34_sglr'}
# --tiny: (model name, width, depth) standing in for each model.
TINY_MODELS = {'resnet18': ('resnet', 4, (1, 1, 1, 1)), 'wrn34_10': ('wide_resnet', 1, (10,))}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
CIFAR_TRAIN, EPOCHS = 50_000, 200

# Dense (no sparsity) peak TFLOP/s per device as JAX sees it, from the vendors' data
# sheets: NVIDIA H100 Tensor Core GPU, H200 Tensor Core GPU, A100 Tensor Core GPU and
# L4 Tensor Core GPU data sheets; Google Cloud TPU v4, v5e and v5p documentation.
# 'float32' is what a float32 matmul runs at by default: TF32 tensor cores on these GPUs
# (XLA allows TF32 for float32 convolutions and matmuls), and one bf16 pass on a TPU's
# MXU (JAX's default matmul precision there), so the bf16 figure. First match wins.
PEAKS = (  # (device_kind pattern, name, bf16, float32)
    (r'h200 nvl', 'H200 NVL', 835.5, 417.5),
    (r'h200', 'H200 SXM', 989.4, 494.7),
    (r'h100.*(pcie)', 'H100 PCIe', 756.0, 378.0),
    (r'h100.*nvl', 'H100 NVL', 835.5, 417.5),
    (r'h100', 'H100 SXM', 989.4, 494.7),
    (r'a100', 'A100', 312.0, 156.0),
    (r'\bl4\b', 'L4', 121.0, 60.0),
    (r'tpu v4', 'TPU v4', 275.0, 275.0),
    (r'tpu v5 ?(lite|e)', 'TPU v5e', 197.0, 197.0),
    (r'tpu v5p?$', 'TPU v5p', 459.0, 459.0),
)


def peak_tflops(device_kind: str, dtype: str, override: float):
  """``(per-device peak, source)``; ``override`` (--peak-tflops) wins; None if unknown."""
  if override:
    return override, '--peak-tflops'
  for pattern, name, bf16, fp32 in PEAKS:
    if re.search(pattern, device_kind.lower()):
      return (bf16 if dtype == 'bfloat16' else fp32), f'data sheet: {name}'
  return None, f'unknown device {device_kind!r}: pass --peak-tflops'


# ------------------------------------------------------------------ FLOPs

def _conv_flops(eqn) -> float:
  out = eqn.outvars[0].aval.shape
  rhs = eqn.invars[1].aval.shape
  spec = eqn.params['dimension_numbers'].rhs_spec  # (out feat, in feat, spatial...)
  taps = math.prod(rhs[d] for d in spec[2:]) * rhs[spec[1]]
  # An input gradient of a strided conv is a conv over a dilated input: skip the zeros.
  return 2.0 * math.prod(out) * taps / math.prod(eqn.params['lhs_dilation'])


def _dot_flops(eqn) -> float:
  (lhs_contract, _), _ = eqn.params['dimension_numbers']
  lhs = eqn.invars[0].aval.shape
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)


def counted_flops(jaxpr, scale: float = 1.0) -> float:
  """FLOPs of the convolutions and matmuls of ``jaxpr``: scans times their length,
  shard_map bodies times the mesh size (a while loop's body counts once)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      total += scale * _conv_flops(eqn)
    elif name == 'dot_general':
      total += scale * _dot_flops(eqn)
    inner = scale * {'scan': eqn.params.get('length', 1),
                     'shard_map': getattr(eqn.params.get('mesh'), 'size', 1)}.get(name, 1)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += counted_flops(sub, inner)
  return total


def compile_timed(jitted, *args):
  """``(compiled, seconds)``: the ahead-of-time compiled ``jitted`` for ``args``."""
  t = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - t


def program_flops(jitted, compiled, *args):
  """``(flops per call, source, xla flops, counted flops)`` of ``jitted(*args)``."""
  counted = counted_flops(jax.make_jaxpr(jitted)(*args).jaxpr)
  xla = None
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla = float(cost['flops']) if cost and cost.get('flops', 0) > 0 else None
  except Exception:  # pylint: disable=broad-except  (a backend without cost analysis)
    pass
  if xla is not None and xla >= 0.5 * counted:
    return xla, 'xla_cost_analysis', xla, counted
  why = 'unavailable' if xla is None else 'counts loop bodies once'
  return counted, f'counted_from_jaxpr (xla cost analysis {why})', xla, counted


# ------------------------------------------------------------------ the pieces

def build(model: str, args):
  """The paper's experiment for ``model`` on synthetic CIFAR-shaped data."""
  c = importlib.import_module(CONFIGS[model]).get_config()
  c.train.batch_size = args.batch
  c.eval.batch_size = args.batch
  c.parallel.num_devices = 0  # all devices
  c.sglr.start_epoch = 0  # the SGLR refinement runs from the first step
  if args.tiny:
    c.model.name, c.model.width, c.model.depth = TINY_MODELS[model]
  n = args.batch * 4
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  ds = data.Dataset('synthetic', 10, images, labels, labels, images[:args.batch],
                    labels[:args.batch])
  return experiment.build(c, ds=ds)


def timed(fn, state, batches, warmup: int, steps: int):
  """Seconds per call of ``fn(state, batch) -> (state, out)`` after ``warmup`` calls."""
  for i in range(warmup):
    state, out = fn(state, batches[i % len(batches)])
  jax.block_until_ready((state, out))
  t = time.perf_counter()
  for i in range(steps):
    state, out = fn(state, batches[i % len(batches)])
  jax.block_until_ready((state, out))
  return (time.perf_counter() - t) / steps, state


def throughput(kind, seconds, images, flops, peak, extra=None) -> dict:
  tflops = flops / seconds / 1e12
  n_dev = jax.local_device_count()
  line = {'measurement': kind, 'images_per_s': round(images / seconds, 3),
          'seconds_per_step': round(seconds, 5), 'flops_per_step': flops,
          'tflops': round(tflops, 4),
          'peak_share': None if peak is None else round(tflops / (peak * n_dev), 5)}
  return {**line, **(extra or {})}


def measure(model: str, dtype: str, exp, args):
  """The JSON lines of one model and dtype."""
  kind = jax.devices()[0].device_kind
  peak, peak_source = peak_tflops(kind, dtype, args.peak_tflops)
  m = exp.model.clone(dtype=DTYPES[dtype])
  common = {'bench': 'accelerator', 'model': model, 'arch': exp.config.model.name,
            'width': exp.config.model.width, 'depth': list(exp.config.model.depth),
            'dtype': dtype, 'backend': jax.default_backend(), 'device_kind': kind,
            'devices': jax.local_device_count(), 'batch': args.batch, 'tiny': args.tiny,
            'peak_tflops_per_device': peak, 'peak_source': peak_source,
            'date': datetime.date.today().isoformat()}
  emit = lambda line: print(json.dumps({**common, **line}), flush=True)

  st = experiment.initial_state(dataclasses.replace(exp, model=m))
  step = step_lib.make_train_step(m, exp.step, exp.mesh, st, ops=exp.attack_ops)
  batches = [mesh_lib.to_global(b, exp.mesh)
             for b in data.train_batches(exp.ds, 0, 0, args.batch)]
  compiled, compile_s = compile_timed(step, st, batches[0])
  flops, source, xla, counted = program_flops(step, compiled, st, batches[0])
  seconds, st = timed(compiled, st, batches, args.warmup, args.steps)
  hours = EPOCHS * (CIFAR_TRAIN // args.batch) * seconds / 3600
  emit(throughput('train_step', seconds, args.batch, flops, peak, {
      'objective': 'pgd10_at+sglr', 'compile_s': round(compile_s, 2), 'flops_source': source,
      'flops_xla': xla, 'flops_counted': counted, 'projected_200_epochs_hours':
      round(hours, 3), 'projection': f'{EPOCHS} x {CIFAR_TRAIN // args.batch} steps, '
      'training only (no per-epoch evaluation)'}))

  variables = experiment.variables_of(st)
  ev = exp.eval
  eval_step = predict_lib.make_eval_step(m, exp.mesh, eps=ev.eps, step_size=ev.step_size,
                                         steps=20, ops=exp.attack_ops)
  key = jax.random.key(0)
  compiled, compile_s = compile_timed(eval_step, variables, batches[0], key)
  flops, source, xla, counted = program_flops(eval_step, compiled, variables, batches[0], key)
  seconds, _ = timed(lambda v, b: (v, compiled(v, b, key)), variables, batches,
                     args.warmup, args.steps)
  emit(throughput('eval_pgd20', seconds, args.batch, flops, peak, {
      'compile_s': round(compile_s, 2), 'flops_source': source, 'flops_xla': xla,
      'flops_counted': counted}))

  if not args.skip_autoattack:
    emit(autoattack_line(m, variables, exp, args))


def autoattack_line(model, variables, exp, args) -> dict:
  n = args.autoattack_n
  rng = np.random.default_rng(1)
  x = rng.random((n, 32, 32, 3), dtype=np.float32)  # [N, H, W, C] in [0, 1]
  logits_fn = lambda v, z: model.apply(v, z, train=False)
  sharding = NamedSharding(exp.mesh, P(mesh_lib.AXIS))
  batch = min(args.autoattack_batch, -(-n // exp.mesh.size) * exp.mesh.size)
  y = autoattack.predict(logits_fn, x, batch, sharding, variables)  # its own predictions
  budget = 'smoke' if args.tiny else 'standard'
  t = time.perf_counter()
  out = autoattack.run_autoattack(
      logits_fn, x, y, exp.eval.eps, key=jax.random.key(0), batch_size=batch,
      config=autoattack.BUDGETS[budget], progress=False, sharding=sharding,
      variables=variables, ops=exp.attack_ops)
  total = time.perf_counter() - t
  attack_s = sum(out['seconds'].values())
  return {'measurement': 'autoattack', 'budget': budget, 'points': n, 'aa_batch': batch,
          'attack_s': round(attack_s, 3), 'setup_s': round(total - attack_s, 3),
          'seconds_per_attack': {k: round(v, 3) for k, v in out['seconds'].items()},
          'robust_acc_after': out['robust_acc_after'],
          'labels': 'the untrained model\'s own predictions (clean accuracy 1.0)'}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--models', default='resnet18,wrn34_10')
  p.add_argument('--dtypes', default='float32,bfloat16')
  for flag, default, text in (('--batch', 128, 'global, over all local devices'),
                              ('--steps', 20, 'timed steps'),
                              ('--warmup', 2, 'untimed steps first'),
                              ('--autoattack-n', 1000, 'AutoAttack points'),
                              ('--autoattack-batch', 500, 'AutoAttack batch')):
    p.add_argument(flag, type=int, default=default, help=text)
  p.add_argument('--peak-tflops', type=float, default=0.0,
                 help='per-device peak TFLOP/s for CPU or a device not in the table')
  p.add_argument('--skip-autoattack', action='store_true')
  p.add_argument('--tiny', action='store_true',
                 help='tiny models, batch 16, 2 steps, AutoAttack smoke budget on 16 points')
  args = p.parse_args(argv)
  if args.tiny:
    args.batch, args.steps, args.warmup, args.autoattack_n = 16, 2, 1, 16
  for model in args.models.split(','):
    if model not in CONFIGS:
      p.error(f'--models: {model!r} is unknown; allowed: {", ".join(CONFIGS)}')
    exp = build(model, args)
    for dtype in args.dtypes.split(','):
      if dtype not in DTYPES:
        p.error(f'--dtypes: {dtype!r} is unknown; allowed: {", ".join(DTYPES)}')
      measure(model, dtype, exp, args)


if __name__ == '__main__':
  main()
