"""Throughput of APGD-CE and of the standard AutoAttack, ours (JAX) beside the reference.

The reference is ``pyautoattack`` (``fra31/auto-attack`` on PyPI) running a PyTorch port
of the same Flax model with the same weights on the same points; it is measured when
``torch`` and ``pyautoattack`` import (they are optional, never in requirements.txt).
Ours and the reference alternate, and every line of output is one JSON measurement:

  {"model", "attack", "ours_img_s", "reference_img_s", "ratio", ...}

``ratio`` is ours / reference (> 1: ours is faster). Compilation is excluded
(``compile_attacks`` compiles every program ahead of time) and reported as
``ours_compile_s``; the reference's own start-up checks (a few forward passes) are
included, as a user pays them. Ours runs with the model parts and attack ops the
experiment builder would choose on this backend (``experiment.platform_parts``).

  python -m bench.attacks --quick              # small sizes
  python -m bench.attacks --models resnet18 --attacks apgd-ce --n 64 --batch-size 64

Weights are random (He-normal, BatchNorm statistics calibrated on the points) and labels
are the model's own clean predictions, so every point is attacked; ``--eps`` sets how
many survive (see EPS below).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from sglr_jax.platforms.xla_cpu import host_devices  # imports no jax

if __name__ == '__main__':
  host_devices.one_per_core()  # ours as run.py runs it: one XLA device per core

import jax  # noqa: E402  pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top

from sglr_jax import mesh as mesh_lib  # noqa: E402  pylint: disable=g-import-not-at-top
from sglr_jax import models  # noqa: E402  pylint: disable=g-import-not-at-top
from sglr_jax.attacks import autoattack as aa  # noqa: E402  pylint: disable=g-import-not-at-top

INPUT_SHAPES = {'small_cnn': (28, 28, 1), 'resnet18': (32, 32, 3)}


def numpy_init(model, shape, seed=0):
  """He-normal conv/dense weights, BatchNorm at identity, drawn with numpy: flax's jitted
  init compiles one threefry kernel per parameter, seconds on a 2-core CPU (the attack
  tests use it too)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path[-1].key
    if name == 'kernel':
      return jnp.asarray(rng.normal(size=s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1])),
                         jnp.float32)
    return jnp.full(s.shape, 1.0 if name in ('scale', 'var') else 0.0, jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def calibrate_batch_norm(model, variables, x):
  """Sets BatchNorm's running statistics to those of the batch ``x`` (one train-mode
  pass), so a randomly initialised network has normalised activations and logits of a
  sensible size instead of ones that grow with depth."""
  _, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, x)
  momentum = 0.9  # sglr_jax.models' BatchNorm: new = m * old + (1 - m) * batch
  stats = jax.tree.map(lambda new, old: (new - momentum * old) / (1 - momentum),
                       upd['batch_stats'], variables['batch_stats'])
  return {'params': variables['params'], 'batch_stats': stats}


def reference_available() -> bool:
  try:
    import pyautoattack  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


# ------------------------------------------------------------- PyTorch side (optional)

