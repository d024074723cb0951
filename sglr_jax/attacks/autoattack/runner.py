"""The host side of the ensemble: regathering the robust points into padded batches,
running the attacks in order, and compiling every program up front."""
from __future__ import annotations

import collections
import concurrent.futures
import functools
import itertools
import os
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from sglr_jax import errors
from sglr_jax.attacks.autoattack import checks, hosts, programs, resume
from sglr_jax.attacks.autoattack.config import (ATTACKS, AutoAttackConfig, check_attack,
                                                n_runs, version_setup)
from sglr_jax.attacks.common import DEFAULT_OPS, AttackOps, LogitsFn, check_targets
from sglr_jax.attacks.square import SquareState


def padded_batches(indices: np.ndarray, batch_size: int):
  """Yields ``(real indices, padded indices [batch_size], mask [batch_size])``."""
  for start in range(0, len(indices), batch_size):
    real = indices[start:start + batch_size]
    padded = np.concatenate([real, np.full(batch_size - len(real), real[0], real.dtype)])
    yield real, padded, np.arange(batch_size) < len(real)


def map_batches(fn, indices: np.ndarray, batch_size: int):
  """``fn(padded, mask)`` on every padded batch of ``indices``; yields ``(real, numpy
  outputs cut to the real rows, on every process)``, dispatching each batch before
  waiting on the last."""
  pending = None
  for batch in list(padded_batches(indices, batch_size)) + [None]:
    launched = None if batch is None else (batch[0], fn(batch[1], batch[2]))
    if pending is not None:
      real, out = pending
      yield real, jax.tree.map(lambda a, m=len(real): hosts.to_numpy(a)[:m], out)
    pending = launched


def placer(sharding=None):
  """``put(*args)``: the numpy batch arrays among ``args`` (pytrees) placed with
  ``sharding`` (e.g. split over a ('data',) mesh, so every device runs the programs on
  its rows; a mesh over several processes: ``hosts.place``); scalars and other leaves
  as they are."""
  def put(*args):
    if sharding is None:
      return args
    return jax.tree.map(lambda a: hosts.place(a, sharding)
                        if isinstance(a, np.ndarray) and a.ndim else a, args)
  put.sharding = sharding  # the programs run per device over its batch axis
  return put


def predict(logits_fn, x, batch_size: int = 250, sharding=None, variables=None,
            key=None) -> np.ndarray:
  """Predicted labels ``[N]`` in fixed-size padded batches (one compilation).
  ``logits_fn(x)``, or ``logits_fn(variables, x)`` when ``variables`` is given; a
  ``programs.Randomised`` model draws from ``fold_in(key, first index of the batch)``."""
  x = np.asarray(x, np.float32)
  out = np.empty(len(x), np.int64)
  put = placer(sharding)
  model_fn, variables = programs.as_model(logits_fn, variables)
  randomised = isinstance(model_fn, programs.Randomised)
  if len(x):
    fn = lambda p, _: programs.predict_batch(
        model_fn, variables, *put(x[p]), jax.random.fold_in(key, p[0]) if randomised
        else None, sharding=sharding)
    for real, pred in map_batches(fn, np.arange(len(x)), batch_size):
      out[real] = pred
  return out


def _attack_runs(model_fn, variables, name, cfg, x, y, todo, batch_size, key, eps, bar, put,
                 ops, saved=None, boundary=None):
  """Runs of a run-based attack; returns ``(candidates, fooled indices)``. ``saved``:
  ``{'step': next run, 'arrays': {cand, robust}}`` to continue from; ``boundary(step,
  arrays)`` is called after every run."""
  cand = x.copy()
  robust = np.zeros(len(x), bool)
  robust[todo] = True
  r0 = 0
  if saved is not None:
    cand, robust, r0 = saved['arrays']['cand'].copy(), saved['arrays']['robust'].copy(), \
        saved['step']
    bar.update(r0)
  for r in range(r0, n_runs(name, cfg)):
    left = np.flatnonzero(robust)
    if not len(left):
      break
    fn = lambda p, m, r=r: programs.run_batch(
        model_fn, name, cfg, variables, *put(x[p], y[p], m, p.astype(np.int32)), key, eps,
        np.int32(r), ops=ops, sharding=put.sharding)
    for real, (adv, fooled) in map_batches(fn, left, batch_size):
      cand[real[fooled]] = adv[fooled]
      robust[real[fooled]] = False
    bar.update(1)
    bar.set_postfix(attacked=len(left), left=int(robust.sum()))
    if boundary is not None:
      boundary(r + 1, dict(cand=cand, robust=robust))
  idx = todo[~robust[todo]]
  return cand[idx], idx


