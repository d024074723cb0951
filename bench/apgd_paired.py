"""Paired APGD-CE / APGD-T robust accuracy, ours minus the reference (``pyautoattack``).

Both sides attack the same trained model (the reference through
``bench.attacks.jax_backed_torch_model``: the same JAX forward and ``jax.vjp``), the same
test points and eps, with the standard version's parameters (100 iterations, 1 restart;
APGD-T: 9 target classes), each attack alone on every correctly classified point.

``--starts`` says where the random starts come from:

* ``own``: each side draws its own (ours: ``fold_in`` streams from ``--seed``; the
  reference: torch's generator seeded with ``--seed``, once per batch). What a user
  comparing the two sees; the difference then includes the luck of the draw, which
  does not shrink by pairing (different streams).
* ``shared``: the reference's runs start from ours' starts (its
  ``attack_single_run(x, y, x_init)``, in a loop that mirrors its ``perturb`` and
  ``run_standard_evaluation``: robust points regathered per run, targets from the clean
  logits, returned points re-evaluated). Only the algorithms and float rounding differ.

One JSON line per (seed, attack, starts), then one summary line per (attack, starts):

  {"workdir", "checkpoint", "attack", "starts", "seed", "n", "eps", "clean", "ours",
   "reference", "diff_pp", "ours_only_robust", "reference_only_robust", "ours_s",
   "reference_s"}
  {"summary": true, "attack", "starts", "seeds", "diff_pp": [...], "mean_pp", "sd_pp"}

``ours`` / ``reference`` are robust accuracies (fractions), ``diff_pp`` = 100 (ours -
reference): > 0 means ours left more points robust (is weaker). ``ours_only_robust``:
points only ours left robust. Needs ``torch`` and ``pyautoattack``:

  python -m bench.apgd_paired --workdir runs/main --seeds 0,1,2,3,4 --starts both

``--norm`` / ``--eps`` default to the workdir's ``eval.norm`` / ``eval.eps``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from sglr_jax.platforms.xla_cpu import host_devices  # imports no jax

if __name__ == '__main__':
  host_devices.one_per_core()  # as bench/aa_agreement.py and run.py

import jax  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top

from bench import attacks as bench  # noqa: E402  pylint: disable=g-import-not-at-top
from bench.aa_agreement import load_model  # noqa: E402  pylint: disable=g-import-not-at-top
from sglr_jax.attacks import apgd  # noqa: E402  pylint: disable=g-import-not-at-top
from sglr_jax.attacks import autoattack as aa  # noqa: E402  pylint: disable=g-import-not-at-top

ATTACKS = ('apgd-ce', 'apgd-t')


def ours_starts(seed: int, attack: str, eps: float, norm: str):
  """``starts(x, ids, run)``: the start ours' run ``run`` of ``attack`` draws for the
  points with indices ``ids`` (``run_autoattack``'s key derivation)."""
  akey = jax.random.fold_in(jax.random.key(seed), aa.ATTACKS.index(attack))
  draw = jax.jit(lambda x, ids, run: apgd.random_start(
      apgd.run_keys(akey, x.shape[0], ids, run), x, eps, norm, on_sphere=True))

  def starts(x, ids, run):
    return np.asarray(draw(np.asarray(x, np.float32), np.asarray(ids, np.int32), np.int32(run)))
  return starts


def reference_from_starts(net, x, y, robust, eps, attack, batch_size, starts,
                          cfg: aa.AutoAttackConfig):
  """The reference's attack on the points ``robust`` with its runs started at
  ``starts(x, ids, run)``; returns the robust flags after it (its re-evaluation)."""
  import torch  # pylint: disable=g-import-not-at-top
  from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted  # pylint: disable=g-import-not-at-top

  targeted = attack == 'apgd-t'
  if targeted:
    att = APGDAttack_targeted(net, n_iter=cfg.apgd_t_n_iter, norm=cfg.norm, eps=eps,
                              n_restarts=1, rho=cfg.rho, device='cpu',
                              n_target_classes=cfg.apgd_t_n_target_classes)
    n_runs = cfg.apgd_t_n_target_classes
  else:
    att = APGDAttack(net, n_iter=cfg.apgd_n_iter, norm=cfg.norm, eps=eps, n_restarts=1,
                     rho=cfg.rho, device='cpu', loss='ce')
    n_runs = 1
  nchw = lambda a: torch.from_numpy(np.array(np.asarray(a).transpose(0, 3, 1, 2)))
  robust = robust.copy()
  todo = np.flatnonzero(robust)
  with torch.no_grad():
    for start in range(0, len(todo), batch_size):
      ids = todo[start:start + batch_size]
      xb, yb = nchw(x[ids]), torch.from_numpy(np.array(y[ids])).long()
      att.init_hyperparam(xb)
      acc = (net(xb).max(1)[1] == yb).numpy()
      adv = xb.clone()
      for run in range(n_runs):
        ind = np.flatnonzero(acc)
        if not len(ind):
          break
        x_fool, y_fool = xb[ind], yb[ind]
        if targeted:
          att.y_target = net(x_fool).sort(dim=1)[1][:, -(run + 2)]
        _, acc_run, _, adv_run = att.attack_single_run(
            x_fool, y_fool, x_init=nchw(starts(x[ids[ind]], ids[ind], run)))
        fooled = ~acc_run.numpy().astype(bool)
        acc[ind[fooled]] = False
        adv[ind[fooled]] = adv_run[fooled]
      wrong = (net(adv).max(1)[1] != yb).numpy()
      robust[ids[wrong]] = False
  return robust


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True)
  p.add_argument('--checkpoint', default='final', choices=('best', 'final'))
  p.add_argument('--eps', type=float, default=0.0, help="0: the workdir's eval.eps")
  p.add_argument('--norm', default='', choices=('', 'Linf', 'L2'),
                 help="'': the workdir's eval.norm")
  p.add_argument('--n', type=int, default=1000, help='first N test points')
  p.add_argument('--seeds', default='0,1,2,3,4', help='comma list')
  p.add_argument('--attacks', default=','.join(ATTACKS), help='comma list of ' + ', '.join(ATTACKS))
  p.add_argument('--starts', default='own', choices=('own', 'shared', 'both'))
  p.add_argument('--batch-size', type=int, default=500)
  a = p.parse_args(argv)
  if not bench.reference_available():
    sys.exit('error: needs torch and pyautoattack: '
             'pip install torch==2.13.0 pyautoattack==0.2.0 --no-deps')
  attacks = a.attacks.split(',')
  for name in attacks:
    if name not in ATTACKS:
      sys.exit(f'error: attack {name!r}; allowed: {", ".join(ATTACKS)}')
  logits_fn, x, y, eps, epoch, sharding, ops, norm = load_model(a.workdir, a.checkpoint)
  x, y = x[:a.n], y[:a.n]
  eps, norm = a.eps or eps, a.norm or norm
  cfg = aa.AutoAttackConfig(norm=norm)
  net = bench.jax_backed_torch_model(logits_fn, sharding=sharding)
  modes = ('own', 'shared') if a.starts == 'both' else (a.starts,)
  diffs = {}
  for seed in (int(s) for s in a.seeds.split(',')):
    for name in attacks:
      start = time.perf_counter()
      res = aa.run_autoattack(logits_fn, x, y, eps, key=jax.random.key(seed),
                              batch_size=a.batch_size, attacks=(name,), config=cfg,
                              progress=False, sharding=sharding, ops=ops)
      ours_s = time.perf_counter() - start
      ours = res['robust']
      for mode in modes:
        start = time.perf_counter()
        if mode == 'own':
          x_ref, _ = bench.run_reference(net, x, y, eps, attacks=(name,),
                                         batch_size=a.batch_size, seed=seed, norm=norm)
          ref = aa.predict(logits_fn, x_ref, a.batch_size, sharding) == y
        else:
          clean = aa.predict(logits_fn, x, a.batch_size, sharding) == y
          ref = reference_from_starts(net, x, y, clean, eps, name, a.batch_size,
                                      ours_starts(seed, name, eps, norm), cfg)
        ref_s = time.perf_counter() - start
        diff = round(100 * float(ours.mean() - ref.mean()), 2)
        diffs.setdefault((name, mode), []).append(diff)
        print(json.dumps(dict(
            workdir=a.workdir, checkpoint=f'{a.checkpoint} (epoch {epoch})', attack=name,
            starts=mode, seed=seed, n=len(y), norm=norm, eps=eps, clean=res['clean_acc'],
            ours=float(ours.mean()), reference=float(ref.mean()), diff_pp=diff,
            ours_only_robust=int((ours & ~ref).sum()),
            reference_only_robust=int((ref & ~ours).sum()),
            ours_s=round(ours_s, 1), reference_s=round(ref_s, 1))), flush=True)
  for (name, mode), d in diffs.items():
    print(json.dumps(dict(summary=True, attack=name, starts=mode, seeds=a.seeds, n=len(y),
                          norm=norm, eps=eps, diff_pp=d, mean_pp=round(float(np.mean(d)), 3),
                          sd_pp=round(float(np.std(d, ddof=1)), 3) if len(d) > 1 else None)),
          flush=True)


if __name__ == '__main__':
  main()