def torch_model(name: str, model, variables):
  """A PyTorch ``nn.Module`` (NCHW) computing the same logits as the Flax model."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  params, stats = variables['params'], variables['batch_stats']
  t = lambda a: torch.from_numpy(np.array(a, np.float32))

  def conv(p):  # HWIO -> OIHW
    return t(np.transpose(np.asarray(p['kernel']), (3, 2, 0, 1)))

  def bn(p, s):
    return (t(p['scale']), t(p['bias']), t(s['mean']), t(s['var']))

  def apply_bn(x, b):
    scale, bias, mean, var = b
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=1e-5)

  def same_pad(x, k, stride):  # Flax 'SAME': extra padding at the end
    pads = []
    for size in (x.shape[3], x.shape[2]):
      out = -(-size // stride)
      total = max((out - 1) * stride + k - size, 0)
      pads += [total // 2, total - total // 2]
    return F.pad(x, pads)

  if name == 'small_cnn':
    convs = [(conv(params[f'Conv_{i}']), bn(params[f'BatchNorm_{i}'], stats[f'BatchNorm_{i}']))
             for i in range(len(model.features))]
    dense = [(t(np.asarray(params[f'Dense_{i}']['kernel']).T), t(params[f'Dense_{i}']['bias']))
             for i in range(2)]

    class Net(nn.Module):
      def forward(self, x):
        for w, b in convs:
          x = F.conv2d(same_pad(x, model.kernel, model.strides), w, stride=model.strides)
          x = F.relu(apply_bn(x, b))
          if model.use_pool:
            x = F.max_pool2d(x, 2, 2)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # flatten in NHWC order
        x = F.relu(F.linear(x, *dense[0]))
        return F.linear(x, *dense[1])
    return Net().eval()

  if name == 'resnet18':
    stem = (conv(params['Conv_0']), bn(params['BatchNorm_0'], stats['BatchNorm_0']))
    blocks = []
    for i in range(sum(model.stage_sizes)):
      p, s = params[f'BasicBlock_{i}'], stats[f'BasicBlock_{i}']
      stage = np.searchsorted(np.cumsum(model.stage_sizes), i, side='right')
      first = i == int(np.sum(model.stage_sizes[:stage]))
      stride = 2 if stage > 0 and first else 1
      convs = [(conv(p[f'Conv_{j}']), bn(p[f'BatchNorm_{j}'], s[f'BatchNorm_{j}']))
               for j in range(3) if f'Conv_{j}' in p]
      blocks.append((stride, convs))
    head = (t(np.asarray(params['Dense_0']['kernel']).T), t(params['Dense_0']['bias']))

    class Net(nn.Module):
      def forward(self, x):
        x = F.relu(apply_bn(F.conv2d(x, stem[0], padding=1), stem[1]))
        for stride, convs in blocks:
          y = F.relu(apply_bn(F.conv2d(x, convs[0][0], stride=stride, padding=1), convs[0][1]))
          y = apply_bn(F.conv2d(y, convs[1][0], padding=1), convs[1][1])
          if len(convs) == 3:
            x = apply_bn(F.conv2d(x, convs[2][0], stride=stride), convs[2][1])
          x = F.relu(x + y)
        return F.linear(x.mean((2, 3)), *head)
    return Net().eval()
  raise ValueError(f'no PyTorch port of {name!r}')


def jax_backed_torch_model(logits_fn, bucket: int = 8, compiler_options=None, sharding=None):
  """A PyTorch module whose forward is the jitted JAX ``logits_fn`` (through numpy) and
  whose backward is ``jax.vjp``: the reference can attack the JAX model itself.

  Batches are padded to a power of two (at least ``bucket``) so the reference's
  shrinking subsets compile a handful of shapes, not one per size. ``sharding``: where
  the padded batches go (e.g. split over a mesh of host devices, as ours runs).
  """
  import torch  # pylint: disable=g-import-not-at-top

  fwd = jax.jit(logits_fn, compiler_options=compiler_options)
  vjp = jax.jit(lambda x, g: jax.vjp(logits_fn, x)[1](g)[0],
                compiler_options=compiler_options)

  def pad(a):
    n, size = a.shape[0], bucket
    while size < n:
      size *= 2
    a = np.concatenate([a, np.zeros((size - n,) + a.shape[1:], a.dtype)])
    return (a if sharding is None else jax.device_put(a, sharding)), n

  def to_nhwc(x):
    return np.ascontiguousarray(x.detach().cpu().numpy().transpose(0, 2, 3, 1), np.float32)

  class Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # pylint: disable=arguments-differ
      ctx.save_for_backward(x)
      xp, n = pad(to_nhwc(x))
      return torch.from_numpy(np.array(fwd(xp))[:n])

    @staticmethod
    def backward(ctx, g):  # pylint: disable=arguments-differ
      x, = ctx.saved_tensors
      xp, n = pad(to_nhwc(x))
      gp, _ = pad(g.detach().cpu().numpy().astype(np.float32))
      return torch.from_numpy(np.array(vjp(xp, gp))[:n].transpose(0, 3, 1, 2).copy())

  class Wrapped(torch.nn.Module):
    def forward(self, x):
      return Fn.apply(x)
  return Wrapped().eval()


def run_reference(torch_net, x, y, eps, *, attacks, batch_size, seed=0, norm='Linf'):
  """The reference's standard version (or a subset of its attacks, same parameters)
  in ``norm`` ('Linf' or 'L2').

  Returns ``(x_adv [N, H, W, C], robust accuracy after each attack)``.
  """
  import logging  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from pyautoattack import AutoAttack  # pylint: disable=g-import-not-at-top

  adversary = AutoAttack(torch_net, norm=norm, eps=eps, version='standard', seed=seed,
                         device='cpu')
  adversary.attacks_to_run = list(attacks)
  lines = []

  class Grab(logging.Handler):
    def emit(self, record):
      lines.append(record.getMessage())
  log = logging.getLogger('auto-attack')
  handler, level = Grab(), log.level
  log.addHandler(handler)
  log.setLevel(logging.DEBUG)
  try:
    xt = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))
    with torch.no_grad():
      x_adv, _ = adversary.run_standard_evaluation(
          xt, torch.from_numpy(np.asarray(y)).long(), batch_size=batch_size)
  finally:
    log.removeHandler(handler)
    log.setLevel(level)
  accs = {}
  for line in lines:
    m = re.match(r'robust accuracy after (\S+): ([\d.]+)%', line)
    if m:
      accs[m.group(1).lower()] = float(m.group(2)) / 100
  accs = {a: accs.get(a, 0.0) for a in attacks}  # the reference stops once none is robust
  return x_adv.numpy().transpose(0, 2, 3, 1), accs


# ------------------------------------------------------------------------------ bench

def bench_model(name, *, n, batch_size, eps, attacks, repeats, reference, seed=0,
                norm='Linf'):
  # imported here: it brings in the data and training modules, which tests do not need
  from sglr_jax import experiment  # pylint: disable=g-import-not-at-top
  parts = experiment.platform_parts(name)
  model = models.create_model(name, 10, **parts.model_parts)
  shape = INPUT_SHAPES[name]
  x = np.random.default_rng(seed).uniform(size=(n,) + shape).astype(np.float32)
  variables = calibrate_batch_norm(model, numpy_init(model, (1,) + shape, seed), x[:64])
  logits_fn = lambda z: model.apply(variables, z, train=False)
  y = aa.predict(logits_fn, x, batch_size)
  mesh = mesh_lib.make_mesh(0)
  sharding = mesh_lib.batch_sharding(mesh) if batch_size % mesh.size == 0 else None
  net, logit_diff = None, None
  if reference:
    import torch  # pylint: disable=g-import-not-at-top
    net = torch_model(name, model, variables)
    with torch.no_grad():
      ref_logits = net(torch.from_numpy(x[:batch_size].transpose(0, 3, 1, 2).copy())).numpy()
    logit_diff = float(np.abs(ref_logits - np.asarray(jax.jit(logits_fn)(x[:batch_size]))).max())

  for attack in attacks:
    names = aa.STANDARD_ATTACKS if attack.startswith('autoattack') else (attack,)
    cfg = aa.AutoAttackConfig(early_stop=attack.endswith('-early'), norm=norm)
    start = time.perf_counter()
    aa.compile_attacks(logits_fn, shape, batch_size=batch_size, attacks=names, config=cfg,
                       sharding=sharding, ops=parts.attack_ops)
    compile_s = time.perf_counter() - start
    ours, ref, accs_ours, accs_ref = [], [], None, None
    for r in range(repeats):
      start = time.perf_counter()
      res = aa.run_autoattack(logits_fn, x, y, eps, key=jax.random.key(r),
                              batch_size=batch_size, attacks=names, config=cfg,
                              progress=False, sharding=sharding, ops=parts.attack_ops)
      ours.append(time.perf_counter() - start)
      accs_ours = dict(res['robust_acc_after'])
      if reference:
        start = time.perf_counter()
        _, accs_ref = run_reference(net, x, y, eps, attacks=names, batch_size=batch_size,
                                    seed=r, norm=norm)
        ref.append(time.perf_counter() - start)
    line = dict(model=name, attack=attack, ours_img_s=n / float(np.median(ours)),
                reference_img_s=n / float(np.median(ref)) if ref else None)
    line['ratio'] = line['ours_img_s'] / line['reference_img_s'] if ref else None
    line.update(n=n, batch_size=batch_size, norm=norm, eps=eps, repeats=repeats,
                ours_devices=mesh.size if sharding is not None else 1,
                ours_compile_s=round(compile_s, 2),
                ours_s=[round(s, 2) for s in ours], reference_s=[round(s, 2) for s in ref],
                robust_acc_ours=accs_ours, robust_acc_reference=accs_ref,
                reference_logits_max_abs_diff=logit_diff,
                backend=jax.default_backend(), jax=jax.__version__)
    print(json.dumps(line), flush=True)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true', help='small sizes (minutes, not hours)')
  p.add_argument('--models', default='small_cnn,resnet18')
  p.add_argument('--attacks', default='apgd-ce,autoattack',
                 help="comma list of 'apgd-ce', 'apgd-t', 'fab-t', 'square', 'autoattack' "
                      "(the standard ensemble) or 'autoattack-early' (ours with early_stop; "
                      "the reference line is its standard run)")
  p.add_argument('--n', type=int, default=0, help='points per model (0: by size)')
  p.add_argument('--batch-size', type=int, default=0,
                 help='0: by size (with --n: min(n, 250))')
  p.add_argument('--norm', default='Linf', choices=('Linf', 'L2'))
  p.add_argument('--eps', type=float, default=0.0,
                 help='0: per-model default of the norm (see EPS)')
  p.add_argument('--repeats', type=int, default=1)
  p.add_argument('--no-reference', action='store_true')
  a = p.parse_args(argv)
  reference = reference_available() and not a.no_reference
  if not reference and not a.no_reference:
    print('# torch/pyautoattack not importable: measuring ours only', file=sys.stderr)
  # (points, batch size): several batches, so the robust set is regathered as in real use
  sizes = {'small_cnn': (200, 50) if a.quick else (1000, 250),
           'resnet18': (8, 8) if a.quick else (64, 32)}
  for name in a.models.split(','):
    n = a.n or sizes[name][0]
    bs = a.batch_size or (sizes[name][1] if not a.n else min(a.n, 250))
    bench_model(name, n=n, batch_size=bs, eps=a.eps or EPS[a.norm][name],
                attacks=a.attacks.split(','), repeats=a.repeats,
                reference=reference, norm=a.norm)


# Random weights (BatchNorm calibrated) and self-predicted labels. small_cnn at 1/255:
# some points survive APGD-CE, so every attack of the ensemble has work. resnet18 at
# 1/255: APGD-CE breaks every point (as on a non-robust trained model), so its
# 'autoattack' line is APGD-CE plus the ensemble's bookkeeping; at a smaller eps more
# survive, but the other attacks then take far longer on a CPU. L2: about the L2 size
# of a corner of that Linf ball on each model's input.
EPS = {'Linf': {'small_cnn': 1 / 255, 'resnet18': 1 / 255},
       'L2': {'small_cnn': 0.1, 'resnet18': 0.2}}

if __name__ == '__main__':
  main()
