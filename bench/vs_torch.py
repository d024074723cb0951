"""Our step vs the same step written once in PyTorch (CPU), alternating in one run.

  python -m bench.vs_torch --model resnet18 --batch 32 --mode at
  python -m bench.vs_torch --model small_cnn --batch 128 --mode pgd20
  python -m bench.vs_torch --quick            # tiny smoke run

Modes (same shapes, random weights, synthetic data on both sides):
  at     PGD-10 (model in eval mode) then the AT + SGLR train step: train-mode forward on
         x', SGLR's extra clean forward (no grad), label-table update, soft-target CE
         backward, SGD momentum 0.9, weight decay 5e-4 (ours: ``training.step.make_train_step``).
  pgd20  evaluation only (inference mode): clean forward, PGD-20, forward on x'
         (ours: ``evaluation.predict.make_eval_step``).
  apgd   APGD-CE, 100 iterations, 1 restart, Linf (ours: ``attacks.apgd.apgd_attack``;
         torch: ``pyautoattack``/``autoattack`` ``APGDAttack``). Labels are each model's
         own clean predictions so both attack every point.

Other developers share the 2 cores: ``loadavg_1m`` is printed, and PyTorch's 2-thread
OpenMP suffers far more from a busy machine than XLA does, so compare under load with
``taskset -c 0 python -m bench.vs_torch --threads 1`` (one core each) as well.

Prints one JSON line: model, batch, mode, ours_img_s, torch_img_s, ratio (ours / torch),
plus ours_gflop_s and, given ``--peak-gflops`` (the machine's FP32 peak, measured or from
its data sheet), ours_peak_share. torch is an optional benchmark-only dependency.

Ours gets the parts a run gets on this platform (``experiment.platform_parts``: on
XLA:CPU the small CNN's conv / pool and the canonical-conv attack loop); ``--fast off``
(and the ``--ab`` side) builds the models with the plain ``nn.Conv`` / ``nn.max_pool``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _from_argv(argv, name: str, default: str) -> str:
  """``--devices``, ``--model`` and ``--cpu-convs`` act before jax is imported (XLA_FLAGS)."""
  for i, a in enumerate(argv):
    if a.startswith(name + '='):
      return a.split('=', 1)[1]
    if a == name and i + 1 < len(argv):
      return argv[i + 1]
  return default


from sglr_jax.platforms.xla_cpu import host_devices  # noqa: E402  (imports no jax)

DEFAULT_MODEL, DEFAULT_BATCH = 'resnet18', 32  # main()'s defaults too
DEVICES = int(_from_argv(sys.argv, '--devices', '-1'))
if DEVICES == -1:  # as run.py's --cpu_devices=-1: one per core when the batch splits evenly
  DEVICES = host_devices.auto_count((int(_from_argv(sys.argv, '--batch', str(DEFAULT_BATCH))),),
                                    host_devices.usable_cores())
if DEVICES > 1:
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={DEVICES}').strip()
CPU_CONVS = host_devices.set_cpu_convs(_from_argv(sys.argv, '--cpu-convs', 'auto'),
                                       _from_argv(sys.argv, '--model', DEFAULT_MODEL))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.torch_reference import EPS, K, STEP, image_shape, torch_runner  # noqa: E402
from sglr_jax import data, experiment, mesh as mesh_lib, models  # noqa: E402
from sglr_jax.configs import default  # noqa: E402
from sglr_jax.evaluation import predict  # noqa: E402
from sglr_jax.training import state as state_lib, step as step_lib  # noqa: E402

# ------------------------------------------------------------------------------ FLOPs

def forward_gflop(model_name: str, width: int = 0) -> float:
  """GFLOP (2 x MACs) of one forward per image, counted from the layer shapes."""
  if model_name == 'resnet18':
    if not width:
      return 1.111  # PERFORMANCE.md
    w = width
    macs = 32 * 32 * 3 * w * 9  # stem
    hw, cin = 32, w
    for i in range(4):
      c = w * 2**i
      for j in range(2):
        s = 2 if i > 0 and j == 0 else 1
        hw //= s
        macs += hw * hw * c * cin * 9 + hw * hw * c * c * 9
        if s != 1 or cin != c:
          macs += hw * hw * c * cin
        cin = c
    return 2 * (macs + cin * K) / 1e9
  # Madry's MNIST net: 5x5 conv 32 (28x28) + pool, 5x5 conv 64 (14x14) + pool, 1024, 10.
  f1, f2 = (32, 64) if not width else (width, width * 2)
  macs = 28 * 28 * f1 * 25 * 1 + 14 * 14 * f2 * 25 * f1 + 7 * 7 * f2 * 1024 + 1024 * K
  return 2 * macs / 1e9


def step_gflop(mode: str, fwd: float) -> float:
  """Per image: an attack iteration is forward + input gradient (2F); a train step's
  backward is 2F; SGLR's clean pass is F (PERFORMANCE.md: 26.66 for ResNet-18 AT)."""
  return {'at': 10 * 2 * fwd + 4 * fwd,    # PGD-10 + adv fwd/bwd + clean fwd
          'pgd20': 20 * 2 * fwd + 2 * fwd,  # PGD-20 + clean fwd + adv fwd
          'apgd': 100 * 2 * fwd + 3 * fwd}[mode]  # clean fwd + start grad + 100 iters


