"""APGD: the reference's checkpoint schedule and step-size rule, DLR, feasibility, strength."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attack_support import OPS, small_cnn
from bench.attacks import numpy_init
from conftest import O2
from sglr_jax.attacks import apgd, losses, pgd

EPS = 8 / 255


# ------------------------------------------------------------------ schedule, step size

def test_checkpoints_match_reference_schedule():
  assert apgd.checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
  # n_iter=10: p_0 = max(int(2.2), 1) = 2, then windows of max(2 - 1, 1) = 1
  assert apgd.checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
  assert [k for _, k in apgd.checkpoint_schedule(100)] == [22, 19, 16, 13, 10, 7, 6, 6]


def _ref_check(loss_steps, i, k, rho, reduced_last_check, loss_best_last_check, loss_best):
  """The reference's checkpoint test at iteration ``i`` (window ``k``): the halving flags
  (oscillation, or no improvement since a check that did not halve) and the new
  ``reduced_last_check``, ``loss_best_last_check``."""
  t = np.zeros(loss_steps.shape[1], np.float32)
  for c5 in range(k):  # python's negative index wraps like torch's
    t += (loss_steps[i - c5] > loss_steps[i - c5 - 1]).astype(np.float32)
  fl_osc = (t <= k * rho * np.ones_like(t)).astype(np.float32)
  fl_no_impr = (1. - reduced_last_check) * (loss_best_last_check >= loss_best)
  fl_osc = np.maximum(fl_osc, fl_no_impr)
  return fl_osc > 0, fl_osc.copy(), loss_best.copy()


def reference_step_rule(loss0, trace, rho=0.75):
  """A line-by-line numpy transcription of the reference's bookkeeping in
  ``APGDAttack.attack_single_run`` (Linf/L2 branch). Returns the halving flags [n, B]."""
  n_iter, b = trace.shape
  n_iter_2, n_iter_min = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1)
  size_decr = max(int(0.03 * n_iter), 1)
  loss_steps = np.zeros([n_iter, b], np.float32)
  loss_best = loss0.astype(np.float32).copy()
  loss_best_last_check = loss_best.copy()
  reduced_last_check = np.ones(b, np.float32)
  counter3, k = 0, n_iter_2
  halved = np.zeros([n_iter, b], bool)
  for i in range(n_iter):
    y1 = trace[i]
    loss_steps[i] = y1
    ind = y1 > loss_best
    loss_best[ind] = y1[ind]
    counter3 += 1
    if counter3 == k:
      halved[i], reduced_last_check, loss_best_last_check = _ref_check(
          loss_steps, i, k, rho, reduced_last_check, loss_best_last_check, loss_best)
      k = max(k - size_decr, n_iter_min)
      counter3 = 0
  return halved


def _halved_at(reduced):
  return [i + 1 for i in np.flatnonzero(np.asarray(reduced))]


def test_step_rule_hand_traces():
  n = 100
  inc = np.arange(n, dtype=np.float32)[:, None] * 0.01 + 0.01
  # always improving: never halves
  steps, red = apgd.step_size_trace(np.zeros(1), inc)
  assert _halved_at(red[:, 0]) == [] and float(steps[-1, 0]) == 2.0
  # flat loss: every checkpoint oscillates (0 increases <= 0.75 k)
  steps, red = apgd.step_size_trace(np.zeros(1), np.full((n, 1), 0.5))
  assert _halved_at(red[:, 0]) == [22, 41, 57, 70, 80, 87, 93, 99]
  assert float(steps[-1, 0]) == 2.0 / 256
  # improving for 22 iterations then flat: halves from the second checkpoint on
  trace = np.concatenate([inc[:22], np.full((78, 1), inc[21, 0])])
  _, red = apgd.step_size_trace(np.zeros(1), trace)
  assert _halved_at(red[:, 0]) == [41, 57, 70, 80, 87, 93, 99]
  # climbing but never above the start's loss: only the no-improvement rule fires,
  # which needs the previous checkpoint not to have halved -> every second checkpoint
  _, red = apgd.step_size_trace(np.full(1, 10.0), inc - 0.01)
  assert _halved_at(red[:, 0]) == [41, 70, 87, 99]


@pytest.mark.parametrize('n_iter,seed', [(100, 0), (100, 1), (37, 2), (10, 3)])
def test_step_rule_matches_reference_on_random_traces(n_iter, seed):
  rng = np.random.default_rng(seed)
  b = 64
  # random walks, some with drift, some sign-changing (DLR-like): exercises the
  # wrap-around of the first window and both halving conditions
  drift = rng.choice([-0.05, 0.0, 0.02, 0.1], size=b)
  trace = np.cumsum(rng.normal(size=(n_iter, b)) * 0.1 + drift, 0).astype(np.float32)
  trace[:, ::7] = np.round(trace[:, ::7], 1)  # ties
  loss0 = rng.normal(size=b).astype(np.float32)
  want = reference_step_rule(loss0, trace)
  steps, got = apgd.step_size_trace(loss0, trace, eps=0.5)
  np.testing.assert_array_equal(np.asarray(got), want)
  np.testing.assert_allclose(np.asarray(steps[-1]), 1.0 / 2.0**want.sum(0))
  assert want.any() and not want.all()


# --------------------------------------------------------------------------------- DLR

def reference_dlr(z, y):
  zs, ind = np.sort(z, 1), np.argsort(z, 1)
  top_is_y = (ind[:, -1] == y).astype(np.float32)
  zy = z[np.arange(len(y)), y]
  return -(zy - zs[:, -2] * top_is_y - zs[:, -1] * (1 - top_is_y)) / (zs[:, -1] - zs[:, -3] + 1e-12)


def reference_targeted_dlr(z, y, t):
  zs = np.sort(z, 1)
  u = np.arange(len(y))
  return -(z[u, y] - z[u, t]) / (zs[:, -1] - .5 * (zs[:, -3] + zs[:, -4]) + 1e-12)


def test_dlr_matches_reference_and_is_shift_and_scale_invariant():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(256, 10)).astype(np.float32) * 3
  y = rng.integers(0, 10, 256)
  y[:64] = z[:64].argmax(1)  # both branches: y on top and not
  t = (y + rng.integers(1, 10, 256)) % 10
  dlr = lambda z: np.asarray(losses.dlr(jnp.asarray(z), jnp.asarray(y)))
  tdlr = lambda z: np.asarray(losses.targeted_dlr(jnp.asarray(z), jnp.asarray(y), jnp.asarray(t)))
  d, dt = dlr(z), tdlr(z)
  np.testing.assert_allclose(d, reference_dlr(z, y), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dt, reference_targeted_dlr(z, y, t), rtol=1e-5, atol=1e-6)
  assert (d[:64] < 0).all() and (d[64:] > 0).any()
  for a, c in [(1.0, 7.0), (3.7, 0.0), (0.3, -20.0)]:  # up to float32 rounding
    np.testing.assert_allclose(dlr(a * z + c), d, rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(tdlr(a * z + c), dt, rtol=2e-3, atol=1e-4)
  zq = np.round(z * 8) / 8  # dyadic logits: shifts and power-of-two scalings are exact
  dq, dtq = dlr(zq), tdlr(zq)
  for a, c in [(1.0, 7.0), (4.0, 0.0), (0.25, -100.0)]:
    np.testing.assert_array_equal(dlr(a * zq + c), dq)
    np.testing.assert_array_equal(tdlr(a * zq + c), dtq)


# ---------------------------------------------------------------------- attack on a CNN

@pytest.fixture(scope='module')
def cnn():
  """Untrained tiny CNN; labels are its clean predictions (clean accuracy 100%)."""
  model = small_cnn(width=8)
  variables = numpy_init(model, (1, 28, 28, 1))
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(64, 28, 28, 1)), jnp.float32)
  logits_fn = lambda z: model.apply(variables, z, train=False)
  y = jnp.argmax(jax.jit(logits_fn)(x), -1)
  return logits_fn, x, y


@pytest.fixture(scope='module')
def apgd_linf(cnn):
  """APGD-CE, Linf, 100 iterations (the reference schedule); eps and mask traced so
  every test below shares one compilation."""
  logits_fn = cnn[0]
  return jax.jit(lambda x, y, key, eps, mask: apgd.apgd_attack(
      logits_fn, x, y, eps=eps, key=key, n_iter=100, mask=mask, ops=OPS),
                 compiler_options=O2)


def _check_feasible(x_adv, x, eps, norm):
  d = (x_adv - x).reshape(x.shape[0], -1)
  n = jnp.max(jnp.abs(d), 1) if norm == 'Linf' else jnp.sqrt(jnp.sum(d * d, 1))
  assert not bool(jnp.isnan(x_adv).any())
  assert float(n.max()) <= eps + 1e-6
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def _fooled(logits_fn, x_adv, y):
  return np.asarray(jnp.argmax(logits_fn(x_adv), -1) != y)


def test_apgd_linf_feasible_and_unchanged_where_robust(cnn, apgd_linf):
  logits_fn, x, y = cnn
  eps = 2 / 255
  x_adv = apgd_linf(x, y, jax.random.key(0), eps, jnp.ones(64, bool))
  _check_feasible(x_adv, x, eps, 'Linf')
  fooled = _fooled(logits_fn, x_adv, y)
  assert 0 < fooled.mean() < 1  # eps picked so the assertion below is not vacuous
  np.testing.assert_array_equal(np.asarray(x_adv)[~fooled], np.asarray(x)[~fooled])
  # bit-for-bit reproducible; another key gives another run
  again = apgd_linf(x, y, jax.random.key(0), eps, jnp.ones(64, bool))
  np.testing.assert_array_equal(np.asarray(x_adv), np.asarray(again))
  other = apgd_linf(x, y, jax.random.key(1), eps, jnp.ones(64, bool))
  assert not np.array_equal(np.asarray(x_adv), np.asarray(other))


def test_apgd_l2_feasible_and_unchanged_where_robust(cnn):
  logits_fn, x, y = cnn
  eps = 0.25
  x_adv = jax.jit(lambda x, y: apgd.apgd_attack(
      logits_fn, x, y, eps=eps, key=jax.random.key(0), norm='L2', n_iter=10, ops=OPS),
                  compiler_options=O2)(x, y)
  _check_feasible(x_adv, x, eps, 'L2')
  fooled = _fooled(logits_fn, x_adv, y)
  assert 0 < fooled.mean() < 1
  np.testing.assert_array_equal(np.asarray(x_adv)[~fooled], np.asarray(x)[~fooled])


def test_apgd_mask_and_misclassified_points_untouched(cnn, apgd_linf):
  logits_fn, x, y = cnn
  y_mix = jnp.where(jnp.arange(64) % 2 == 0, y, (y + 1) % 10)
  mask = jnp.arange(64) < 48
  x_adv = apgd_linf(x, y_mix, jax.random.key(0), EPS, mask)
  untouched = np.asarray((y_mix != y) | ~mask)
  np.testing.assert_array_equal(np.asarray(x_adv)[untouched], np.asarray(x)[untouched])
  # at 8/255 the untrained net is fooled almost everywhere it is attacked
  assert _fooled(logits_fn, x_adv, y_mix)[~untouched].mean() > 0.8


def _pgd(logits_fn, x, y, eps, key, steps=20):
  return pgd.pgd_attack(logits_fn, x, y, eps=eps, step_size=2.5 * eps / steps, steps=steps,
                        key=key, ops=OPS)


def test_apgd_ce_at_least_as_strong_as_pgd20(cnn, apgd_linf):
  logits_fn, x, y = cnn
  eps = 1.5 / 255
  acc = lambda xa: float(jnp.mean(jnp.argmax(logits_fn(xa), -1) == y))
  x_pgd = jax.jit(lambda x, y: _pgd(logits_fn, x, y, eps, jax.random.key(5)),
                  compiler_options=O2)(x, y)
  x_apgd = apgd_linf(x, y, jax.random.key(0), eps, jnp.ones(64, bool))
  _check_feasible(x_apgd, x, eps, 'Linf')
  acc_pgd, acc_apgd = acc(x_pgd), acc(x_apgd)
  assert 0.2 < acc_pgd < 1.0, acc_pgd  # PGD-20 leaves something to beat
  assert acc_apgd <= acc_pgd, (acc_apgd, acc_pgd)


def test_apgd_targeted_feasible_and_deterministic(cnn):
  logits_fn, x, y = cnn
  run = jax.jit(lambda x, y, key: apgd.apgd_targeted_attack(
      logits_fn, x, y, eps=2 / 255, key=key, n_iter=10, n_target_classes=3, ops=OPS),
                compiler_options=O2)
  a = run(x, y, jax.random.key(3))
  b = run(x, y, jax.random.key(3))
  _check_feasible(a, x, 2 / 255, 'Linf')
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  fooled = _fooled(logits_fn, a, y)
  assert 0 < fooled.mean() < 1
  np.testing.assert_array_equal(np.asarray(a)[~fooled], np.asarray(x)[~fooled])


def test_apgd_early_stop_same_verdicts_earlier_points(cnn, apgd_linf):
  logits_fn, x, y = cnn
  full = apgd_linf(x, y, jax.random.key(0), EPS, jnp.ones(64, bool))
  fooled = jnp.asarray(_fooled(logits_fn, full, y))
  early = jax.jit(lambda x, y, key, mask: apgd.apgd_attack(
      logits_fn, x, y, eps=EPS, key=key, n_iter=100, mask=mask, early_stop=True, ops=OPS),
                  compiler_options=O2)
  # attacking only points the full run fools, every run ends as soon as all are fooled
  a = early(x, y, jax.random.key(0), fooled)
  _check_feasible(a, x, EPS, 'Linf')
  np.testing.assert_array_equal(_fooled(logits_fn, a, y), np.asarray(fooled))
  assert not np.array_equal(np.asarray(a), np.asarray(full))  # it did stop early


# ------------------------------------------------ same start: the reference's iterates

def _ref_project(z, x, eps, norm):
  """The reference's projection: Linf clip to the ball, or L2 rescale of ``z - x`` to
  at most ``eps``; then [0, 1]."""
  if norm == 'Linf':
    return np.clip(np.minimum(np.maximum(z, x - np.float32(eps)), x + np.float32(eps)), 0., 1.)
  d = z - x
  n = np.sqrt((d ** 2).reshape(len(d), -1).sum(1)).reshape(-1, 1, 1, 1)
  return np.clip(x + d / (n + 1e-12) * np.minimum(np.float32(eps), n), 0., 1.)


def reference_single_run(loss_grad, x, y, x_init, eps, n_iter, norm='Linf', rho=0.75):
  """A line-by-line numpy transcription of the reference's
  ``APGDAttack.attack_single_run(x, y, x_init)`` (Linf and L2, eot_iter=1): momentum
  0.75 but not on the first step, projection before and after the momentum, the best
  point on ``loss > loss_best``, the checkpoint rule, restart of the halved points from
  ``x_best`` with ``grad_best`` (``x_adv_old`` kept), and the last misclassified
  iterate ``x_best_adv``. ``loss_grad(x) -> (loss [B], logits [B, K], grad)`` in numpy.
  Returns ``(x_best, acc, loss_best, x_best_adv)`` as the reference does."""
  x = np.asarray(x, np.float32)
  b = x.shape[0]
  n_iter_2, n_iter_min = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1)
  size_decr = max(int(0.03 * n_iter), 1)
  x_adv = np.clip(np.asarray(x_init, np.float32), 0., 1.)
  x_best, x_best_adv = x_adv.copy(), x_adv.copy()
  loss_steps = np.zeros([n_iter, b], np.float32)
  loss_indiv, logits, grad = loss_grad(x_adv)
  grad_best = grad.copy()
  acc = logits.argmax(1) == y
  loss_best = loss_indiv.copy()
  step_size = np.float32(2. * eps) * np.ones([b, 1, 1, 1], np.float32)
  x_adv_old = x_adv.copy()
  k, counter3 = n_iter_2, 0
  loss_best_last_check = loss_best.copy()
  reduced_last_check = np.ones_like(loss_best)
  for i in range(n_iter):
    grad2 = x_adv - x_adv_old
    x_adv_old = x_adv.copy()
    a = np.float32(0.75 if i > 0 else 1.0)
    if norm == 'Linf':
      x_adv_1 = x_adv + step_size * np.sign(grad)
    else:
      gn = np.sqrt((grad ** 2).reshape(b, -1).sum(1)).reshape(-1, 1, 1, 1)
      x_adv_1 = x_adv + step_size * grad / (gn + 1e-12)
    x_adv_1 = _ref_project(x_adv_1, x, eps, norm)
    x_adv_1 = _ref_project(x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a), x, eps, norm)
    x_adv = x_adv_1
    loss_indiv, logits, grad = loss_grad(x_adv)
    pred = logits.argmax(1) == y
    acc = acc & pred
    x_best_adv[~pred] = x_adv[~pred]
    loss_steps[i] = loss_indiv
    ind = loss_indiv > loss_best
    x_best[ind] = x_adv[ind]
    grad_best[ind] = grad[ind]
    loss_best[ind] = loss_indiv[ind]
    counter3 += 1
    if counter3 == k:
      red, reduced_last_check, loss_best_last_check = _ref_check(
          loss_steps, i, k, rho, reduced_last_check, loss_best_last_check, loss_best)
      step_size[red] /= 2.0
      x_adv[red] = x_best[red]
      grad[red] = grad_best[red]
      k = max(k - size_decr, n_iter_min)
      counter3 = 0
  return x_best, acc, loss_best, x_best_adv


def _same_run(ours, ref, tol=1e-6):
  """Same verdicts and best losses; the same points up to float rounding (a row may
  differ where two iterates' losses tie to the last bit and the other became x_best).
  ``tol``: per-row max difference; L2 steps are continuous, so the two float orders of
  the gradient's norm drift apart a little over the iterations."""
  x_best, robust, loss_best, x_last_adv = (np.asarray(a) for a in ours)
  np.testing.assert_array_equal(robust, np.asarray(ref[1]))
  np.testing.assert_allclose(loss_best, ref[2], rtol=1e-5, atol=1e-6)
  for mine, theirs in ((x_best, ref[0]), (x_last_adv, ref[3])):
    row = np.abs(mine - np.asarray(theirs)).reshape(len(mine), -1).max(1)
    assert (row <= tol).mean() >= 0.9, np.sort(row)[-8:]
  assert 0 < robust.mean() < 1  # eps picked so the comparison is not vacuous


def _loss_for(cnn, loss):
  """``(loss_fn, target)``: CE, or the targeted DLR towards the runner-up class."""
  logits_fn, x, y = cnn
  if loss == 'ce':
    return lambda lg: losses.cross_entropy(lg, y), None
  target = apgd.target_labels(jax.jit(logits_fn)(x), 2)
  return lambda lg: losses.targeted_dlr(lg, y, target), target


def _ours_from(cnn, loss_fn, eps, norm, x0):
  logits_fn, x, y = cnn
  return jax.jit(lambda x, y, x0: apgd.apgd_single_run(
      logits_fn, loss_fn, x, y, None, eps=eps, n_iter=100, norm=norm, x_init=x0, ops=OPS),
                 compiler_options=O2)(x, y, x0)


def _start(x, eps, norm):
  """The start ``apgd_run`` draws for run 0 of key 0."""
  return apgd.random_start(apgd.run_keys(jax.random.key(0), x.shape[0], None, 0), x, eps,
                           norm, on_sphere=True)


@pytest.mark.parametrize('loss,norm,eps', [('ce', 'Linf', 2 / 255),
                                           ('dlr-targeted', 'Linf', 2 / 255),
                                           ('ce', 'L2', 0.1)])
def test_apgd_same_start_same_iterates_as_reference_transcription(cnn, loss, norm, eps):
  logits_fn, x, y = cnn
  loss_fn, _ = _loss_for(cnn, loss)
  x0 = _start(x, eps, norm)
  ours = _ours_from(cnn, loss_fn, eps, norm, x0)
  lg = jax.jit(apgd.loss_grad_fn(logits_fn, loss_fn, OPS), compiler_options=O2)
  loss_grad = lambda z: tuple(np.array(a) for a in lg(jnp.asarray(z)))
  ref = reference_single_run(loss_grad, x, np.asarray(y), x0, eps, 100, norm)
  _same_run(ours, ref, 1e-6 if norm == 'Linf' else 5e-4)


def test_apgd_run_starts_where_run_keys_say(cnn):
  """``x_init`` replays a run: the start from ``run_keys`` gives ``apgd_run``'s result."""
  logits_fn, x, y = cnn
  eps = 2 / 255
  loss_fn, _ = _loss_for(cnn, 'ce')
  via_run = jax.jit(lambda x, y: apgd.apgd_run(logits_fn, x, y, 0, eps=eps,
                                               key=jax.random.key(0), ops=OPS),
                    compiler_options=O2)(x, y)
  _, robust, _, last = _ours_from(cnn, loss_fn, eps, 'Linf', _start(x, eps, 'Linf'))
  np.testing.assert_array_equal(np.asarray(via_run[1]), np.asarray(robust))
  # the start drawn inside or outside the run's program: equal up to an ulp
  np.testing.assert_allclose(np.asarray(via_run[0]), np.asarray(last), atol=1e-6)
  assert not bool(robust.all()) and bool(robust.any())


@pytest.mark.parametrize('loss', ['ce', 'dlr-targeted'])
def test_apgd_same_start_same_iterates_as_pyautoattack(cnn, loss):
  """The reference itself (``pyautoattack``, when installed) from our start on the same
  JAX model (``bench.attacks.jax_backed_torch_model``): its loss and gradient bookkeeping
  in torch, ours in JAX."""
  torch = pytest.importorskip('torch')
  autopgd = pytest.importorskip('pyautoattack.autopgd_base')
  from bench.attacks import jax_backed_torch_model  # pylint: disable=g-import-not-at-top
  logits_fn, x, y = cnn
  eps = 2 / 255
  loss_fn, target = _loss_for(cnn, loss)
  x0 = _start(x, eps, 'Linf')
  ours = _ours_from(cnn, loss_fn, eps, 'Linf', x0)
  net = jax_backed_torch_model(logits_fn)
  cls = autopgd.APGDAttack if loss == 'ce' else autopgd.APGDAttack_targeted
  att = cls(net, n_iter=100, norm='Linf', eps=eps, n_restarts=1, device='cpu')
  nchw = lambda a: torch.from_numpy(np.array(np.asarray(a).transpose(0, 3, 1, 2)))
  att.init_hyperparam(nchw(x))
  if target is not None:
    att.y_target = torch.from_numpy(np.array(target)).long()
  with torch.no_grad():
    ref = att.attack_single_run(nchw(x), torch.from_numpy(np.array(y)).long(),
                                x_init=nchw(x0))
  nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)
  _same_run(ours, (nhwc(ref[0]), ref[1].numpy(), ref[2].numpy(), nhwc(ref[3])))
