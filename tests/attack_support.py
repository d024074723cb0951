"""Helpers shared by the attack tests: the attack ops of the backend, an optimised
AutoAttack build and Linf output checks."""
import jax
import numpy as np
import pytest

from conftest import O2
from sglr_jax import models
from sglr_jax.attacks.common import DEFAULT_OPS


def _cpu_parts():
  if jax.default_backend() != 'cpu':
    return None
  from sglr_jax.platforms.xla_cpu import parts  # pylint: disable=g-import-not-at-top
  return parts


def backend_ops():
  """The ``AttackOps`` the experiment passes on this backend: XLA:CPU's canonical-conv
  loop and gradients on CPU (what every CPU run uses), the defaults elsewhere."""
  parts = _cpu_parts()
  return DEFAULT_OPS if parts is None else parts.attack_ops()


OPS = backend_ops()


def small_cnn(width: int = 8, num_classes: int = 10):
  """The small CNN as the experiment builds it on this backend (on CPU with the
  faster-differentiating conv and pool the builder injects)."""
  parts = _cpu_parts()
  extra = {} if parts is None else parts.model_parts('small_cnn')
  return models.create_model('small_cnn', num_classes, width=width, **extra)


@pytest.fixture(scope='module')
def optimised_autoattack():
  """The AutoAttack ensemble's jitted programs recompiled with optimisation (``O2``)
  for one test module; restored afterwards. Yields the ``programs`` module."""
  from sglr_jax.attacks.autoattack import programs  # pylint: disable=g-import-not-at-top
  static = {'run_batch': ((0, 1, 2), ('ops', 'sharding')),  # model_fn, name, cfg
            'square_init_batch': ((0, 1), ('sharding',)),
            'square_batch': ((0, 1), ('sharding',)),
            'predict_batch': ((0,), ('sharding',))}
  saved = {n: getattr(programs, n) for n in static}
  for n, (argnums, argnames) in static.items():
    setattr(programs, n, jax.jit(saved[n].__wrapped__, static_argnums=argnums,
                                 static_argnames=argnames, compiler_options=O2))
  yield programs
  for n, f in saved.items():
    setattr(programs, n, f)


def check_linf_attack(x_adv, x, y, eps, logits_fn):
  """An Linf attack's output (numpy): no NaN, in [0, 1], within ``eps`` (+1e-6); it fools
  some points but not all, and returns the points it does not fool unchanged. Returns
  the fooled mask."""
  assert not np.isnan(x_adv).any() and x_adv.min() >= 0 and x_adv.max() <= 1
  assert np.abs(x_adv - x).max() <= eps + 1e-6
  fooled = np.asarray(np.argmax(np.asarray(logits_fn(x_adv)), -1) != np.asarray(y))
  assert 0 < fooled.mean() < 1
  np.testing.assert_array_equal(x_adv[~fooled], x[~fooled])
  return fooled
