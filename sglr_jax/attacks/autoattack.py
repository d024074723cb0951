"""AutoAttack's standard ensemble (Croce and Hein, 2020): APGD-CE, APGD-T, FAB-T, Square.

Runs the attacks in order, each only on the points still robust, and keeps for every
point the first adversarial example found (the worst case over the ensemble). As in the
reference, an attack's restarts and target classes each work only on the points still
robust, and Square's queries only on the points still correctly classified: between
runs (and every ``square_queries_per_call`` queries) the remaining points are gathered
again into batches. Every batch has ``batch_size`` rows (padded with masked copies), so
each program compiles once whatever the robust set; run indices, eps, keys and query
offsets are traced arguments. All programs are compiled up front, one per core at a
time, and over a mesh each device runs them on its own rows (``shard_map``, no
collectives).

Seeding: attack ``a`` on the point with index ``i`` in ``x`` draws from
``fold_in(fold_in(key, a), i)``, so results are reproducible bit for bit for a key and
batch size, and do not depend on which other points share a batch.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from sglr_jax import host_devices
from sglr_jax.attacks.apgd import apgd_run, check_targets
from sglr_jax.attacks.fab import fab_targeted_run
from sglr_jax.attacks.square import SquareState, square_init, square_keys, square_queries

LogitsFn = Callable[[jax.Array], jax.Array]
ModelFn = Callable[[Any, jax.Array], jax.Array]  # (variables, x) -> logits

STANDARD_ATTACKS = ('apgd-ce', 'apgd-t', 'fab-t', 'square')
ATTACKS = ('apgd-ce', 'apgd-t', 'fab-t', 'square', 'apgd-dlr')  # index = key stream


@dataclasses.dataclass(frozen=True)
class AutoAttackConfig:
  """Parameters of each attack; the defaults are the reference's 'standard' version."""
  norm: str = 'Linf'
  rho: float = 0.75
  apgd_n_iter: int = 100
  apgd_n_restarts: int = 1
  apgd_t_n_iter: int = 100
  apgd_t_n_restarts: int = 1
  apgd_t_n_target_classes: int = 9
  fab_n_iter: int = 100
  fab_n_restarts: int = 1
  fab_n_target_classes: int = 9
  fab_alpha_max: float = 0.1
  fab_eta: float = 1.05
  fab_beta: float = 0.9
  square_n_queries: int = 5000
  square_p_init: float = 0.8
  # How often Square's remaining points are gathered again (a throughput knob only).
  square_queries_per_call: int = 100
  # Not in the reference: end APGD / FAB iterations once every point of a batch is
  # decided. Same robust accuracy, faster on weak models, but the adversarial points
  # returned are earlier iterates (APGD) or not the smallest found (FAB).
  early_stop: bool = False


# eval.autoattack_budget: 'standard' is the reference's; 'smoke' only checks the plumbing
# (tests, dry runs) and gives no robustness number worth reporting.
BUDGETS = {
    'standard': AutoAttackConfig(),
    'smoke': AutoAttackConfig(apgd_n_iter=10, apgd_t_n_iter=10, apgd_t_n_target_classes=3,
                              fab_n_iter=10, fab_n_target_classes=3, square_n_queries=100,
                              square_queries_per_call=50),
}


def n_runs(name: str, cfg: AutoAttackConfig) -> int:
  """Restarts x target classes of an attack (Square: its restarts)."""
  return {'apgd-ce': cfg.apgd_n_restarts, 'apgd-dlr': cfg.apgd_n_restarts,
          'apgd-t': cfg.apgd_t_n_target_classes * cfg.apgd_t_n_restarts,
          'fab-t': cfg.fab_n_target_classes * cfg.fab_n_restarts, 'square': 1}[name]


def _check(name: str, cfg: AutoAttackConfig):
  if name not in ATTACKS:
    raise ValueError(f'attack {name!r} is unknown; allowed: {", ".join(ATTACKS)}')
  if name in ('fab-t', 'square') and cfg.norm != 'Linf':
    raise NotImplementedError(f'{name} is implemented for Linf only, not {cfg.norm}')