def _attack_square(model_fn, variables, cfg, x, y, todo, batch_size, key, eps, bar, put,
                   ops, saved=None, boundary=None):
  """Square with the still-correct points regathered every few queries; ``saved`` and
  ``boundary`` as in ``_attack_runs``, per slice of queries."""
  del ops  # Square differentiates nothing
  x_best = x.copy()
  margin = np.zeros(len(x), np.float32)
  loss = np.zeros(len(x), np.float32)
  init = lambda p, _: programs.square_init_batch(
      model_fn, cfg, variables, *put(x[p], y[p], p.astype(np.int32)), key, eps,
      sharding=put.sharding)
  first = 0
  if saved is not None:
    a = saved['arrays']
    x_best, margin, loss, first = (a['x_best'].copy(), a['margin'].copy(), a['loss'].copy(),
                                   saved['step'])
  else:
    for real, st in map_batches(init, todo, batch_size):
      x_best[real], margin[real], loss[real] = st
  for start in range(first, cfg.square_n_queries, cfg.square_queries_per_call):
    left = todo[margin[todo] > 0]
    if not len(left):
      break

    def step(p, m, start=start):
      state = SquareState(x_best[p], margin[p], loss[p])
      return programs.square_batch(model_fn, cfg, variables,
                                   *put(x[p], y[p], state, m, p.astype(np.int32)),
                                   key, eps, np.int32(start), sharding=put.sharding)
    for real, st in map_batches(step, left, batch_size):
      x_best[real], margin[real], loss[real] = st
    bar.update(1)
    bar.set_postfix(queries=start + cfg.square_queries_per_call, left=len(left))
    if boundary is not None:
      boundary(start + cfg.square_queries_per_call,
               dict(x_best=x_best, margin=margin, loss=loss))
  return x_best[todo], todo


def num_classes(model_fn, variables, example_shape) -> int:
  logits_fn = programs.bind(model_fn, variables, jax.random.key(0))
  return int(jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(
      (1,) + tuple(example_shape), jnp.float32)).shape[-1])


def _draws(model_fn, variables, key):
  """``x -> logits`` for the checks: a randomised model draws anew at every call."""
  if not isinstance(model_fn, programs.Randomised):
    return programs.bind(model_fn, variables)
  count = itertools.count()
  return lambda z: model_fn.fn(variables, z, jax.random.fold_in(key, next(count)))


def _check_targets(model_fn, variables, cfg, attacks, example_shape):
  """The targeted attacks' target counts against the model's number of classes."""
  if not any(a in attacks for a in ('apgd-t', 'fab-t')):
    return
  k = num_classes(model_fn, variables, example_shape)
  if 'apgd-t' in attacks:
    check_targets(k, cfg.apgd_t_n_target_classes, dlr=True)
  if 'fab-t' in attacks:
    check_targets(k, cfg.fab_n_target_classes)


