"""AutoAttack's 'rand' version: APGD-CE and APGD-DLR with EOT for randomised models.

On a deterministic model it gives the verdicts of APGD-CE and APGD-DLR with one
restart; on a model with dropout at inference APGD's gradient is the mean over the
draws (checked against a closed form), and the randomisation check is raised by the
standard version only.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attack_support import OPS
from sglr_jax import mesh as mesh_lib
from sglr_jax.attacks import apgd, losses
from sglr_jax.attacks import autoattack as aa
from sglr_jax.attacks.autoattack import checks
from sglr_jax.evaluation import autoattack as eval_aa

N, HW, K = 48, 6, 10
D = HW * HW
TINY = aa.AutoAttackConfig(apgd_n_iter=10, apgd_t_n_iter=10, apgd_t_n_target_classes=3,
                           fab_n_iter=10, fab_n_target_classes=3, square_n_queries=200,
                           square_queries_per_call=100)
KEEP = 0.5  # dropout keep rate of the randomised model


@pytest.fixture(scope='module')
def problem():
  rng = np.random.default_rng(0)
  wmat = jnp.asarray(rng.normal(size=(D, K)), jnp.float32)
  x = rng.uniform(size=(N, HW, HW, 1)).astype(np.float32)
  fn = lambda z: z.reshape(z.shape[0], -1) @ wmat
  return fn, wmat, x, np.asarray(fn(x)).argmax(1)


def _mask(key, shape):
  return jax.random.bernoulli(key, KEEP, shape).astype(jnp.float32) / KEEP


def _dropout(wmat):
  """Logits of an affine model with dropout on its input, also at inference."""
  def fn(z, key):
    h = z.reshape(z.shape[0], -1)
    return (h * _mask(key, h.shape)) @ wmat
  return fn


def _run(fn, x, y, eps=0.05, **kwargs):
  kwargs.setdefault('config', TINY)
  return aa.run_autoattack(fn, x, y, eps, key=jax.random.key(0), batch_size=16,
                           progress=False, ops=OPS, **kwargs)


def test_rand_on_a_deterministic_model_is_apgd_ce_and_dlr(problem):
  fn, _, x, y = problem
  assert aa.version_setup('rand', None, TINY) == (
      ('apgd-ce', 'apgd-dlr'), dataclasses.replace(TINY, apgd_n_restarts=1, eot_iter=20))
  plain = _run(fn, x, y, attacks=('apgd-ce', 'apgd-dlr'),
               config=dataclasses.replace(TINY, apgd_n_restarts=1))
  assert 0 < plain['robust'].mean() < plain['clean_acc']  # eps leaves something to find
  assert plain['robust_acc_after']['apgd-dlr'] <= plain['robust_acc_after']['apgd-ce']
  rand = _run(fn, x, y, version='rand')
  assert list(rand['robust_acc_after']) == ['apgd-ce', 'apgd-dlr']
  # a deterministic logits_fn: EOT is moot, the very same runs
  np.testing.assert_array_equal(rand['robust'], plain['robust'])
  np.testing.assert_array_equal(rand['x_adv'], plain['x_adv'])
  # declared randomised, but every draw is the same: 20 equal gradients averaged keep
  # their signs, so the Linf iterates and the verdicts are those of one
  same = _run(lambda z, key: fn(z), x, y, version='rand', randomised=True)
  np.testing.assert_array_equal(same['robust'], plain['robust'])
  assert same['robust_acc_after'] == plain['robust_acc_after']
  assert same['flags'] == [] and rand['flags'] == []


def test_eot_gradient_is_the_mean_over_draws(problem):
  """Closed form: for logits ``(x * m_j) W`` the CE input gradient of draw ``j`` is
  ``m_j * ((softmax - onehot) W^T)``; EOT averages it over the draws ``fold_in(key, j)``
  and keeps the last draw's loss and logits."""
  _, wmat, x, y = problem
  fn = _dropout(wmat)
  loss_fn = lambda lg: losses.cross_entropy(lg, jnp.asarray(y))
  key = jax.random.key(7)
  eot = jax.jit(apgd.loss_grad_fn(fn, loss_fn, eot_iter=20, randomised=True))
  loss, logits, grad = (np.asarray(a, np.float64) for a in eot(jnp.asarray(x), key))
  h = x.reshape(N, D).astype(np.float64)
  w = np.asarray(wmat, np.float64)
  want = np.zeros_like(h)
  for j in range(20):
    m = np.asarray(_mask(jax.random.fold_in(key, j), (N, D)), np.float64)
    z = (h * m) @ w
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want += m * ((p - np.eye(K)[y]) @ w.T) / 20
  np.testing.assert_allclose(grad.reshape(N, D), want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(logits, z, rtol=1e-5, atol=1e-5)             # the last draw
  np.testing.assert_allclose(loss, -np.log(p[np.arange(N), y]), rtol=1e-4, atol=1e-5)
  one = np.asarray(jax.jit(apgd.loss_grad_fn(fn, loss_fn, eot_iter=1, randomised=True))(
      jnp.asarray(x), key)[2], np.float64).reshape(N, D)
  # a single draw zeroes half the coordinates; the mean over twenty almost none
  assert (one == 0).mean() > 0.4 and (want == 0).mean() < 0.01
  assert np.abs(one - want).max() > 10 * np.abs(grad.reshape(N, D) - want).max()


def test_the_randomisation_check_flags_the_standard_version_only(problem):
  _, wmat, x, y = problem
  fn = _dropout(wmat)
  y = np.asarray(fn(jnp.asarray(x), jax.random.key(1))).argmax(1)
  with pytest.warns(checks.AutoAttackFlag, match='version="rand"'):
    std = _run(fn, x, y, attacks=('apgd-ce',), randomised=True)
  assert 'randomized' in {f['check'] for f in std['flags']}
  rand = _run(fn, x, y, version='rand', randomised=True)
  again = _run(fn, x, y, version='rand', randomised=True)
  assert 'randomized' not in {f['check'] for f in rand['flags']}
  np.testing.assert_array_equal(rand['robust'], again['robust'])  # reproducible draws
  assert 0 <= rand['robust'].mean() < rand['clean_acc']


class DropoutNet(nn.Module):
  """A Flax model with dropout at inference (``deterministic=False`` always)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Dropout(1 - KEEP, deterministic=False)(x.reshape(x.shape[0], -1))
    return nn.Dense(K)(h)


def test_evaluation_rand_gives_the_flax_model_its_dropout_rng(problem, tmp_path):
  """``eval.autoattack_version='rand'``: each draw reaches the model as its 'dropout'
  rng (without one, Flax would refuse to apply this model), also for the predictions
  written beside the adversarial examples."""
  _, _, x, _ = problem
  model = DropoutNet()
  variables = model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)},
                         jnp.asarray(x[:1]))
  images = np.round(x * 255).astype(np.uint8)
  y = np.asarray(model.apply(variables, images / 255.0, rngs={'dropout': jax.random.key(2)})
                 ).argmax(1)
  ev = eval_aa.AutoAttack(model, mesh_lib.make_mesh(1), images, y, eps=0.05,
                          key=jax.random.PRNGKey(0), batch_size=16, examples=32,
                          budget='smoke', version='rand', ops=OPS, progress=False,
                          workdir=str(tmp_path))
  out = ev.run(variables, 'final')
  with np.load(tmp_path / 'adversarial' / 'final.npz') as z:
    assert len(z['adv_pred']) == 32 and set(z['broken_by']) <= {'', 'apgd-ce', 'apgd-dlr'}
  assert not (tmp_path / 'eval_state' / 'final.npz').exists()
  assert list(out['autoattack_after']) == ['apgd-ce', 'apgd-dlr']
  assert 'randomized' not in {f['check'] for f in out['autoattack_flags']}
  assert 0 <= out['autoattack_acc'] < 1 and out['autoattack_examples'] == 32
