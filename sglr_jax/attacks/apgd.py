"""Auto-PGD (Croce and Hein, 2020): APGD-CE, APGD-DLR and APGD-T, Linf and L2.

A JAX port of the reference schedule (``fra31/auto-attack``): initial step ``2 eps``,
momentum 0.75, step-size checkpoints after 22, 41, 57, 70, 80, 87, 93 and 99 of 100
iterations, halving on oscillation (``rho = 0.75``) or on a stalled best loss, restart
from the best point, and the last misclassified point as the adversarial example.

Every function is pure and jittable with ``logits_fn`` static; loops are ``lax`` loops
so the attack compiles once per batch shape. ``ops.grad_transform`` wraps the function
that differentiates the model (``common.AttackOps``; on CPU the experiment passes one
that keeps its convolutions on XLA:CPU's fast path inside the loop). Randomness is
drawn per example from ``fold_in(key, example_id)``, so a point's attack does not
depend on which other points share its batch (the reference draws one stream per
batch; the per-point distribution is the same).

A model with a randomised forward pass (the 'rand' version) is ``logits_fn(x, key)``
with a ``model_key``: every evaluation is a fresh draw and the gradient the mean over
``eot_iter`` draws (expectation over transformation), as the reference's ``eot_iter``.
``apgd_single_run(x_init=...)`` starts from a given point, so a run can be replayed
against the reference's ``attack_single_run`` from the same start.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sglr_jax.attacks import losses
from sglr_jax.attacks.common import (DEFAULT_OPS, AttackOps, LogitsFn, check_targets,
                                     initial, normalize, per_example, project,
                                     random_start, run_keys, run_until_fooled,
                                     target_labels)

NORMS = ('Linf', 'L2')


# ------------------------------------------------------------------ step-size schedule

def checkpoint_schedule(n_iter: int) -> list[tuple[int, int]]:
  """``[(iterations done, window length k), ...]`` at each step-size checkpoint.

  The reference's ``p_j``: first window ``max(int(0.22 n), 1)``, each next one
  ``max(int(0.03 n), 1)`` shorter, never below ``max(int(0.06 n), 1)``.
  """
  k = max(int(0.22 * n_iter), 1)
  k_min = max(int(0.06 * n_iter), 1)
  decr = max(int(0.03 * n_iter), 1)
  out, done = [], 0
  while done + k <= n_iter:
    done += k
    out.append((done, k))
    k = max(k - decr, k_min)
  return out


def checkpoints(n_iter: int) -> list[int]:
  """Iteration counts after which the step size is checked: [22, 41, ..., 99] for 100."""
  return [c for c, _ in checkpoint_schedule(n_iter)]


class StepControl(NamedTuple):
  """Per-example state of APGD's step-size rule (all ``[B]`` but ``loss_steps``)."""
  step_size: jax.Array
  loss_steps: jax.Array            # [n_iter, B], zero until written (the reference's buffer)
  loss_best: jax.Array
  loss_best_last_check: jax.Array
  reduced_last_check: jax.Array    # bool


def init_step_control(loss0, eps, n_iter: int, alpha: float = 2.0) -> StepControl:
  """State after the evaluation at the starting point (loss ``[B]``)."""
  b = loss0.shape[0]
  return StepControl(
      step_size=jnp.full((b,), alpha, jnp.float32) * eps,
      loss_steps=jnp.zeros((n_iter, b), jnp.float32),
      loss_best=loss0,
      loss_best_last_check=loss0,
      reduced_last_check=jnp.ones((b,), bool))


def oscillation(loss_steps, i, k, rho: float):
  """True where at most ``rho * k`` of the last ``k`` steps (ending at ``i``) increased the loss.

  Step ``j`` compares ``loss_steps[j]`` with ``loss_steps[j - 1]``; like the reference the
  index wraps, so the first window compares the first loss with the (still zero) last row.
  """
  n = loss_steps.shape[0]
  increased = loss_steps > jnp.roll(loss_steps, 1, axis=0)         # [n, B]
  j = jnp.arange(n)[:, None]
  window = (j > i - k) & (j <= i)
  count = jnp.sum(increased & window, axis=0).astype(jnp.float32)  # [B]
  return count <= jnp.asarray(k, jnp.float32) * jnp.float32(rho)