def run_fn(name: str, cfg: AutoAttackConfig):
  """``(logits_fn, x, y, run, *, eps, key, active, example_ids) -> (x_cand, robust)``."""
  _check(name, cfg)
  if name in ('apgd-ce', 'apgd-dlr'):
    return functools.partial(apgd_run, loss=name[5:], norm=cfg.norm, rho=cfg.rho,
                             n_iter=cfg.apgd_n_iter, n_restarts=cfg.apgd_n_restarts,
                             early_stop=cfg.early_stop)
  if name == 'apgd-t':
    return functools.partial(apgd_run, loss='dlr-targeted', norm=cfg.norm, rho=cfg.rho,
                             n_iter=cfg.apgd_t_n_iter, n_restarts=cfg.apgd_t_n_restarts,
                             early_stop=cfg.early_stop)
  if name == 'fab-t':
    return functools.partial(fab_targeted_run, n_iter=cfg.fab_n_iter,
                             n_restarts=cfg.fab_n_restarts, alpha_max=cfg.fab_alpha_max,
                             eta=cfg.fab_eta, beta=cfg.fab_beta, early_stop=cfg.early_stop)
  raise ValueError(f'{name} has no runs (square: square_init_batch / square_batch)')


# ---------------------------------------------------------------- the jitted programs
#
# With a ``NamedSharding`` over one mesh axis, each program is ``shard_map``-ed: every
# device runs the attack on its own rows, with no collective at all (the attacks are
# per example). Left to XLA's automatic partitioning, FAB-T's program exchanged rows
# between devices every iteration (its ``[x1; x0]`` projection batch, the target-logit
# gathers: 20 all-to-alls, 14 all-gathers, 12 permutes, 7 all-reduces) and Square's
# synchronised the devices at every query.

def _batch_axis(sharding) -> Optional[tuple]:
  """``(mesh, axis)`` when ``sharding`` splits dimension 0 over one mesh axis, else None."""
  if not isinstance(sharding, jax.sharding.NamedSharding):
    return None
  spec = tuple(sharding.spec)
  if not spec or not isinstance(spec[0], str) or any(a is not None for a in spec[1:]):
    return None
  return sharding.mesh, spec[0]


def _per_device(fn, sharding, in_batched: Sequence[bool]):
  """``fn`` as a per-device program over the batch axis of ``sharding`` (``fn`` itself
  when there is none). ``in_batched[i]``: argument ``i`` (a pytree) is split by rows, the
  others are replicated; every output is split by rows."""
  axis = _batch_axis(sharding)
  if axis is None:
    return fn
  mesh, name = axis
  in_specs = tuple(P(name) if b else P() for b in in_batched)
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P(name), check_vma=False)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), static_argnames=('sharding',))
def run_batch(model_fn: ModelFn, name: str, cfg: AutoAttackConfig, variables, x, y, mask,
              example_ids, key, eps, run, *, sharding=None):
  """One run of one attack on one padded batch: ``(x_candidate, fooled)``."""
  def program(variables, x, y, mask, example_ids, key, eps, run):
    logits_fn = functools.partial(model_fn, variables)
    cand, robust = run_fn(name, cfg)(logits_fn, x, y, run, eps=eps, key=key, active=mask,
                                     example_ids=example_ids)
    return cand, mask & ~robust
  batched = (False, True, True, True, True, False, False, False)
  return _per_device(program, sharding, batched)(variables, x, y, mask, example_ids, key,
                                                 eps, run)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=('sharding',))
def square_init_batch(model_fn: ModelFn, cfg: AutoAttackConfig, variables, x, y,
                      example_ids, key, eps, *, sharding=None):
  def program(variables, x, y, example_ids, key, eps):
    logits_fn = functools.partial(model_fn, variables)
    keys = square_keys(key, x.shape[0], example_ids)
    return square_init(logits_fn, x, y, keys, eps=eps, n_queries=cfg.square_n_queries)
  batched = (False, True, True, True, False, False)
  return _per_device(program, sharding, batched)(variables, x, y, example_ids, key, eps)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=('sharding',))
