"""The ensemble's jitted programs: one run of one attack (or a slice of Square's queries,
or the predictions) on one padded batch.

Every batch has the same number of rows, and run indices, eps, keys and query offsets
are traced arguments, so each program compiles once whatever the robust set. The model
is ``model_fn(variables, x)`` with the variables an argument, so another checkpoint of
the same model runs the same programs.

With a ``NamedSharding`` over one mesh axis, each program is ``shard_map``-ed: every
device runs the attack on its own rows, with no collective at all (the attacks are per
example). Left to XLA's automatic partitioning, FAB-T's program exchanged rows between
devices every iteration (its ``[x1; x0]`` projection batch, the target-logit gathers)
and Square's synchronised the devices at every query.
"""
from __future__ import annotations

import collections
import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
from jax.sharding import PartitionSpec as P

from sglr_jax.attacks.apgd import apgd_run
from sglr_jax.attacks.autoattack.config import AutoAttackConfig, check_attack
from sglr_jax.attacks.common import DEFAULT_OPS, AttackOps, LogitsFn, predict, run_keys
from sglr_jax.attacks.fab import fab_targeted_run
from sglr_jax.attacks.square import square_init, square_queries

ModelFn = Callable[[Any, jax.Array], jax.Array]  # (variables, x) -> logits
MODEL_STREAM = 0x7fffffff  # fold_in tag of a randomised model's draws


class Randomised(NamedTuple):
  """A model with a randomised forward pass, ``fn(variables, x, key) -> logits``: a
  static argument like any ``model_fn`` (equal and hashed by ``fn``).

  APGD averages its gradients over ``eot_iter`` draws; every other program (FAB,
  Square, the predictions) sees one draw per call, from a key derived from the attack's
  key, the batch's first point and the run (or query slice).
  """
  fn: Callable


def draw_key(key, example_ids, *data):
  """A randomised model's key for one padded batch (per device under a mesh)."""
  k = jax.random.fold_in(jax.random.fold_in(key, MODEL_STREAM), example_ids[0])
  for d in data:
    k = jax.random.fold_in(k, d)
  return k


def bind(model_fn, variables, key=None) -> LogitsFn:
  """``x -> logits``: a randomised model with its draw fixed by ``key``."""
  if isinstance(model_fn, Randomised):
    return lambda z: model_fn.fn(variables, z, key)
  return functools.partial(model_fn, variables)

# Traces of each program: jax traces a jitted function once per new static arguments
# and argument types, before it compiles it, so a count that stays put means nothing
# was compiled again (public API only, unlike counting jit's cache entries).
_traces = collections.Counter()


def traced_programs() -> int:
  """How many programs the ensemble has traced (and so compiled) so far."""
  return sum(_traces.values())


def _counted(fn):
  @functools.wraps(fn)
  def program(*args, **kwargs):
    _traces[fn.__name__] += 1
    return fn(*args, **kwargs)
  return program


def run_fn(name: str, cfg: AutoAttackConfig, ops: AttackOps = DEFAULT_OPS):
  """``(logits_fn, x, y, run, *, eps, key, active, example_ids) -> (x_cand, robust)``."""
  check_attack(name, cfg)
  if name in ('apgd-ce', 'apgd-dlr'):
    return functools.partial(apgd_run, loss=name[5:], norm=cfg.norm, rho=cfg.rho,
                             n_iter=cfg.apgd_n_iter, n_restarts=cfg.apgd_n_restarts,
                             early_stop=cfg.early_stop, eot_iter=cfg.eot_iter, ops=ops)
  if name == 'apgd-t':
    return functools.partial(apgd_run, loss='dlr-targeted', norm=cfg.norm, rho=cfg.rho,
                             n_iter=cfg.apgd_t_n_iter, n_restarts=cfg.apgd_t_n_restarts,
                             early_stop=cfg.early_stop, eot_iter=cfg.eot_iter, ops=ops)
  if name == 'fab-t':
    return functools.partial(fab_targeted_run, norm=cfg.norm, n_iter=cfg.fab_n_iter,
                             n_restarts=cfg.fab_n_restarts, alpha_max=cfg.fab_alpha_max,
                             eta=cfg.fab_eta, beta=cfg.fab_beta, early_stop=cfg.early_stop,
                             ops=ops)
  raise ValueError(f'{name} has no runs (square: square_init_batch / square_batch)')