# ------------------------------------------------------------------------------- ours

def parts(name, fast):
  """The platform's parts (``fast``), or the plain model layers with the same attack ops."""
  got = experiment.platform_parts(name)
  return got if fast else got._replace(model_parts={})


def make_model(name, model_parts, width=0, bn_axis_name=None):
  if name == 'small_cnn':
    kw = dict(kernel=5, strides=1, use_pool=True, dense=1024, **model_parts)
    if width:
      kw['features'] = (width, 2 * width)
    return models.SmallCNN(num_classes=K, bn_axis_name=bn_axis_name, **kw)
  return models.create_model(name, K, width=width, bn_axis_name=bn_axis_name, **model_parts)


def ours_at(name, batch, width, fast):
  c = default.get_config()
  c.model.name = name
  c.attack.steps, c.attack.eps, c.attack.step_size = 10, EPS, STEP
  c.sglr.enabled = True
  c.train.batch_size = batch
  shape = image_shape(name)
  n = batch * 4
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
  labels = rng.integers(0, K, n).astype(np.int32)
  mesh = mesh_lib.make_mesh(DEVICES)
  p = parts(name, fast)
  model = make_model(name, p.model_parts, width, mesh_lib.AXIS)
  tx, _ = state_lib.create_optimizer(experiment.optim_params(c), experiment.schedule_params(c), 4)
  st = state_lib.create_train_state(model, tx, shape, labels, K, jax.random.PRNGKey(0),
                                    compiler_options=p.init_options)
  st = jax.device_put(st, mesh_lib.state_shardings(st, mesh, 'replicated'))
  step = step_lib.make_train_step(model, experiment.step_config(c, K), mesh, st,
                                  ops=p.attack_ops)
  ds = data.Dataset('synthetic', K, images, labels, labels, images[:1], labels[:1])
  batches = [mesh_lib.to_global(b, mesh) for b in data.train_batches(ds, 0, 0, batch)]
  box = {'st': st, 'i': 0}

  def run():
    box['st'], m = step(box['st'], batches[box['i'] % len(batches)])
    box['i'] += 1
    jax.block_until_ready(m)
  return run


def _ours_vars(name, batch, width, p):
  shape = image_shape(name)
  model = make_model(name, p.model_parts, width)
  variables = state_lib.init_variables(model, shape, jax.random.PRNGKey(0), p.init_options)
  rng = np.random.default_rng(0)
  x = rng.random((batch,) + shape, dtype=np.float32)
  return model, variables, x


def ours_pgd20(name, batch, width, fast):
  p = parts(name, fast)
  model, variables, x = _ours_vars(name, batch, width, p)
  mesh = mesh_lib.make_mesh(DEVICES)
  variables = jax.device_put(variables, mesh_lib.replicated(mesh))
  step = predict.make_eval_step(model, mesh, eps=EPS, step_size=STEP, steps=20,
                                ops=p.attack_ops)
  imgs = jnp.asarray(np.round(x * 255).astype(np.uint8))
  b = {'image': imgs, 'label': jnp.zeros(batch, jnp.int32),
       'index': jnp.arange(batch, dtype=jnp.int32)}
  b = mesh_lib.to_global(jax.tree.map(np.asarray, b), mesh)
  key = jax.random.PRNGKey(1)
  return lambda: jax.block_until_ready(step(variables, b, key))


def ours_apgd(name, batch, width, fast):
  try:
    from sglr_jax.attacks import apgd  # pylint: disable=g-import-not-at-top
    fn = apgd.apgd_attack
  except (ImportError, AttributeError) as e:
    return None, f'sglr_jax.attacks.apgd.apgd_attack unavailable: {e!r}'
  p = parts(name, fast)
  model, variables, x = _ours_vars(name, batch, width, p)
  mesh = mesh_lib.make_mesh(DEVICES)
  variables = jax.device_put(variables, mesh_lib.replicated(mesh))
  logits_fn = lambda z: model.apply(variables, z, train=False)
  x = jax.device_put(jnp.asarray(x), mesh_lib.batch_sharding(mesh))
  y = jnp.argmax(logits_fn(x), -1)
  f = jax.jit(lambda x, y, k: fn(logits_fn, x, y, eps=EPS, key=k, n_iter=100, n_restarts=1,
                                 ops=p.attack_ops))
  key = jax.random.PRNGKey(1)
  try:
    jax.block_until_ready(f(x, y, key))
  except Exception as e:  # pylint: disable=broad-except
    return None, f'sglr_jax apgd_attack failed: {e!r}'[:300]
  return (lambda: jax.block_until_ready(f(x, y, key))), None


