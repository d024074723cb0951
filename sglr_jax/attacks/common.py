"""The parts every attack shares: keys, norms, starts, projections, the restart loop.

``AttackOps`` is how a platform changes how attacks loop and differentiate without the
attacks knowing about it: the experiment builder passes XLA:CPU's conv-canonicalising
loop on CPU (``sglr_jax.platforms.xla_cpu.parts.attack_ops``); everywhere else the
plain ``lax.fori_loop`` and the identity serve. It is a NamedTuple of functions, so it
is hashable and can be a static argument of a jitted program.

Randomness is drawn per example from ``fold_in(key, example_id)``, so a point's attack
does not depend on which other points share its batch or how the batch is split over
devices.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

LogitsFn = Callable[[jax.Array], jax.Array]


def fori_loop(body, init, steps: int):
  """``lax.fori_loop(0, steps, body, init)``: the default ``AttackOps.loop``."""
  return jax.lax.fori_loop(0, steps, body, init)


def identity(fn):
  """The default ``AttackOps.grad_transform``: ``fn`` unchanged."""
  return fn


class AttackOps(NamedTuple):
  """How an attack runs its loops and its differentiating functions.

  ``loop(body, init, steps) -> carry`` with ``body(i, carry) -> carry`` replaces a
  ``fori_loop``; ``grad_transform(fn) -> fn`` wraps a function that differentiates the
  model (e.g. a loop body containing ``jax.grad``). Both must keep the arithmetic.
  """
  loop: Callable = fori_loop
  grad_transform: Callable = identity


DEFAULT_OPS = AttackOps()


# --------------------------------------------------------------------------------- keys

def example_keys(key, ids):
  """One PRNG key per example, ``fold_in(key, id)``: ``ids`` is the examples' ids
  ``[B]`` (e.g. dataset indices) or a batch size ``B`` (ids ``0 .. B - 1``)."""
  if jnp.ndim(ids) == 0:
    ids = jnp.arange(int(ids), dtype=jnp.int32)
  return jax.vmap(jax.random.fold_in, (None, 0))(key, ids)  # [B, ...key]


def fold_keys(keys, data):
  """``fold_in`` every per-example key with the same (possibly traced) integer."""
  return jax.vmap(jax.random.fold_in, (0, None))(keys, data)


def run_keys(key, batch_size: int, example_ids, run):
  """Per-example keys of run ``run`` (may be traced): ``fold_in(fold_in(key, id), run)``;
  ids default to ``0 .. batch_size - 1``."""
  return fold_keys(example_keys(key, batch_size if example_ids is None else example_ids),
                   run)


def is_per_example(key) -> bool:
  """Whether ``key`` is a batch of keys (``[B]`` typed keys, ``[B, 2]`` raw ones)."""
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  return key.ndim == (1 if typed else 2)


# -------------------------------------------------------------------------------- norms

def per_example(v, x):
  """Reshapes ``v [B]`` to broadcast against ``x [B, ...]``."""
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


def linf_norm(v):
  return jnp.max(jnp.abs(v.reshape(v.shape[0], -1)), axis=-1)  # [B]


def l2_norm(v):
  return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=-1))  # [B]


def normalize(v, norm: str):
  """``v / (||v|| + 1e-12)`` per example, as the reference does."""
  n = linf_norm(v) if norm == 'Linf' else l2_norm(v)
  return v / per_example(n + 1e-12, v)


def project(x_adv, x, eps, norm: str = 'Linf'):
  """Onto the eps-ball around ``x`` (Linf: clip; L2: rescale) and then into [0, 1]."""
  if norm == 'Linf':
    return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)
  d = x_adv - x
  scale = jnp.minimum(eps, l2_norm(d))
  return jnp.clip(x + normalize(d, 'L2') * per_example(scale, x), 0.0, 1.0)


# ------------------------------------------------------------------------------- starts

def sample_like(sampler, key, x, dtype=None, **kwargs):
  """Noise shaped like ``x`` (of ``x``'s dtype unless ``dtype``) from one key, or from
  one key per example.

  Per-example keys (derived from the examples' dataset indices) make the noise
  independent of how the batch is split over devices.
  """
  if is_per_example(key):
    return jax.vmap(lambda k, xi: sampler(k, xi.shape, dtype or xi.dtype, **kwargs))(key, x)
  return sampler(key, x.shape, dtype or x.dtype, **kwargs)


def direction_noise(key, x, norm: str):
  """The reference's raw random direction: ``U(-1, 1)`` (Linf) or ``N(0, 1)`` (L2) per
  coordinate, in float32 (not yet scaled to a norm)."""
  if norm == 'Linf':
    sampler = functools.partial(jax.random.uniform, minval=-1.0, maxval=1.0)
  else:
    sampler = jax.random.normal
  return sample_like(sampler, key, x, dtype=jnp.float32)


def random_start(key, x, eps, norm: str = 'Linf', *, on_sphere: bool = False):
  """A random start around ``x``, clipped to [0, 1]; ``key``: one key or one per example.

  Default (PGD, Madry et al.): ``x + U(-eps, eps)`` per coordinate, inside the Linf
  ball. ``on_sphere`` (APGD, the reference's start): a random direction scaled to norm
  ``eps``, Linf ``eps * u / max|u|``, L2 ``eps * g / ||g||`` (``direction_noise``).
  """
  if on_sphere:
    return jnp.clip(x + eps * normalize(direction_noise(key, x, norm), norm), 0.0, 1.0)
  if norm != 'Linf':
    raise ValueError(f'a uniform start is Linf only, not {norm} (use on_sphere=True)')
  noise = sample_like(jax.random.uniform, key, x, minval=-eps, maxval=eps)
  return jnp.clip(x + noise, 0.0, 1.0)


# ------------------------------------------------------------------ verdicts and runs

def predict(logits_fn: LogitsFn, x):
  return jnp.argmax(logits_fn(x), axis=-1)  # [B]


def initial(logits_fn: LogitsFn, x, y, mask):
  """``(clean logits [B, K], robust [B])``: the points an attack starts on are those
  classified correctly (and in ``mask`` when given)."""
  logits = logits_fn(x)
  robust = jnp.argmax(logits, -1) == y
  if mask is not None:
    robust = robust & mask
  return logits, robust


def run_until_fooled(x, robust0, n_runs: int, run):
  """Calls ``run(r, robust) -> (x_candidate, robust)`` for ``r < n_runs`` while a point is robust.

  A point fooled by run ``r`` keeps run ``r``'s candidate (later runs never touch it);
  robust points keep ``x``. Returns ``(x_adv, robust)``.
  """
  def cond(s):
    r, _, robust = s
    return (r < n_runs) & jnp.any(robust)

  def body(s):
    r, x_adv, robust = s
    cand, robust_r = run(r, robust)
    fooled = robust & ~robust_r
    x_adv = jnp.where(per_example(fooled, x), cand, x_adv)
    return r + 1, x_adv, robust & ~fooled

  _, x_adv, robust = jax.lax.while_loop(cond, body, (jnp.int32(0), x, robust0))
  return x_adv, robust


def target_labels(clean_logits, rank):
  """The class ranked ``rank`` (2 = runner-up) by the clean logits: ``argsort[:, -rank]``."""
  k = clean_logits.shape[-1]
  order = jnp.argsort(clean_logits, axis=-1)  # ascending
  idx = jnp.broadcast_to(jnp.asarray(k - rank, jnp.int32), (clean_logits.shape[0], 1))
  return jnp.take_along_axis(order, idx, axis=-1)[:, 0]


def check_targets(num_classes: int, n_target_classes: int, dlr: bool = False):
  """Targets ranked 2..n+1 need n + 1 classes; the targeted DLR loss needs 4."""
  if n_target_classes > num_classes - 1 or (dlr and num_classes < 4):
    raise ValueError(f'n_target_classes={n_target_classes} with {num_classes} classes: '
                     f'at most {num_classes - 1}' + (' (and >= 4 classes)' if dlr else ''))
