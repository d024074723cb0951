"""XLA:CPU conv and pool parts: same values and gradients as plain JAX / Flax.

Each fast part is compared with the plain part it replaces (``lax.conv_general_dilated``,
``nn.max_pool``, a model built with the default ``nn.Conv`` / ``nn.max_pool``).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax import lax

from sglr_jax.attacks import losses, pgd
from sglr_jax.models import SmallCNN
from sglr_jax.platforms.xla_cpu import conv as fastconv
from sglr_jax.platforms.xla_cpu import parts
from sglr_jax.platforms.xla_cpu import pool as fastpool


_DN = ('NHWC', 'HWIO', 'NHWC')


@pytest.mark.parametrize('xs,ws,pad', [
    ((2, 7, 6, 1), (5, 5, 1, 4), 'SAME'), ((2, 8, 8, 3), (3, 3, 3, 5), ((1, 1), (1, 1))),
    ((2, 8, 8, 3), (3, 3, 3, 4), 'VALID'), ((2, 8, 7, 2), (3, 2, 2, 4), ((2, 0), (0, 1)))])
def test_input_layer_conv_grads_match_jax(xs, ws, pad):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
  w = jnp.asarray(rng.standard_normal(ws), jnp.float32)
  f0 = lambda x, w: jnp.sum(jnp.sin(lax.conv_general_dilated(x, w, (1, 1), pad,
                                                              dimension_numbers=_DN)))
  f1 = lambda x, w: jnp.sum(jnp.sin(fastconv.conv_general_dilated(x, w, (1, 1), pad,
                                                                   dimension_numbers=_DN)))
  assert 'custom_vjp' in str(jax.make_jaxpr(f1)(x, w))  # the fast path was taken
  np.testing.assert_allclose(f0(x, w), f1(x, w), rtol=1e-6)
  for a, b in zip(jax.grad(f0, (0, 1))(x, w), jax.grad(f1, (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_input_layer_conv_hand_computed():
  """1x1 image, 3x3 kernel, pad 1: d out / d x = sum of the centre taps over O."""
  w = jnp.arange(18, dtype=jnp.float32).reshape(3, 3, 1, 2)
  g = fastconv.input_gradient(jnp.ones((1, 1, 1, 2)), w, (1, 1), ((1, 1), (1, 1)))
  np.testing.assert_array_equal(g.reshape(()), 8.0 + 9.0)


def test_conv_dispatch():
  x = jnp.ones((1, 6, 6, 8))
  w = jnp.ones((3, 3, 8, 4))
  jaxpr = lambda f, a, b: str(jax.make_jaxpr(f)(a, b))
  fast = lambda s: lambda a, b: fastconv.conv_general_dilated(a, b, s, 'SAME',
                                                              dimension_numbers=_DN)
  # Too many input channels, or strided: plain lax.
  for xx, ww, s in ((x, w, (1, 1)), (x[..., :3], w[:, :, :3], (2, 2))):
    assert 'custom_vjp' not in jaxpr(fast(s), xx, ww)
  # An input layer takes the fast path; the plain lax conv it replaces does not.
  assert 'custom_vjp' in jaxpr(fast((1, 1)), x[..., :3], w[:, :, :3])
  plain = lambda a, b: lax.conv_general_dilated(a, b, (1, 1), 'SAME', dimension_numbers=_DN)
  assert 'custom_vjp' not in jaxpr(plain, x[..., :3], w[:, :, :3])


def _tied(shape, seed=0):
  """ReLU-like values rounded to one decimal: many ties inside 2x2 windows."""
  rng = np.random.default_rng(seed)
  return jnp.asarray(np.maximum(rng.standard_normal(shape), 0.0).round(1), jnp.float32)


def _plain_pool(x, window=(2, 2)):
  return nn.max_pool(x, window, strides=window)


@pytest.mark.parametrize('shape,window', [((3, 8, 6, 4), (2, 2)), ((2, 6, 9, 3), (3, 3)),
                                          ((2, 4, 6, 2), (1, 2))])
def test_pool_matches_select_and_scatter_with_ties(shape, window):
  x = _tied(shape)
  w = jnp.asarray(np.random.default_rng(1).standard_normal(
      (shape[1] // window[0], shape[2] // window[1], shape[3])), jnp.float32)
  f0 = lambda z: jnp.sum(jnp.sin(_plain_pool(z, window)) * w)
  f1 = lambda z: jnp.sum(jnp.sin(fastpool.blocked_max_pool(z, window)) * w)
  np.testing.assert_array_equal(_plain_pool(x, window), fastpool.blocked_max_pool(x, window))
  g0, g1 = jax.grad(f0)(x), jax.grad(f1)(x)
  np.testing.assert_array_equal(g0, g1)
  # The gradient goes to exactly one element per window (the first maximal one).
  n_windows = x.size // (window[0] * window[1])
  assert int(jnp.sum(g1 != 0)) <= n_windows
  assert int(jnp.sum(g0 != 0)) == int(jnp.sum(g1 != 0))


def test_pool_first_max_hand_computed():
  x = jnp.array([[1., 3.], [3., 2.]]).reshape(1, 2, 2, 1)  # tie between (0,1) and (1,0)
  g = jax.grad(lambda z: jnp.sum(fastpool.blocked_max_pool(z, (2, 2))))(x)
  np.testing.assert_array_equal(g.reshape(2, 2), [[0., 1.], [0., 0.]])


def test_pool_dispatch():
  x = _tied((1, 6, 6, 2))
  jaxpr = lambda f, z: str(jax.make_jaxpr(jax.grad(lambda v: jnp.sum(f(v))))(z))
  assert 'select_and_scatter' not in jaxpr(lambda v: fastpool.max_pool(v, (2, 2), (2, 2)), x)
  # Odd sizes, overlapping windows and padding fall back to nn.max_pool.
  cases = [((1, 5, 6, 2), (2, 2), (2, 2), 'VALID'), ((1, 6, 6, 2), (3, 3), (2, 2), 'VALID'),
           ((1, 5, 5, 2), (2, 2), (2, 2), 'SAME')]
  for shape, win, stride, pad in cases:
    z = _tied(shape)
    f = lambda v: jnp.sum(fastpool.max_pool(v, win, stride, pad) ** 2)
    g = lambda v: jnp.sum(nn.max_pool(v, win, stride, pad) ** 2)
    assert 'select_and_scatter' in jaxpr(lambda v: fastpool.max_pool(v, win, stride, pad), z)
    np.testing.assert_array_equal(jax.grad(f)(z), jax.grad(g)(z))
  # The plain pool it replaces uses select-and-scatter for the same disjoint windows.
  assert 'select_and_scatter' in jaxpr(lambda v: nn.max_pool(v, (2, 2), (2, 2)), x)


@pytest.mark.parametrize('name', ['madry', 'rgb_stride1'])
def test_models_same_with_and_without(name):
  """SmallCNN (Madry's MNIST net; a 3-channel variant): logits, input gradient, PGD,
  parameter gradient agree between the CPU parts (``parts.model_parts``) and the
  default ``nn.Conv`` / ``nn.max_pool``."""
  if name == 'madry':
    kw = dict(features=(4, 8), kernel=5, strides=1, use_pool=True, dense=16)
    x = jnp.asarray(np.random.default_rng(0).random((4, 12, 12, 1)), jnp.float32)
  else:
    kw = dict(features=(4, 8), kernel=3, strides=1, use_pool=False, dense=16)
    x = jnp.asarray(np.random.default_rng(0).random((4, 8, 8, 3)), jnp.float32)
  plain_model = SmallCNN(**kw)
  fast_model = SmallCNN(**kw, **parts.model_parts('small_cnn'))
  y = jnp.asarray([0, 1, 2, 3])
  v = jax.jit(lambda k: plain_model.init(k, x, train=False))(jax.random.PRNGKey(0))
  # The parts change no parameter: the fast model initialises to the same values.
  v_fast = jax.jit(lambda k: fast_model.init(k, x, train=False))(jax.random.PRNGKey(0))
  for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v_fast)):
    np.testing.assert_array_equal(a, b)

  def run(model):
    logits_fn = lambda z: model.apply(v, z, train=False)
    ce = lambda z: jnp.sum(losses.cross_entropy(logits_fn(z), y))

    def train_loss(p):
      out, _ = model.apply({'params': p, 'batch_stats': v['batch_stats']}, x, train=True,
                           mutable=['batch_stats'])
      return jnp.sum(losses.cross_entropy(out, y))
    # The same attack loop for both (CPU's): only the model's parts differ.
    adv = pgd.pgd_attack(logits_fn, x, y, eps=0.1, step_size=0.02, steps=2,
                         key=jax.random.PRNGKey(1), ops=parts.attack_ops())
    return logits_fn(x), jax.grad(ce)(x), jax.grad(train_loss)(v['params']), adv

  # One jit per model (eager would compile per op).
  assert 'custom_vjp' not in str(jax.make_jaxpr(lambda: run(plain_model))())
  ref = jax.jit(lambda: run(plain_model))()
  assert 'custom_vjp' in str(jax.make_jaxpr(lambda: run(fast_model))())
  new = jax.jit(lambda: run(fast_model))()
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(new)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert float(jnp.max(jnp.abs(ref[1]))) > 0  # the gradient is not trivially zero