def square_batch(model_fn: ModelFn, cfg: AutoAttackConfig, variables, x, y, state, mask,
                 example_ids, key, eps, start, *, sharding=None):
  """Queries ``[start, start + square_queries_per_call)`` on one padded batch."""
  def program(variables, x, y, state, mask, example_ids, key, eps, start):
    logits_fn = functools.partial(model_fn, variables)
    keys = square_keys(key, x.shape[0], example_ids)
    return square_queries(logits_fn, x, y, state, keys, mask, eps=eps, start=start,
                          stop=start + cfg.square_queries_per_call,
                          n_queries=cfg.square_n_queries, p_init=cfg.square_p_init)
  batched = (False, True, True, True, True, True, False, False, False)
  return _per_device(program, sharding, batched)(variables, x, y, state, mask, example_ids,
                                                 key, eps, start)


@functools.partial(jax.jit, static_argnums=0, static_argnames=('sharding',))
def predict_batch(model_fn: ModelFn, variables, x, *, sharding=None):
  program = lambda variables, x: jnp.argmax(model_fn(variables, x), axis=-1)
  return _per_device(program, sharding, (False, True))(variables, x)


@functools.lru_cache(maxsize=64)
def _without_variables(logits_fn: LogitsFn) -> ModelFn:
  """``logits_fn(x)`` as a ``model_fn(variables, x)`` ignoring its (empty) variables;
  cached, so the programs of one ``logits_fn`` compile once."""
  return lambda variables, x: logits_fn(x)


def _model(logits_fn, variables):
  """``(model_fn, variables)`` for the programs, from the caller's convention."""
  if variables is None:
    return _without_variables(logits_fn), ()
  return logits_fn, variables


def compiled_programs() -> int:
  """How many programs the ensemble has compiled (to check nothing recompiles)."""
  return sum(f._cache_size() for f in  # pylint: disable=protected-access
             (run_batch, square_init_batch, square_batch, predict_batch))


# ------------------------------------------------------------------------ host side

def _padded_batches(indices: np.ndarray, batch_size: int):
  """Yields ``(real indices, padded indices [batch_size], mask [batch_size])``."""
  for start in range(0, len(indices), batch_size):
    real = indices[start:start + batch_size]
    padded = np.concatenate([real, np.full(batch_size - len(real), real[0], real.dtype)])
    yield real, padded, np.arange(batch_size) < len(real)


def _map_batches(fn, indices: np.ndarray, batch_size: int):
  """``fn(padded, mask)`` on every padded batch of ``indices``; yields ``(real, numpy
  outputs cut to the real rows)``, dispatching each batch before waiting on the last."""
  pending = None
  for batch in list(_padded_batches(indices, batch_size)) + [None]:
    launched = None if batch is None else (batch[0], fn(batch[1], batch[2]))
    if pending is not None:
      real, out = pending
      yield real, jax.tree.map(lambda a, m=len(real): np.asarray(a)[:m], out)
    pending = launched


def placer(sharding=None):
  """``put(*args)``: the numpy batch arrays among ``args`` (pytrees) placed with
  ``sharding`` (e.g. split over a ('data',) mesh, so XLA partitions every attack
  program over its devices); scalars and other leaves as they are."""
  def put(*args):
    if sharding is None:
      return args
    return jax.tree.map(lambda a: jax.device_put(a, sharding)
                        if isinstance(a, np.ndarray) and a.ndim else a, args)
  put.sharding = sharding  # the programs run per device over its batch axis
  return put


def predict(logits_fn, x, batch_size: int = 250, sharding=None, variables=None) -> np.ndarray:
  """Predicted labels ``[N]`` in fixed-size padded batches (one compilation).
  ``logits_fn(x)``, or ``logits_fn(variables, x)`` when ``variables`` is given."""
  x = np.asarray(x, np.float32)
  out = np.empty(len(x), np.int64)
  put = placer(sharding)
  model_fn, variables = _model(logits_fn, variables)
  if len(x):
    for real, pred in _map_batches(lambda p, _: predict_batch(model_fn, variables,
                                                              *put(x[p]), sharding=sharding),
                                   np.arange(len(x)), batch_size):
      out[real] = pred
  return out