def step_control_update(ctrl: StepControl, loss, i, *, rho: float = 0.75):
  """Records the loss of (0-based) iteration ``i``; at a checkpoint decides the halving.

  Returns ``(ctrl, improved, reduce)``: ``improved`` marks a new best loss (the caller
  moves its best point there), ``reduce`` marks the examples whose step was halved (the
  caller restarts them from their best point). Pure, so it is tested on scripted traces.
  """
  n_iter = ctrl.loss_steps.shape[0]
  sched = checkpoint_schedule(n_iter)
  is_check_tab = np.zeros(n_iter, bool)
  k_tab = np.ones(n_iter, np.int32)
  for done, k in sched:
    is_check_tab[done - 1] = True
    k_tab[done - 1] = k
  is_check = jnp.asarray(is_check_tab)[i]
  k = jnp.asarray(k_tab)[i]

  loss_steps = ctrl.loss_steps.at[i].set(loss)
  improved = loss > ctrl.loss_best
  loss_best = jnp.where(improved, loss, ctrl.loss_best)
  no_improvement = ~ctrl.reduced_last_check & (ctrl.loss_best_last_check >= loss_best)
  reduce_here = oscillation(loss_steps, i, k, rho) | no_improvement
  reduce = is_check & reduce_here
  ctrl = StepControl(
      step_size=jnp.where(reduce, ctrl.step_size / 2.0, ctrl.step_size),
      loss_steps=loss_steps,
      loss_best=loss_best,
      loss_best_last_check=jnp.where(is_check, loss_best, ctrl.loss_best_last_check),
      reduced_last_check=jnp.where(is_check, reduce_here, ctrl.reduced_last_check))
  return ctrl, improved, reduce


def step_size_trace(loss0, loss_trace, eps: float = 1.0, rho: float = 0.75):
  """Runs the step-size rule on a scripted loss trace (``loss0 [B]``, ``loss_trace [n, B]``).

  Returns ``(step_sizes [n, B], reduced [n, B])`` after each iteration. The attack uses the
  same ``step_control_update``; this exists so the rule can be checked in isolation.
  """
  loss_trace = jnp.asarray(loss_trace, jnp.float32)
  ctrl = init_step_control(jnp.asarray(loss0, jnp.float32), eps, loss_trace.shape[0])

  def body(c, inp):
    i, loss = inp
    c, _, reduce = step_control_update(c, loss, i, rho=rho)
    return c, (c.step_size, reduce)

  _, (steps, reduced) = jax.lax.scan(
      body, ctrl, (jnp.arange(loss_trace.shape[0]), loss_trace))
  return steps, reduced


# ------------------------------------------------------------------------ attack parts

def apgd_step(x_adv, x_adv_old, grad, x, step_size, eps, momentum, norm: str):
  """Gradient step, projection, then momentum ``x + a (z - x) + (1 - a)(x - x_old)``."""
  step = per_example(step_size, x)
  if norm == 'Linf':
    z = project(x_adv + step * jnp.sign(grad), x, eps, norm)
  else:
    z = project(x_adv + step * normalize(grad, 'L2'), x, eps, norm)
  z = x_adv + (z - x_adv) * momentum + (x_adv - x_adv_old) * (1.0 - momentum)
  return project(z, x, eps, norm)


def loss_grad_fn(logits_fn: LogitsFn, loss_fn, ops: AttackOps = DEFAULT_OPS,
                 eot_iter: int = 1, randomised: bool = False):
  """``x -> (loss [B], logits [B, K], d sum(loss) / dx)``, through ``ops.grad_transform``.

  ``randomised``: ``logits_fn(x, key)`` is one draw of a randomised model and the
  function takes ``(x, key)``: the gradient is the mean over ``eot_iter`` draws
  (``fold_in(key, j)``, summed in order as the reference's EOT loop), the loss and
  logits those of the last draw (the reference's bookkeeping).
  """
  def total(x_, *key):
    logits = logits_fn(x_, *key)
    loss = loss_fn(logits)
    return jnp.sum(loss), (loss, logits)

  def fn(x_):
    (_, (loss, logits)), g = jax.value_and_grad(total, has_aux=True)(x_)
    return loss, logits, g

  def eot(x_, key):
    def draw(j, carry):
      (_, (loss, logits)), g = jax.value_and_grad(total, has_aux=True)(
          x_, jax.random.fold_in(key, j))
      return loss, logits, carry[2] + g
    shapes = jax.eval_shape(lambda z: total(z, key)[1], x_)
    init = tuple(jnp.zeros(a.shape, a.dtype) for a in shapes) + (jnp.zeros_like(x_),)
    loss, logits, g = jax.lax.fori_loop(0, eot_iter, draw, init)
    return loss, logits, g / jnp.float32(eot_iter)
  return ops.grad_transform(eot if randomised else fn)


