"""AutoAttack's standard ensemble (Croce and Hein, 2020): APGD-CE, APGD-T, FAB-T, Square.

Runs the attacks in order, each only on the points still robust, and keeps for every
point the first adversarial example found (the worst case over the ensemble). Robust
points are gathered into fixed-size batches padded with masked copies, so every batch
of every attack has one shape and each attack compiles once, whatever the robust set.

Seeding: attack ``a`` on the point with index ``i`` in ``x`` draws from
``fold_in(fold_in(key, a), i)``, so results are reproducible bit for bit for a key and
batch size and do not depend on which other points share a batch.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from sglr_jax.attacks.apgd import apgd_attack, apgd_targeted_attack
from sglr_jax.attacks.fab import fab_targeted_attack
from sglr_jax.attacks.square import square_attack

LogitsFn = Callable[[jax.Array], jax.Array]

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
  # Not in the reference: end APGD / FAB iterations once every point of a batch is
  # decided. Same robust accuracy, faster on weak models, but the adversarial points
  # returned are earlier iterates (APGD) or not the smallest found (FAB).
  early_stop: bool = False


def attack_fn(name: str, cfg: AutoAttackConfig):
  """``(logits_fn, x, y, *, eps, key, mask, example_ids) -> x_adv`` for an attack name."""
  if name in ('fab-t', 'square') and cfg.norm != 'Linf':
    raise NotImplementedError(f'{name} is implemented for Linf only, not {cfg.norm}')
  if name in ('apgd-ce', 'apgd-dlr'):
    return functools.partial(apgd_attack, norm=cfg.norm, loss=name[5:], rho=cfg.rho,
                             n_iter=cfg.apgd_n_iter, n_restarts=cfg.apgd_n_restarts,
                             early_stop=cfg.early_stop)
  if name == 'apgd-t':
    return functools.partial(apgd_targeted_attack, norm=cfg.norm, rho=cfg.rho,
                             n_iter=cfg.apgd_t_n_iter, n_restarts=cfg.apgd_t_n_restarts,
                             n_target_classes=cfg.apgd_t_n_target_classes,
                             early_stop=cfg.early_stop)
  if name == 'fab-t':
    return functools.partial(fab_targeted_attack, n_iter=cfg.fab_n_iter,
                             n_restarts=cfg.fab_n_restarts,
                             n_target_classes=cfg.fab_n_target_classes,
                             alpha_max=cfg.fab_alpha_max, eta=cfg.fab_eta, beta=cfg.fab_beta,
                             early_stop=cfg.early_stop)
  if name == 'square':
    return functools.partial(square_attack, n_queries=cfg.square_n_queries,
                             p_init=cfg.square_p_init)
  raise ValueError(f'attack {name!r} is unknown; allowed: {", ".join(ATTACKS)}')


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def attack_batch(logits_fn: LogitsFn, name: str, cfg: AutoAttackConfig, x, y, mask,
                 example_ids, key, eps):
  """One padded batch of one attack (jitted once per model, attack, config and shape)."""
  return attack_fn(name, cfg)(logits_fn, x, y, eps=eps, key=key, mask=mask,
                              example_ids=example_ids)


@functools.partial(jax.jit, static_argnums=0)
def _predict_batch(logits_fn: LogitsFn, x):
  return jnp.argmax(logits_fn(x), axis=-1)


def _padded_batches(indices: np.ndarray, batch_size: int):
  """Yields ``(real indices, padded indices [batch_size], mask [batch_size])``."""
  for start in range(0, len(indices), batch_size):
    real = indices[start:start + batch_size]
    padded = np.concatenate([real, np.full(batch_size - len(real), real[0], real.dtype)])
    yield real, padded, np.arange(batch_size) < len(real)


def predict(logits_fn: LogitsFn, x, batch_size: int = 250) -> np.ndarray:
  """Predicted labels ``[N]`` in fixed-size padded batches (one compilation)."""
  x = np.asarray(x, np.float32)
  out = np.empty(len(x), np.int64)
  for real, padded, _ in _padded_batches(np.arange(len(x)), batch_size):
    out[real] = np.asarray(_predict_batch(logits_fn, x[padded]))[:len(real)]
  return out


def run_autoattack(logits_fn: LogitsFn, x, y, eps: float, *, key, batch_size: int = 250,
                   attacks: Sequence[str] = STANDARD_ATTACKS,
                   config: Optional[AutoAttackConfig] = None, progress: bool = True) -> dict:
  """Runs the ensemble on ``x [N, H, W, C]`` (float in [0, 1]) with labels ``y [N]``.

  Returns a dict: ``x_adv`` (numpy, clean points where no attack succeeded), ``robust``
  (bool ``[N]``), ``robust_acc_after`` (ordered attack -> robust accuracy after it),
  ``clean_acc``, and ``seconds`` (ordered attack -> wall time).
  """
  cfg = config or AutoAttackConfig()
  for name in attacks:
    attack_fn(name, cfg)  # fail early on a bad name or norm
  x = np.asarray(x, np.float32)
  y = np.asarray(y).astype(np.int32)
  n = len(x)
  eps_arr = jnp.float32(eps)
  robust = predict(logits_fn, x, batch_size) == y
  clean_acc = float(robust.mean())
  x_adv = x.copy()
  acc_after, seconds = collections.OrderedDict(), collections.OrderedDict()

  for name in attacks:
    start = time.perf_counter()
    todo = np.flatnonzero(robust)
    akey = jax.random.fold_in(key, ATTACKS.index(name))
    with tqdm(total=len(todo), desc=name, unit='img', disable=not progress,
              leave=True) as bar:
      pending = None
      for batch in list(_padded_batches(todo, batch_size)) + [None]:
        launched = None
        if batch is not None:  # dispatch the next batch before waiting for this one
          real, padded, mask = batch
          adv = attack_batch(logits_fn, name, cfg, x[padded], y[padded], mask,
                             padded.astype(np.int32), akey, eps_arr)
          launched = (real, padded, adv, _predict_batch(logits_fn, adv))
        if pending is not None:
          real, padded, adv, pred = pending
          m = len(real)
          fooled = np.asarray(pred)[:m] != y[real]
          x_adv[real[fooled]] = np.asarray(adv)[:m][fooled]
          robust[real[fooled]] = False
          bar.update(m)
          bar.set_postfix(robust_acc=f'{robust.mean():.2%}')
        pending = launched
    acc_after[name] = float(robust.mean())
    seconds[name] = time.perf_counter() - start
  return dict(x_adv=x_adv, robust=robust, robust_acc_after=acc_after,
              clean_acc=clean_acc, seconds=seconds, n=n)