def _attack_runs(model_fn, variables, name, cfg, x, y, todo, batch_size, key, eps, bar, put):
  """Runs of a run-based attack; returns ``(candidates, fooled indices)``."""
  cand = x.copy()
  robust = np.zeros(len(x), bool)
  robust[todo] = True
  for r in range(n_runs(name, cfg)):
    left = np.flatnonzero(robust)
    if not len(left):
      break
    fn = lambda p, m, r=r: run_batch(model_fn, name, cfg, variables, *put(x[p], y[p], m,
                                                              p.astype(np.int32)),
                                     key, eps, np.int32(r), sharding=put.sharding)
    for real, (adv, fooled) in _map_batches(fn, left, batch_size):
      cand[real[fooled]] = adv[fooled]
      robust[real[fooled]] = False
    bar.update(1)
    bar.set_postfix(attacked=len(left), left=int(robust.sum()))
  idx = todo[~robust[todo]]
  return cand[idx], idx


def _attack_square(model_fn, variables, cfg, x, y, todo, batch_size, key, eps, bar, put):
  """Square with the still-correct points regathered every few queries."""
  x_best = x.copy()
  margin = np.zeros(len(x), np.float32)
  loss = np.zeros(len(x), np.float32)
  init = lambda p, _: square_init_batch(model_fn, cfg, variables,
                                        *put(x[p], y[p], p.astype(np.int32)), key, eps,
                                        sharding=put.sharding)
  for real, st in _map_batches(init, todo, batch_size):
    x_best[real], margin[real], loss[real] = st
  for start in range(0, cfg.square_n_queries, cfg.square_queries_per_call):
    left = todo[margin[todo] > 0]
    if not len(left):
      break

    def step(p, m, start=start):
      state = SquareState(x_best[p], margin[p], loss[p])
      return square_batch(model_fn, cfg, variables,
                          *put(x[p], y[p], state, m, p.astype(np.int32)),
                          key, eps, np.int32(start), sharding=put.sharding)
    for real, st in _map_batches(step, left, batch_size):
      x_best[real], margin[real], loss[real] = st
    bar.update(1)
    bar.set_postfix(queries=start + cfg.square_queries_per_call, left=len(left))
  return x_best[todo], todo


def run_autoattack(logits_fn: LogitsFn, x, y, eps: float, *, key, batch_size: int = 250,
                   attacks: Sequence[str] = STANDARD_ATTACKS,
                   config: Optional[AutoAttackConfig] = None, progress: bool = True,
                   sharding=None, variables=None) -> dict:
  """Runs the ensemble on ``x [N, H, W, C]`` (float in [0, 1]) with labels ``y [N]``.

  ``sharding``: where each padded batch goes (e.g. ``NamedSharding(mesh, P('data'))``
  to split it over the devices of a mesh; ``batch_size`` must divide evenly); default:
  the default device. ``variables``: if given, the model is ``logits_fn(variables, x)``
  and the variables are an argument of the compiled programs, so another checkpoint of
  the same model (same ``logits_fn`` object) runs without compiling again.

  Returns a dict: ``x_adv`` (numpy, clean points where no attack succeeded), ``robust``
  (bool ``[N]``), ``robust_acc_after`` (ordered attack -> robust accuracy after it),
  ``clean_acc``, and ``seconds`` (ordered attack -> wall time).
  """
  cfg = config or AutoAttackConfig()
  for name in attacks:
    _check(name, cfg)
  x = np.asarray(x, np.float32)
  y = np.asarray(y).astype(np.int32)
  eps_arr = jnp.float32(eps)
  put = placer(sharding)
  model_fn, variables = _model(logits_fn, variables)
  if len(x) and any(a in attacks for a in ('apgd-t', 'fab-t')):
    k = int(jax.eval_shape(model_fn, variables, jax.ShapeDtypeStruct(
        (1,) + x.shape[1:], jnp.float32)).shape[-1])
    if 'apgd-t' in attacks:
      check_targets(k, cfg.apgd_t_n_target_classes, dlr=True)
    if 'fab-t' in attacks:
      check_targets(k, cfg.fab_n_target_classes)
  if len(x):
    _warm_up(model_fn, variables, cfg, attacks, x.shape[1:], batch_size,
             jax.random.fold_in(key, 0), sharding, progress)
  robust = predict(model_fn, x, batch_size, sharding, variables) == y
  clean_acc = float(robust.mean()) if len(x) else 0.0
  x_adv = x.copy()
  acc_after, seconds = collections.OrderedDict(), collections.OrderedDict()

  for name in attacks:
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
        cand, idx = attack(model_fn, variables, cfg=cfg, x=x, y=y, todo=todo, batch_size=batch_size,
                           key=akey, eps=eps_arr, bar=bar, put=put)
        # like the reference: a point counts as broken if the model misclassifies the
        # returned point (the attacks' own verdicts only chose what to return)
        fooled = predict(model_fn, cand, batch_size, sharding, variables) != y[idx]
        x_adv[idx[fooled]] = cand[fooled]
        robust[idx[fooled]] = False
      bar.set_postfix(robust_acc=f'{robust.mean():.2%}' if len(x) else '-')
    acc_after[name] = float(robust.mean()) if len(x) else 0.0
    seconds[name] = time.perf_counter() - start
  return dict(x_adv=x_adv, robust=robust, robust_acc_after=acc_after,
              clean_acc=clean_acc, seconds=seconds)


