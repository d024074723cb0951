"""AutoAttack's standard ensemble (Croce and Hein, 2020): APGD-CE, APGD-T, FAB-T, Square.

Runs the attacks in order, each only on the points still robust, and keeps for every
point the first adversarial example found (the worst case over the ensemble). As in the
reference, an attack's restarts and target classes each work only on the points still
robust, and Square's queries only on the points still correctly classified: between
runs (and every ``square_queries_per_call`` queries) the remaining points are gathered
again into batches. Every batch has ``batch_size`` rows (padded with masked copies), so
each program compiles once whatever the robust set; run indices, eps, keys and query
offsets are traced arguments.

Seeding: attack ``a`` on the point with index ``i`` in ``x`` draws from
``fold_in(fold_in(key, a), i)``, so results are reproducible bit for bit for a key and
batch size, and do not depend on which other points share a batch.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

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

@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def run_batch(model_fn: ModelFn, name: str, cfg: AutoAttackConfig, variables, x, y, mask,
              example_ids, key, eps, run):
  """One run of one attack on one padded batch: ``(x_candidate, fooled)``."""
  logits_fn = functools.partial(model_fn, variables)
  cand, robust = run_fn(name, cfg)(logits_fn, x, y, run, eps=eps, key=key, active=mask,
                                   example_ids=example_ids)
  return cand, mask & ~robust


@functools.partial(jax.jit, static_argnums=(0, 1))
def square_init_batch(model_fn: ModelFn, cfg: AutoAttackConfig, variables, x, y,
                      example_ids, key, eps):
  logits_fn = functools.partial(model_fn, variables)
  keys = square_keys(key, x.shape[0], example_ids)
  return square_init(logits_fn, x, y, keys, eps=eps, n_queries=cfg.square_n_queries)


@functools.partial(jax.jit, static_argnums=(0, 1))
def square_batch(model_fn: ModelFn, cfg: AutoAttackConfig, variables, x, y, state, mask,
                 example_ids, key, eps, start):
  """Queries ``[start, start + square_queries_per_call)`` on one padded batch."""
  logits_fn = functools.partial(model_fn, variables)
  keys = square_keys(key, x.shape[0], example_ids)
  return square_queries(logits_fn, x, y, state, keys, mask, eps=eps, start=start,
                        stop=start + cfg.square_queries_per_call,
                        n_queries=cfg.square_n_queries, p_init=cfg.square_p_init)


@functools.partial(jax.jit, static_argnums=0)
def predict_batch(model_fn: ModelFn, variables, x):
  return jnp.argmax(model_fn(variables, x), axis=-1)


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
                                                              *put(x[p])),
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
                                     key, eps, np.int32(r))
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
                                        *put(x[p], y[p], p.astype(np.int32)), key, eps)
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
                          key, eps, np.int32(start))
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
  robust = predict(logits_fn, x, batch_size, sharding, variables) == y
  model_fn, variables = _model(logits_fn, variables)
  clean_acc = float(robust.mean()) if len(x) else 0.0
  x_adv = x.copy()
  acc_after, seconds = collections.OrderedDict(), collections.OrderedDict()
  if len(x) and any(a in attacks for a in ('apgd-t', 'fab-t')):
    k = int(jax.eval_shape(model_fn, variables, jax.ShapeDtypeStruct(
        (1,) + x.shape[1:], jnp.float32)).shape[-1])
    if 'apgd-t' in attacks:
      check_targets(k, cfg.apgd_t_n_target_classes, dlr=True)
    if 'fab-t' in attacks:
      check_targets(k, cfg.fab_n_target_classes)

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


def compile_attacks(logits_fn, example_shape, *, batch_size: int = 250,
                    attacks: Sequence[str] = STANDARD_ATTACKS,
                    config: Optional[AutoAttackConfig] = None, variables=None,
                    sharding=None):
  """Compiles the ensemble's programs up front on a fully masked batch (every loop
  exits at once), e.g. to time attacks without their compilation."""
  cfg = config or AutoAttackConfig()
  x = np.zeros((batch_size,) + tuple(example_shape), np.float32)
  y = np.zeros(batch_size, np.int32)
  mask = np.zeros(batch_size, bool)
  ids = np.arange(batch_size, dtype=np.int32)
  key, eps = jax.random.key(0), jnp.float32(0.0)
  model_fn, variables = _model(logits_fn, variables)
  x, y, mask, ids = placer(sharding)(x, y, mask, ids)
  outs = [predict_batch(model_fn, variables, x)]
  for name in attacks:
    _check(name, cfg)
    if name == 'square':
      state = square_init_batch(model_fn, cfg, variables, x, y, ids, key, eps)
      outs.append(square_batch(model_fn, cfg, variables, x, y, state, mask, ids, key, eps,
                               np.int32(0)))
    else:
      outs.append(run_batch(model_fn, name, cfg, variables, x, y, mask, ids, key, eps,
                            np.int32(0)))
  jax.block_until_ready(outs)
