"""Agreement with the reference AutoAttack (``pyautoattack``, = fra31/auto-attack) on the
same JAX model, weights and points: robust accuracy after each attack within 1 point.

Optional: skipped unless ``torch`` and ``pyautoattack`` import (neither is in
requirements.txt) and ``SGLR_REFERENCE_TESTS=1`` is set, as it runs the full standard
budget on 500 points twice per side (several minutes on 2 cores):

  pip install torch==2.13.0 pyautoattack==0.2.0 --no-deps
  SGLR_REFERENCE_TESTS=1 python -m pytest -q tests/test_autoattack_reference.py -s

The reference attacks the JAX model through a ``torch.autograd.Function`` (forward: the
jitted logits via numpy; backward: ``jax.vjp``), so both sides evaluate identical
functions. Randomness differs (torch's stream vs ours), hence a tolerance, not equality.
"""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest

pytest.importorskip('torch')
pytest.importorskip('pyautoattack')
if os.environ.get('SGLR_REFERENCE_TESTS') != '1':
  pytest.skip('slow (minutes): set SGLR_REFERENCE_TESTS=1 to compare with the reference',
              allow_module_level=True)

# pylint: disable=g-import-not-at-top,wrong-import-position
from attack_support import OPS, optimised_autoattack, small_cnn  # noqa: F401
from bench import attacks as bench
from conftest import O2
from sglr_jax.attacks import autoattack as aa

N = 500
EPS = 1.5 / 255   # the untrained net below keeps ~60% after APGD-CE: every attack has work
TOLERANCE = 0.01  # one percentage point


@pytest.fixture(scope='module', autouse=True)
def _optimised(optimised_autoattack):  # pylint: disable=unused-argument
  yield


@pytest.fixture(scope='module')
def problem():
  model = small_cnn(width=8)
  x = np.random.default_rng(0).uniform(size=(N, 28, 28, 1)).astype(np.float32)
  variables = bench.calibrate_batch_norm(model, bench.numpy_init(model, (1, 28, 28, 1)), x[:64])
  logits_fn = lambda z: model.apply(variables, z, train=False)
  y = aa.predict(logits_fn, x, N)
  return logits_fn, x, y, bench.jax_backed_torch_model(logits_fn, compiler_options=O2)


def _report(tag, ours, ref):
  print(f'\n{tag}: ' + ', '.join(f'{a} ours {ours[a]:.3f} ref {ref[a]:.3f}' for a in ours))


def test_standard_ensemble_agrees_with_reference(problem):
  logits_fn, x, y, net = problem
  res = aa.run_autoattack(logits_fn, x, y, EPS, key=jax.random.key(0), batch_size=N,
                          ops=OPS)
  x_ref, ref = bench.run_reference(net, x, y, EPS, attacks=aa.STANDARD_ATTACKS, batch_size=N)
  ours = res['robust_acc_after']
  _report('standard (cumulative)', ours, ref)
  assert 0.1 < ours['square'] < ours['apgd-ce'] < 0.9  # not vacuous
  for a in aa.STANDARD_ATTACKS:
    assert abs(ours[a] - ref[a]) <= TOLERANCE, (a, ours[a], ref[a])
  assert np.abs(x_ref - x).max() <= EPS + 1e-6


@pytest.mark.parametrize('attack', aa.STANDARD_ATTACKS)
def test_each_attack_alone_agrees_with_reference(problem, attack):
  logits_fn, x, y, net = problem
  res = aa.run_autoattack(logits_fn, x, y, EPS, key=jax.random.key(1), batch_size=N,
                          attacks=(attack,), ops=OPS)
  _, ref = bench.run_reference(net, x, y, EPS, attacks=(attack,), batch_size=N, seed=1)
  ours = res['robust_acc_after']
  _report(f'{attack} alone', ours, ref)
  assert ours[attack] < 1.0
  assert abs(ours[attack] - ref[attack]) <= TOLERANCE, (ours[attack], ref[attack])