def _warm_up(model_fn: ModelFn, variables, cfg: AutoAttackConfig, attacks: Sequence[str],
             example_shape, batch_size: int, key, sharding, progress: bool = False):
  """Compiles (ahead of time, nothing runs) every program the ensemble will call, one
  per core at a time, with the argument types and shardings of the real calls, so those
  find them compiled. XLA compiles a program on one core and the ensemble's 5-6 programs
  are independent: ~20-30 s of compilation for the small CNN here, which the attacks
  would otherwise pay one after the other."""
  put = placer(sharding)
  n = batch_size
  x, y, mask, ids = put(np.zeros((n,) + tuple(example_shape), np.float32),
                        np.zeros(n, np.int32), np.zeros(n, bool), np.arange(n, dtype=np.int32))
  eps, first = jnp.float32(0.0), np.int32(0)

  def square_batch_args():
    shapes = square_init_batch.eval_shape(model_fn, cfg, variables, x, y, ids, key, eps,
                                          sharding=sharding)
    state = SquareState(*put(*(np.zeros(a.shape, a.dtype) for a in shapes)))  # as the host
    return (model_fn, cfg, variables, x, y, state, mask, ids, key, eps, first)

  jobs = [lambda: predict_batch.lower(model_fn, variables, x, sharding=sharding)]
  for name in attacks:
    _check(name, cfg)
    if name == 'square':
      jobs.append(lambda: square_init_batch.lower(model_fn, cfg, variables, x, y, ids, key,
                                                  eps, sharding=sharding))
      jobs.append(lambda: square_batch.lower(*square_batch_args(), sharding=sharding))
    else:
      jobs.append(functools.partial(run_batch.lower, model_fn, name, cfg, variables, x, y,
                                    mask, ids, key, eps, first, sharding=sharding))
  with tqdm(total=len(jobs), desc='compile', unit='program', disable=not progress,
            leave=False) as bar, concurrent.futures.ThreadPoolExecutor(
                min(len(jobs), max(1, host_devices.usable_cores()))) as pool:
    futures = [pool.submit(lambda lower: lower().compile(), job) for job in jobs]
    for done in concurrent.futures.as_completed(futures):
      done.result()
      bar.update(1)


def compile_attacks(logits_fn, example_shape, *, batch_size: int = 250,
                    attacks: Sequence[str] = STANDARD_ATTACKS,
                    config: Optional[AutoAttackConfig] = None, variables=None,
                    sharding=None, key=None):
  """Compiles the ensemble's programs up front (``run_autoattack`` does it too), e.g.
  to time attacks without their compilation. ``key``: of the type the attacks will get
  (a typed ``jax.random.key`` by default; a raw ``PRNGKey`` compiles other programs)."""
  model_fn, variables = _model(logits_fn, variables)
  _warm_up(model_fn, variables, config or AutoAttackConfig(), attacks, example_shape,
           batch_size, jax.random.key(0) if key is None else key, sharding)