def run_autoattack(logits_fn: LogitsFn, x, y, eps: float, *, key, batch_size: int = 250,
                   attacks: Optional[Sequence[str]] = None,
                   config: Optional[AutoAttackConfig] = None, progress: bool = True,
                   sharding=None, variables=None, ops: AttackOps = DEFAULT_OPS,
                   sanity_checks: bool = True, state_path: Optional[str] = None,
                   state_every_s: float = 60.0, hook=None, version: str = 'standard',
                   randomised: bool = False) -> dict:
  """Runs the ensemble on ``x [N, H, W, C]`` (float in [0, 1]) with labels ``y [N]``.

  ``version``: 'standard' (``attacks`` default to the standard four) or 'rand' (default
  APGD-CE and APGD-DLR, one restart, gradients averaged over twenty draws of the
  model: ``config.version_setup``). ``randomised``: the model's forward pass is random
  and takes a key last, ``logits_fn(x, key)`` (``logits_fn(variables, x, key)``); each
  draw folds its own key (``programs.Randomised``), so a run is still reproducible
  for a key and batch size. A deterministic model gains nothing from 'rand'.

  ``sharding``: where each padded batch goes (e.g. ``NamedSharding(mesh, P('data'))``
  to split it over the devices of a mesh; ``batch_size`` must divide evenly); default:
  the default device. A mesh over the devices of several processes (``jax.distributed``)
  splits every batch over all of them: each process calls with the same arguments and
  gets the whole result (``hosts``). ``variables``: if given, the model is
  ``logits_fn(variables, x)`` and the variables are an argument of the compiled
  programs, so another checkpoint of the same model (same ``logits_fn`` object) runs
  without compiling again. ``ops``: how the attacks loop and differentiate
  (``common.AttackOps``). ``sanity_checks``: run ``checks.before`` on the first batch
  and ``checks.after`` on the results.
  ``state_path``: an npz file (``resume``; any ``etils.epath`` path, e.g. gs://) saved at
  every attack boundary and, inside an attack, at the first run boundary after
  ``state_every_s`` seconds; a run started with an existing one continues from it, with
  exactly the results of an uninterrupted run. Across processes, process 0 writes it and
  reads it for all.
  ``hook(attack, step)``: called at every run boundary (``step``: the next run or query)
  and after each attack (``step`` None), after any save (tests interrupt runs there).

  Returns a dict: ``x_adv`` (numpy, clean points where no attack succeeded), ``robust``
  (bool ``[N]``), ``robust_acc_after`` (ordered attack -> robust accuracy after it),
  ``clean_acc``, ``seconds`` (ordered attack -> wall time), ``flags`` (the checks'
  findings, dicts ``{'check', 'message'}``), ``max_perturbation`` (in ``config.norm``)
  and ``nan_count`` of ``x_adv``; ``broken_by`` (``[N]`` str: the attack that broke
  each point, '' where none did).
  """
  attacks, cfg = version_setup(version, attacks, config or AutoAttackConfig())
  for name in attacks:
    check_attack(name, cfg)
  x = np.asarray(x, np.float32)
  y = np.asarray(y).astype(np.int32)
  eps_arr = jnp.float32(eps)
  put = placer(sharding)
  model_fn, variables = programs.as_model(logits_fn, variables, randomised)
  pkey = jax.random.fold_in(key, programs.MODEL_STREAM)  # the predictions' draws
  flags = []
  if len(x) and sanity_checks:
    first = _draws(model_fn, variables, jax.random.fold_in(pkey, 1 + len(ATTACKS)))
    flags += checks.before(first, x[:batch_size], y[:batch_size],
                           num_classes(model_fn, variables, x.shape[1:]), attacks, cfg,
                           randomized=version != 'rand')
  if len(x):
    _check_targets(model_fn, variables, cfg, attacks, x.shape[1:])
    warm_up(model_fn, variables, cfg, attacks, x.shape[1:], batch_size,
            jax.random.fold_in(key, 0), sharding, progress, ops)
  hosts.sync()
  robust = predict(model_fn, x, batch_size, sharding, variables,
                   jax.random.fold_in(pkey, 0)) == y
  clean_acc = float(robust.mean()) if len(x) else 0.0
  x_adv = x.copy()
  acc_after, seconds = collections.OrderedDict(), collections.OrderedDict()
  done, partial, store = [], None, None
  broken_by = np.full(len(x), -1, np.int8)  # index in ``attacks`` of the breaking attack
  if state_path:
    key_data = jax.random.key_data(key) if jnp.issubdtype(
        key.dtype, jax.dtypes.prng_key) else key
    fp = resume.fingerprint(x, y, eps, attacks, cfg, key_data, variables,
                            randomised=isinstance(model_fn, programs.Randomised))
    store = resume.StateFile(state_path, fp, state_every_s)
    saved = store.load()
    if saved is not None:
      done, partial = saved['done'], saved['partial']
      robust, x_adv = saved['robust'].copy(), saved['x_adv'].copy()
      broken_by = saved['broken_by'].copy()
      acc_after.update(saved['acc_after'])
      seconds.update(saved['seconds'])

  for name in attacks:
    if name in done:
      continue
    start = time.perf_counter()
    todo = np.flatnonzero(robust)
    akey = jax.random.fold_in(key, ATTACKS.index(name))
    stages = (-(-cfg.square_n_queries // cfg.square_queries_per_call) if name == 'square'
              else n_runs(name, cfg))
    with tqdm(total=stages, desc=name, unit='run' if name != 'square' else 'call',
              disable=not progress, leave=True) as bar:
      if len(todo):
        attack = _attack_square if name == 'square' else functools.partial(
            _attack_runs, name=name)
        def boundary(step, arrays, name=name):
          if store is not None and store.due():
            store.save(done, acc_after, seconds, robust, x_adv, broken_by,
                       dict(attack=name, step=step, arrays=arrays))
          if hook is not None:
            hook(name, step)
        cand, idx = attack(model_fn, variables, cfg=cfg, x=x, y=y, todo=todo,
                           batch_size=batch_size, key=akey, eps=eps_arr, bar=bar, put=put,
                           ops=ops, boundary=boundary,
                           saved=partial if partial and partial['attack'] == name else None)
        # like the reference: a point counts as broken if the model misclassifies the
        # returned point (the attacks' own verdicts only chose what to return)
        fooled = predict(model_fn, cand, batch_size, sharding, variables,
                         jax.random.fold_in(pkey, 1 + ATTACKS.index(name))) != y[idx]
        x_adv[idx[fooled]] = cand[fooled]
        robust[idx[fooled]] = False
        broken_by[idx[fooled]] = list(attacks).index(name)
      bar.set_postfix(robust_acc=f'{robust.mean():.2%}' if len(x) else '-')
    acc_after[name] = float(robust.mean()) if len(x) else 0.0
    seconds[name] = time.perf_counter() - start
    done.append(name)
    if store is not None:
      store.save(done, acc_after, seconds, robust, x_adv, broken_by)
    if hook is not None:
      hook(name, None)
  summary = checks.summary(x_adv, x, cfg.norm)
  if sanity_checks:
    flags += checks.check_square(acc_after) + checks.check_summary(summary, eps, cfg.norm)
  return dict(x_adv=x_adv, robust=robust, robust_acc_after=acc_after,
              clean_acc=clean_acc, seconds=seconds, flags=flags,
              broken_by=np.asarray([attacks[i] if i >= 0 else '' for i in broken_by]),
              **summary)


def _check_split(batch_size: int, sharding):
  axis = programs.batch_axis(sharding)
  if axis is not None and batch_size % axis[0].shape[axis[1]]:
    raise errors.ConfigError(f'batch_size={batch_size} does not split evenly over the '
                             f'{axis[0].shape[axis[1]]} devices of the sharding')


def _usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def warm_up(model_fn: programs.ModelFn, variables, cfg: AutoAttackConfig,
            attacks: Sequence[str], example_shape, batch_size: int, key, sharding,
            progress: bool = False, ops: AttackOps = DEFAULT_OPS,
            compile_threads: int = 0):
  """Compiles (ahead of time, nothing runs) every program the ensemble will call, with
  the argument types and shardings of the real calls, so those find them compiled.

  XLA compiles a program on one core and the ensemble's 5-6 programs are independent,
  so they compile side by side, ``compile_threads`` at a time (0: one per usable core)
  instead of one after the other as the attacks reach them.
  """
  _check_split(batch_size, sharding)
  put = placer(sharding)
  n = batch_size
  x, y, mask, ids = put(np.zeros((n,) + tuple(example_shape), np.float32),
                        np.zeros(n, np.int32), np.zeros(n, bool), np.arange(n, dtype=np.int32))
  eps, first = jnp.float32(0.0), np.int32(0)

  def square_batch_args():
    shapes = programs.square_init_batch.eval_shape(model_fn, cfg, variables, x, y, ids, key,
                                                   eps, sharding=sharding)
    state = SquareState(*put(*(np.zeros(a.shape, a.dtype) for a in shapes)))  # as the host
    return (model_fn, cfg, variables, x, y, state, mask, ids, key, eps, first)

  pkey = key if isinstance(model_fn, programs.Randomised) else None
  jobs = [lambda: programs.predict_batch.lower(model_fn, variables, x, pkey,
                                               sharding=sharding)]
  for name in attacks:
    check_attack(name, cfg)
    if name == 'square':
      jobs.append(lambda: programs.square_init_batch.lower(
          model_fn, cfg, variables, x, y, ids, key, eps, sharding=sharding))
      jobs.append(lambda: programs.square_batch.lower(*square_batch_args(),
                                                      sharding=sharding))
    else:
      jobs.append(functools.partial(programs.run_batch.lower, model_fn, name, cfg, variables,
                                    x, y, mask, ids, key, eps, first, ops=ops,
                                    sharding=sharding))
  threads = min(len(jobs), max(1, compile_threads or _usable_cores()))
  with tqdm(total=len(jobs), desc='compile', unit='program', disable=not progress,
            leave=False) as bar, concurrent.futures.ThreadPoolExecutor(threads) as pool:
    futures = [pool.submit(lambda lower: lower().compile(), job) for job in jobs]
    for done in concurrent.futures.as_completed(futures):
      done.result()
      bar.update(1)


def compile_attacks(logits_fn, example_shape, *, batch_size: int = 250,
                    attacks: Optional[Sequence[str]] = None,
                    config: Optional[AutoAttackConfig] = None, variables=None,
                    sharding=None, key=None, ops: AttackOps = DEFAULT_OPS,
                    version: str = 'standard', randomised: bool = False):
  """Compiles the ensemble's programs up front (``run_autoattack`` does it too), e.g.
  to time attacks without their compilation. ``key``: of the type the attacks will get
  (a typed ``jax.random.key`` by default; a raw ``PRNGKey`` compiles other programs)."""
  attacks, cfg = version_setup(version, attacks, config or AutoAttackConfig())
  model_fn, variables = programs.as_model(logits_fn, variables, randomised)
  warm_up(model_fn, variables, cfg, attacks, example_shape, batch_size,
          jax.random.key(0) if key is None else key, sharding, ops=ops)