def apgd_single_run(logits_fn: LogitsFn, loss_fn, x, y, keys, *, eps, n_iter: int,
                    norm: str = 'Linf', rho: float = 0.75, active=None,
                    early_stop: bool = False, x_init=None, eot_iter: int = 1,
                    model_key=None, ops: AttackOps = DEFAULT_OPS):
  """One APGD run from a random start.

  ``loss_fn(logits) -> [B]`` is maximised. Returns ``(x_best, robust, loss_best,
  x_last_adv)`` like the reference: the highest-loss point, whether every iterate was
  still classified ``y``, its loss, and the last misclassified iterate (the start where
  none was). ``early_stop`` (not in the reference) ends the run once no point of
  ``active`` is robust: the same verdicts, but earlier misclassified iterates.
  ``x_init``: the start instead of ``random_start(keys, ...)`` (clipped to [0, 1], not
  projected), as the reference's ``attack_single_run(x, y, x_init)``: given the same
  start both compute the same iterates (``tests/test_apgd.py``).
  ``model_key``: the model is randomised, ``logits_fn(x, key)``; evaluation ``t`` (the
  start is 0) draws from ``fold_in(model_key, t)`` and averages the gradient over
  ``eot_iter`` draws (EOT). Without it ``eot_iter`` is moot: a deterministic model's
  draws are identical, and so is their mean gradient.
  """
  randomised = model_key is not None
  loss_grad_ = loss_grad_fn(logits_fn, loss_fn, ops, eot_iter, randomised)
  if randomised:
    loss_grad = lambda z, t: loss_grad_(z, jax.random.fold_in(model_key, t))
  else:
    loss_grad = lambda z, t: loss_grad_(z)
  if x_init is None:
    x_adv = random_start(keys, x, eps, norm, on_sphere=True)
  else:
    x_adv = jnp.clip(jnp.asarray(x_init, jnp.float32), 0.0, 1.0)
  loss, logits, grad = loss_grad(x_adv, 0)
  robust = jnp.argmax(logits, -1) == y
  ctrl = init_step_control(loss, eps, n_iter)

  def body(i, s):
    x_adv, x_adv_old, grad, x_best, grad_best, x_last_adv, robust, ctrl = s
    momentum = jnp.where(i > 0, 0.75, 1.0)
    x_new = apgd_step(x_adv, x_adv_old, grad, x, ctrl.step_size, eps, momentum, norm)
    loss, logits, g = loss_grad(x_new, i + 1)
    correct = jnp.argmax(logits, -1) == y
    robust = robust & correct
    x_last_adv = jnp.where(per_example(~correct, x), x_new, x_last_adv)
    ctrl, improved, reduce = step_control_update(ctrl, loss, i, rho=rho)
    x_best = jnp.where(per_example(improved, x), x_new, x_best)
    grad_best = jnp.where(per_example(improved, x), g, grad_best)
    x_next = jnp.where(per_example(reduce, x), x_best, x_new)
    g_next = jnp.where(per_example(reduce, x), grad_best, g)
    return x_next, x_adv, g_next, x_best, grad_best, x_last_adv, robust, ctrl

  def cond(s):
    i, robust = s[0], s[7]
    if not early_stop:
      return i < n_iter
    return (i < n_iter) & jnp.any(robust if active is None else robust & active)

  init = (x_adv, x_adv, grad, x_adv, grad, x_adv, robust, ctrl)
  s = jax.lax.while_loop(cond, lambda s: (s[0] + 1,) + body(s[0], s[1:]),
                         (jnp.int32(0),) + init)
  _, _, _, _, x_best, _, x_last_adv, robust, ctrl = s
  return x_best, robust, ctrl.loss_best, x_last_adv


LOSSES = ('ce', 'dlr', 'dlr-targeted')
CLEAN_DRAW = 0x7fffffff  # the randomised model's draw for the clean logits


def one_draw(logits_fn: LogitsFn, model_key=None) -> LogitsFn:
  """``logits_fn`` itself, or for a randomised model (``model_key`` given) its draw
  ``CLEAN_DRAW``: the one forward pass of the clean points."""
  if model_key is None:
    return logits_fn
  return lambda z: logits_fn(z, jax.random.fold_in(model_key, CLEAN_DRAW))