def batch_axis(sharding) -> Optional[tuple]:
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
  axis = batch_axis(sharding)
  if axis is None:
    return fn
  mesh, name = axis
  in_specs = tuple(P(name) if b else P() for b in in_batched)
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P(name), check_vma=False)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), static_argnames=('ops', 'sharding'))
@_counted
def run_batch(model_fn: ModelFn, name: str, cfg: AutoAttackConfig, variables, x, y, mask,
              example_ids, key, eps, run, *, ops: AttackOps = DEFAULT_OPS, sharding=None):
  """One run of one attack on one padded batch: ``(x_candidate [B, ...], fooled [B])``."""
  def program(variables, x, y, mask, example_ids, key, eps, run):
    attack = run_fn(name, cfg, ops)
    if not isinstance(model_fn, Randomised):
      cand, robust = attack(functools.partial(model_fn, variables), x, y, run, eps=eps,
                            key=key, active=mask, example_ids=example_ids)
    elif name.startswith('apgd'):   # every evaluation a fresh draw, gradients over EOT
      cand, robust = attack(lambda z, k: model_fn.fn(variables, z, k), x, y, run, eps=eps,
                            key=key, active=mask, example_ids=example_ids,
                            model_key=draw_key(key, example_ids))
    else:
      cand, robust = attack(bind(model_fn, variables, draw_key(key, example_ids, run)), x,
                            y, run, eps=eps, key=key, active=mask, example_ids=example_ids)
    return cand, mask & ~robust
  batched = (False, True, True, True, True, False, False, False)
  return _per_device(program, sharding, batched)(variables, x, y, mask, example_ids, key,
                                                 eps, run)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=('sharding',))
@_counted
def square_init_batch(model_fn: ModelFn, cfg: AutoAttackConfig, variables, x, y,
                      example_ids, key, eps, *, sharding=None):
  """Square's start on one padded batch: a ``SquareState``."""
  def program(variables, x, y, example_ids, key, eps):
    logits_fn = bind(model_fn, variables, draw_key(key, example_ids, 0))
    keys = run_keys(key, x.shape[0], example_ids, 0)
    return square_init(logits_fn, x, y, keys, eps=eps, n_queries=cfg.square_n_queries,
                       norm=cfg.norm)
  batched = (False, True, True, True, False, False)
  return _per_device(program, sharding, batched)(variables, x, y, example_ids, key, eps)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=('sharding',))
@_counted
def square_batch(model_fn: ModelFn, cfg: AutoAttackConfig, variables, x, y, state, mask,
                 example_ids, key, eps, start, *, sharding=None):
  """Queries ``[start, start + square_queries_per_call)`` on one padded batch."""
  def program(variables, x, y, state, mask, example_ids, key, eps, start):
    logits_fn = bind(model_fn, variables, draw_key(key, example_ids, start + 1))
    keys = run_keys(key, x.shape[0], example_ids, 0)
    return square_queries(logits_fn, x, y, state, keys, mask, eps=eps, start=start,
                          stop=start + cfg.square_queries_per_call,
                          n_queries=cfg.square_n_queries, p_init=cfg.square_p_init,
                          norm=cfg.norm)
  batched = (False, True, True, True, True, True, False, False, False)
  return _per_device(program, sharding, batched)(variables, x, y, state, mask, example_ids,
                                                 key, eps, start)


@functools.partial(jax.jit, static_argnums=0, static_argnames=('sharding',))
@_counted
def predict_batch(model_fn: ModelFn, variables, x, key=None, *, sharding=None):
  """Predicted labels ``[B]`` of one padded batch (a randomised model: the draw
  ``key``)."""
  if key is None:
    program = lambda variables, x: predict(bind(model_fn, variables), x)
    return _per_device(program, sharding, (False, True))(variables, x)
  program = lambda variables, x, key: predict(bind(model_fn, variables, key), x)
  return _per_device(program, sharding, (False, True, False))(variables, x, key)


@functools.lru_cache(maxsize=64)
def _without_variables(logits_fn: LogitsFn) -> ModelFn:
  """``logits_fn(x)`` as a ``model_fn(variables, x)`` ignoring its (empty) variables;
  cached, so the programs of one ``logits_fn`` compile once."""
  return lambda variables, *args: logits_fn(*args)


def as_model(logits_fn, variables, randomised: bool = False):
  """``(model_fn, variables)`` for the programs, from the caller's convention:
  ``logits_fn(x)`` when ``variables`` is None, else ``logits_fn(variables, x)``; a
  ``randomised`` model takes a key last (``logits_fn(x, key)``) and becomes a
  ``Randomised``. A ``model_fn`` already made passes through."""
  if isinstance(logits_fn, Randomised):
    return logits_fn, (() if variables is None else variables)
  if variables is None:
    fn = _without_variables(logits_fn)
    return (Randomised(fn) if randomised else fn), ()
  return (Randomised(logits_fn) if randomised else logits_fn), variables
