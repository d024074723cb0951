"""Our AutoAttack against the reference (``pyautoattack``) on a trained workdir's model.

Both sides attack the same function: the reference gets the JAX model through
``bench.attacks.jax_backed_torch_model`` (forward = jitted logits, backward = jax.vjp),
with the same weights, test points and eps. Each attack is run alone (every point
attacked) and then the standard ensemble; randomness differs (torch's stream vs ours),
so agreement is within a tolerance, not bit for bit. One JSON line per comparison:

  {"workdir", "checkpoint", "attack", "n", "norm", "eps", "ours", "reference", "diff_pp",
   "ours_s", "reference_s"}

``ours`` / ``reference`` are robust accuracies (fractions; for 'standard' the cumulative
accuracy after each attack), ``diff_pp`` the largest |ours - reference| in percentage
points. Ours runs with the experiment's attack ops (those of its platform). Needs
``torch`` and ``pyautoattack`` (benchmark-only dependencies):

  python -m bench.aa_agreement --workdir runs/mnist_sglr --n 1000
  python -m bench.aa_agreement --workdir runs/mnist_l2_sglr --norm L2 --n 500

``--norm`` / ``--eps`` default to the workdir's ``eval.norm`` / ``eval.eps``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from sglr_jax.platforms.xla_cpu import host_devices  # imports no jax

if __name__ == '__main__':
  host_devices.one_per_core()  # both sides on all cores, batches split (as run.py does)

import jax  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top

from bench import attacks as bench  # noqa: E402  pylint: disable=g-import-not-at-top
from sglr_jax import experiment  # noqa: E402  pylint: disable=g-import-not-at-top
from sglr_jax import mesh as mesh_lib  # noqa: E402  pylint: disable=g-import-not-at-top
from sglr_jax.attacks import autoattack as aa  # noqa: E402  pylint: disable=g-import-not-at-top


def load_model(workdir: str, kind: str):
  """``(logits_fn, x [N,H,W,C] in [0,1], y, eps, epoch, sharding, attack ops, norm)``
  of a trained workdir's checkpoint (eps and norm: its ``eval`` section)."""
  config = experiment.load_workdir_config(workdir)
  config.parallel.num_devices = 0
  exp = experiment.build(config)
  st, epoch = experiment.restore(exp, workdir, kind)
  variables = experiment.variables_of(st)
  logits_fn = lambda z: exp.model.apply(variables, z, train=False)
  x = np.asarray(exp.ds.test_images, np.float32) / 255.0
  return (logits_fn, x, np.asarray(exp.ds.test_labels, np.int32), float(exp.eval.eps),
          int(epoch), mesh_lib.batch_sharding(exp.mesh), exp.attack_ops, str(exp.eval.norm))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True)
  p.add_argument('--checkpoint', default='final', choices=('best', 'final'))
  p.add_argument('--n', type=int, default=1000, help='first N test points')
  p.add_argument('--batch-size', type=int, default=500)
  p.add_argument('--attacks', default='apgd-ce,apgd-t,fab-t,square,standard',
                 help="comma list of single attacks and/or 'standard' (the ensemble)")
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--norm', default='', choices=('', 'Linf', 'L2'),
                 help="'': the workdir's eval.norm")
  p.add_argument('--eps', type=float, default=0.0, help="0: the workdir's eval.eps")
  a = p.parse_args(argv)
  if not bench.reference_available():
    sys.exit('error: needs torch and pyautoattack: '
             'pip install torch==2.13.0 pyautoattack==0.2.0 --no-deps')
  logits_fn, x, y, eps, epoch, sharding, ops, norm = load_model(a.workdir, a.checkpoint)
  x, y = x[:a.n], y[:a.n]
  eps, norm = a.eps or eps, a.norm or norm
  cfg = aa.AutoAttackConfig(norm=norm)
  net = bench.jax_backed_torch_model(logits_fn, sharding=sharding)
  for attack in a.attacks.split(','):
    names = aa.STANDARD_ATTACKS if attack == 'standard' else (attack,)
    start = time.perf_counter()
    res = aa.run_autoattack(logits_fn, x, y, eps, key=jax.random.key(a.seed),
                            batch_size=a.batch_size, attacks=names, config=cfg,
                            progress=False, sharding=sharding, ops=ops)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    _, ref = bench.run_reference(net, x, y, eps, attacks=names, batch_size=a.batch_size,
                                 seed=a.seed, norm=norm)
    ref_s = time.perf_counter() - start
    ours = dict(res['robust_acc_after'])
    print(json.dumps(dict(
        workdir=a.workdir, checkpoint=f'{a.checkpoint} (epoch {epoch})', attack=attack,
        n=len(y), norm=norm, eps=eps, clean=res['clean_acc'], ours=ours, reference=ref,
        diff_pp=round(100 * max(abs(ours[k] - ref[k]) for k in ours), 2),
        ours_s=round(ours_s, 1), reference_s=round(ref_s, 1))), flush=True)


if __name__ == '__main__':
  main()
