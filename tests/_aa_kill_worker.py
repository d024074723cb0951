"""A subprocess entry point for the SIGKILL test of a resumable AutoAttack run.

  python tests/_aa_kill_worker.py STATE.npz ATTACK STEP

runs the ensemble of ``problem()`` with its state in ``STATE.npz`` (saved at every
boundary) and, when the run reaches the boundary ``(ATTACK, STEP)`` (``STEP`` 'none':
the end of that attack), prints ``MARK`` on stdout and blocks until it is killed. The
parent test shares ``problem``, ``CFG`` and ``run`` with it, so both sides run the same
procedure.
"""
from __future__ import annotations

import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np

import conftest  # noqa: F401  (the tests' XLA flags, compilation cache)
from attack_support import OPS
from sglr_jax.attacks import autoattack as aa

N, HW, K = 32, 6, 10
CFG = aa.AutoAttackConfig(apgd_n_iter=10, apgd_t_n_iter=10, apgd_t_n_target_classes=3,
                          fab_n_iter=10, fab_n_target_classes=3, square_n_queries=200,
                          square_queries_per_call=50)


def problem(n: int = N, seed: int = 3):
  """An affine classifier, ``n`` points and their labels (a fifth of them wrong)."""
  rng = np.random.default_rng(seed)
  wmat = jnp.asarray(rng.normal(size=(HW * HW, K)), jnp.float32)
  fn = lambda z: z.reshape(z.shape[0], -1) @ wmat
  x = rng.uniform(size=(n, HW, HW, 1)).astype(np.float32)
  y = np.asarray(fn(x)).argmax(1)
  y[::5] = (y[::5] + 1) % K
  return fn, x, y


def run(fn, x, y, **kwargs):
  return aa.run_autoattack(fn, x, y, 0.04, key=jax.random.key(0), batch_size=16,
                           config=CFG, progress=False, ops=OPS, **kwargs)


def main(path: str, attack: str, step: str):
  stop = (attack, None if step == 'none' else int(step))

  def hook(name, s):
    if (name, s) == stop:             # called after the state of this boundary is saved
      print('MARK', flush=True)
      threading.Event().wait()        # until the parent kills this process

  run(*problem(), state_path=path, state_every_s=0.0, hook=hook)
  print('FINISHED', flush=True)       # the boundary was never reached


if __name__ == '__main__':
  main(*sys.argv[1:])