# ------------------------------------------------------------------------------- main

def main():
  p = argparse.ArgumentParser()
  p.add_argument('--model', default=DEFAULT_MODEL, choices=('resnet18', 'small_cnn'))
  p.add_argument('--batch', type=int, default=DEFAULT_BATCH)
  p.add_argument('--mode', default='at', choices=('at', 'pgd20', 'apgd'))
  p.add_argument('--rounds', type=int, default=3, help='ours/torch alternations')
  p.add_argument('--iters', type=int, default=2, help='steps per side per round')
  p.add_argument('--width', type=int, default=0, help='0 = the real width')
  p.add_argument('--peak-gflops', type=float, default=0.0,
                 help="the machine's FP32 peak in GFLOP/s, for ours_peak_share (0: not printed)")
  p.add_argument('--quick', action='store_true', help='tiny widths/batch, 1 round')
  p.add_argument('--fast', default='auto', choices=('auto', 'on', 'off'),
                 help="the platform's conv / pool model parts (auto: as a run gets them)")
  p.add_argument('--threads', type=int, default=2,
                 help='torch threads; for a 1-core comparison run under `taskset -c 0` '
                      '(XLA sizes its pool by the allowed cores)')
  p.add_argument('--devices', type=int, default=-1,
                 help='ours on a (data,) mesh of N CPU devices (XLA_FLAGS '
                      '--xla_force_host_platform_device_count; -1: as run.py '
                      '--cpu_devices=-1, one per core when the batch splits evenly)')
  p.add_argument('--cpu-convs', default='auto', choices=host_devices.CPU_CONVS,
                 help="XLA:CPU convolutions: YNNPACK's or XLA's own (auto: as run.py "
                      'chooses for the model; sglr_jax/platforms/xla_cpu/host_devices.py)')
  p.add_argument('--ab', action='store_true',
                 help='also time ours with the fast paths off, alternating with the rest')
  args = p.parse_args()
  if args.quick:
    args.width = args.width or 8
    args.batch = min(args.batch, 8)
    args.rounds, args.iters = 1, 1
  out = {'model': args.model, 'batch': args.batch, 'mode': args.mode}
  if args.threads != 2 or len(os.sched_getaffinity(0)) != 2:
    out.update(torch_threads=args.threads, cores=len(os.sched_getaffinity(0)))
  if args.width:
    out['width'] = args.width
  if DEVICES > 1:
    out['devices'] = DEVICES
  out['cpu_convs'] = CPU_CONVS
  maker = {'at': ours_at, 'pgd20': ours_pgd20}.get(args.mode)

  def build(fast):
    """Builds and compiles ours with or without the platform's model parts."""
    if maker is not None:
      fn, why = maker(args.model, args.batch, args.width, fast), None
    else:
      fn, why = ours_apgd(args.model, args.batch, args.width, fast)
    if fn is not None:
      t = time.perf_counter()
      fn()  # compile + warm
      out[('ours_off' if fast is False else 'ours') + '_first_call_s'] = round(
          time.perf_counter() - t, 2)
    return fn, why

  fast = {'auto': True, 'on': True, 'off': False}[args.fast]
  ours, skip = build(fast)
  out['fast'] = fast and bool(experiment.platform_parts(args.model).model_parts)
  sides = [('ours', ours)]
  if args.ab and ours is not None:
    sides.append(('ours_off', build(False)[0]))
  theirs, tskip = torch_runner(args.mode, args.model, args.batch, args.width, args.threads)
  if ours is None or theirs is None:
    out['skipped'] = skip or tskip
    print(json.dumps(out), flush=True)
    return
  theirs()  # warm
  sides.append(('torch', theirs))
  times = {s: [] for s, _ in sides}
  for _ in range(args.rounds):
    for side, fn in sides:
      for _ in range(args.iters):
        t = time.perf_counter()
        fn()
        times[side].append(time.perf_counter() - t)
  med = {s: float(np.median(v)) for s, v in times.items()}
  gflop = step_gflop(args.mode, forward_gflop(args.model, args.width)) * args.batch
  out.update(ours_img_s=round(args.batch / med['ours'], 3),
             torch_img_s=round(args.batch / med['torch'], 3),
             ratio=round(med['torch'] / med['ours'], 3),
             ours_gflop_s=round(gflop / med['ours'], 1),
             gflop_per_img=round(gflop / args.batch, 3))
  if args.peak_gflops > 0:
    out['ours_peak_share'] = round(gflop / med['ours'] / args.peak_gflops, 3)
  out['loadavg_1m'] = round(os.getloadavg()[0], 2)  # other users of the 2 cores
  if 'ours_off' in med:
    out.update(ours_off_img_s=round(args.batch / med['ours_off'], 3),
               ratio_off=round(med['torch'] / med['ours_off'], 3),
               fast_speedup=round(med['ours_off'] / med['ours'], 3))
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  main()
