"""The analysis measurements against closed forms and direct computations."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sglr_jax import models
from sglr_jax.analysis import confidence, embedding, hessian, information
from sglr_jax.evaluation import metrics


def _linear_problem(seed=0, n=64, d=6, k=3):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = rng.integers(0, k, n)
  params = {'w': jnp.asarray(rng.normal(size=(d, k)), jnp.float32),
            'b': jnp.asarray(rng.normal(size=(k,)), jnp.float32)}

  def loss_fn(p, batch):
    xb, yb = batch
    logits = xb @ p['w'] + p['b']
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(yb)), yb])

  batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]
  return params, loss_fn, batches


def test_iiw_is_zero_at_the_initial_weights():
  params, loss_fn, batches = _linear_problem()
  out = information.information_in_weights(loss_fn, params, params, batches)
  assert out['iiw'] == 0.0 and out['per_layer'] == {"['w']": 0.0}
  assert out['grad_norm'] > 0


def test_iiw_is_the_squared_projection_of_the_weight_change_on_the_mean_gradient():
  params, loss_fn, batches = _linear_problem()
  p0 = jax.tree.map(lambda a: a * 0.5, params)
  out = information.information_in_weights(loss_fn, params, p0, batches)
  grads = [jax.grad(loss_fn)(params, b) for b in batches]
  g_w = np.mean([np.asarray(g['w'], np.float64) for g in grads], 0)
  g_b = np.mean([np.asarray(g['b'], np.float64) for g in grads], 0)
  dw = np.asarray(params['w'], np.float64) * 0.5
  expected = float(np.sum(dw * g_w) ** 2)  # the bias (1-D) is not a kernel
  assert out['iiw'] == pytest.approx(expected, rel=1e-5)
  assert out['grad_norm'] == pytest.approx(np.sqrt(np.sum(g_w ** 2) + np.sum(g_b ** 2)),
                                           rel=1e-5)


def test_hutchinson_is_exact_for_a_diagonal_hessian():
  a = jnp.asarray([1.0, -2.0, 3.5, 0.25])
  loss = lambda p: 0.5 * jnp.sum(a * p['x'] ** 2)
  out = hessian.hutchinson_trace(loss, {'x': jnp.ones(4)}, jax.random.PRNGKey(0), probes=3)
  assert out['trace'] == pytest.approx(float(a.sum()), abs=1e-6) and out['stderr'] == 0.0


def test_hutchinson_matches_the_trace_of_a_small_quadratic():
  rng = np.random.default_rng(1)
  m = rng.normal(size=(6, 6))
  a = (m + m.T) / 2  # symmetric, off-diagonal entries make single probes noisy
  loss = lambda p: 0.5 * p['x'] @ jnp.asarray(a, jnp.float32) @ p['x'] + jnp.sum(p['y'] ** 2)
  params = {'x': jnp.zeros(6), 'y': jnp.zeros(2)}
  out = hessian.hutchinson_trace(loss, params, jax.random.PRNGKey(3), probes=400)
  exact = float(np.trace(a)) + 4.0  # d^2/dy^2 of sum y^2 is 2 per entry
  # Var(v^T A v) = 2 sum_{i != j} A_ij^2 for Rademacher v (exact for this estimator)
  sd = np.sqrt(2 * (np.sum(a ** 2) - np.sum(np.diag(a) ** 2)))
  assert abs(out['trace'] - exact) < 4 * sd / np.sqrt(400)
  assert out['stderr'] == pytest.approx(sd / np.sqrt(400), rel=0.25)


def test_labelled_probability_and_density():
  logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
  p = confidence.labelled_probability(logits, [0, 1])
  np.testing.assert_allclose(p, [0.7, 0.1])
  d = confidence.density(np.linspace(0, 1, 101), bins=10)
  width = np.diff(d['edges'])
  assert np.sum(np.asarray(d['density']) * width) == pytest.approx(1.0)
  assert len(d['density']) == 10


def test_penultimate_features_are_the_last_dense_input():
  model = models.create_model('small_cnn', 4, width=4, dense=8)
  x = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
  f = embedding.penultimate_features(model, variables, x, batch_size=2)
  assert f.shape == (5, 8) and np.all(f >= 0)  # after the ReLU of the hidden dense layer
  head = variables['params']['Dense_1']
  logits = f @ np.asarray(head['kernel']) + np.asarray(head['bias'])
  direct = model.apply(variables, x.astype(np.float32) / 255.0, train=False)
  np.testing.assert_allclose(logits, direct, rtol=1e-5, atol=1e-5)


def test_separation_on_two_clusters_and_tsne_runs():
  rng = np.random.default_rng(0)
  centres = np.array([[5.0, 0, 0], [0, 5.0, 0]])
  y = np.repeat([0, 1], 10)
  f = centres[y] + 0.1 * rng.normal(size=(20, 3))
  sep = embedding.separation(f, y)
  assert sep['silhouette'] > 0.9 and sep['intra_inter'] < 0.1
  mixed = embedding.separation(rng.normal(size=(20, 3)), y)
  assert mixed['silhouette'] < 0.2 and mixed['intra_inter'] > 0.8
  # hand check of the ratio on 4 points on a line: classes {0, 1} at 0, 1 and 10, 11
  sep4 = embedding.separation(np.array([[0.0], [1.0], [10.0], [11.0]]), [0, 0, 1, 1])
  assert sep4['intra_inter'] == pytest.approx(1.0 / 10.0)  # inter pairs: 10, 11, 9, 10
  z = embedding.tsne_2d(f, seed=0)
  assert z.shape == (20, 2) and np.all(np.isfinite(z))


def test_labelled_probability_uses_the_one_softmax():
  logits = np.random.default_rng(0).normal(size=(4, 5))
  np.testing.assert_allclose(confidence.labelled_probability(logits, [0, 1, 2, 3]),
                             metrics.softmax(logits)[np.arange(4), [0, 1, 2, 3]])


def test_analyses_study_on_a_trained_run_resumes(tmp_path, capsys):
  """studies/analyses.py on a tiny noisy-label run: every number, the figures, and a
  re-run that redoes nothing."""
  import json
  import os
  import runpy
  from conftest import ROOT, tiny_config
  from sglr_jax.training import loop
  wd = str(tmp_path / 'run')
  c = tiny_config(**{'train.epochs': 1, 'sglr.start_epoch': 0, 'data.noise.kind': 'symmetric',
                     'data.noise.rate': 0.4, 'train.train_fit_every_epochs': 0,
                     'schedule.decay_epochs': (1,)})
  loop.train_and_evaluate(c, wd, progress=False)
  out = tmp_path / 'out'
  study = runpy.run_path(os.path.join(ROOT, 'studies', 'analyses.py'))
  argv = [f'--runs=SGLR={wd}', f'--out={out}', '--probes=2', '--points=40']
  study['main'](argv)
  res = json.loads((out / 'analyses.json').read_text())
  assert [(r['name'], r['kind']) for r in res] == [('SGLR', 'best'), ('SGLR', 'final')]
  for r in res:
    assert r['iiw'] > 0 and r['grad_norm'] > 0 and np.isfinite(r['hessian']['trace'])
    assert set(r['density']) == {'all', 'flipped', 'kept'}
    assert len(r['tsne']['xy']) == 40
  for png in ('density.png', 'density_flipped.png', 'embedding.png'):
    assert (out / png).stat().st_size > 5000
  assert '| SGLR | final | 1 |' in (out / 'analyses.md').read_text()
  capsys.readouterr()
  study['main'](argv)
  assert capsys.readouterr().out == ''  # nothing redone