def apgd_run(logits_fn: LogitsFn, x, y, run, *, eps, key, loss: str = 'ce',
             norm: str = 'Linf', n_iter: int = 100, n_restarts: int = 1, rho: float = 0.75,
             active=None, example_ids=None, early_stop: bool = False, clean_logits=None,
             eot_iter: int = 1, model_key=None, ops: AttackOps = DEFAULT_OPS):
  """Run number ``run`` (may be traced) of an APGD attack: ``(x_candidate, robust)``.

  Runs are numbered restart-fastest: for 'dlr-targeted' run ``r`` targets the class
  ranked ``2 + r // n_restarts`` by the clean logits (the reference's target loop).
  ``x_candidate`` is the last misclassified iterate (the start where there was none);
  ``robust`` says no iterate was misclassified. Randomness: ``fold_in(key, id)`` per
  example, then ``fold_in(., run)``. ``model_key``: a randomised ``logits_fn(x, key)``
  (see ``apgd_single_run``), drawn from ``fold_in(model_key, run)``.
  """
  if norm not in NORMS:
    raise ValueError(f'norm={norm!r}; allowed: {NORMS}')
  if loss == 'ce':
    loss_fn = lambda logits: losses.cross_entropy(logits, y)
  elif loss == 'dlr':
    loss_fn = lambda logits: losses.dlr(logits, y)
  elif loss == 'dlr-targeted':
    if clean_logits is None:
      clean_logits = one_draw(logits_fn, model_key)(x)
    target = target_labels(clean_logits, 2 + run // n_restarts)
    loss_fn = lambda logits: losses.targeted_dlr(logits, y, target)
  else:
    raise ValueError(f'loss={loss!r}; allowed: {LOSSES}')
  keys = run_keys(key, x.shape[0], example_ids, run)
  if model_key is not None:
    model_key = jax.random.fold_in(model_key, run)
  _, robust, _, x_last_adv = apgd_single_run(
      logits_fn, loss_fn, x, y, keys, eps=eps, n_iter=n_iter, norm=norm, rho=rho,
      active=active, early_stop=early_stop, eot_iter=eot_iter, model_key=model_key,
      ops=ops)
  return x_last_adv, robust


def apgd_attack(logits_fn: LogitsFn, x, y, *, eps, key, norm: str = 'Linf',
                loss: str = 'ce', n_iter: int = 100, n_restarts: int = 1,
                rho: float = 0.75, mask=None, example_ids=None, early_stop: bool = False,
                eot_iter: int = 1, model_key=None, ops: AttackOps = DEFAULT_OPS):
  """Untargeted APGD (``loss`` 'ce' or 'dlr'): the reference's ``APGDAttack.perturb``.

  Attacks the points classified correctly (and in ``mask`` when given); each restart
  attacks those still robust. Returns ``x_adv`` (same shape as ``x``): the last
  misclassified iterate where an attack succeeded, ``x`` itself elsewhere.
  ``early_stop``: see ``apgd_single_run`` (off: the reference's behaviour).
  ``eot_iter``, ``model_key``: a randomised model (the 'rand' version), see ``apgd_run``.
  """
  if loss not in ('ce', 'dlr'):
    raise ValueError(f'loss={loss!r}; allowed: ce, dlr (apgd_targeted_attack: targeted)')
  _, robust0 = initial(one_draw(logits_fn, model_key), x, y, mask)

  def run(r, active):
    return apgd_run(logits_fn, x, y, r, eps=eps, key=key, loss=loss, norm=norm,
                    n_iter=n_iter, n_restarts=n_restarts, rho=rho, active=active,
                    example_ids=example_ids, early_stop=early_stop, eot_iter=eot_iter,
                    model_key=model_key, ops=ops)

  x_adv, _ = run_until_fooled(x, robust0, n_restarts, run)
  return x_adv


def apgd_targeted_attack(logits_fn: LogitsFn, x, y, *, eps, key, norm: str = 'Linf',
                         n_iter: int = 100, n_restarts: int = 1,
                         n_target_classes: int = 9, rho: float = 0.75, mask=None,
                         example_ids=None, early_stop: bool = False,
                         ops: AttackOps = DEFAULT_OPS):
  """APGD-T: APGD on the targeted DLR loss, targets ranked 2..n_target_classes+1.

  The reference's ``APGDAttack_targeted.perturb``: for each target rank, each restart
  attacks the points still robust. Returns ``x_adv`` like ``apgd_attack``.
  """
  clean_logits, robust0 = initial(logits_fn, x, y, mask)
  check_targets(clean_logits.shape[-1], n_target_classes, dlr=True)

  def run(r, active):
    return apgd_run(logits_fn, x, y, r, eps=eps, key=key, loss='dlr-targeted', norm=norm,
                    n_iter=n_iter, n_restarts=n_restarts, rho=rho, active=active,
                    example_ids=example_ids, early_stop=early_stop,
                    clean_logits=clean_logits, ops=ops)

  x_adv, _ = run_until_fooled(x, robust0, n_target_classes * n_restarts, run)
  return x_adv
