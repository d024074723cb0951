"""attack_loop / canonicalize_convs: same numbers as the plain version, canonical convs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sglr_jax.attacks import losses
from sglr_jax.models import create_model
from sglr_jax.platforms.xla_cpu.canonical_loop import (attack_loop, canonicalize_convs,
                                                       count_noncanonical_convs)

TOL = dict(rtol=2e-5, atol=2e-5)


def _conv(x, k, dn=('NHWC', 'HWIO', 'NHWC'), **kw):
  return lax.conv_general_dilated(x, k, kw.pop('strides', (1, 1)), kw.pop('padding', 'SAME'),
                                  dimension_numbers=dn, **kw)


def _net(params, x):
  k1, k2 = params
  h = jax.nn.relu(_conv(x, k1))
  h = _conv(h, k2, strides=(2, 2))
  return jnp.mean(h, axis=(1, 2))  # [B, C]


# Data from numpy: eager jax.random ops would each compile a small program.
def _rng(seed=0):
  return np.random.default_rng(seed)


def _params(rng, c_in=3, c=8):
  return (jnp.asarray(0.3 * rng.standard_normal((3, 3, c_in, c)), jnp.float32),
          jnp.asarray(0.3 * rng.standard_normal((3, 3, c, c)), jnp.float32))


def _smooth_body(params, y, lr=0.05):
  """A gradient-descent step (no sign, so results compare to float tolerance)."""
  def loss(z):
    return jnp.sum(losses.cross_entropy(_net(params, z), y))

  def body(i, z):
    return z + lr * (1.0 + 0.1 * i) * jax.grad(loss)(z)
  return body


def _data(b=4, hw=8, c=3):
  rng = _rng()
  return (jnp.asarray(rng.uniform(size=(b, hw, hw, c)), jnp.float32),
          jnp.asarray(rng.integers(0, 8, size=(b,)), jnp.int32), _params(rng, c))


def test_input_gradient_conv_is_noncanonical_in_plain_jax():
  # The premise of the fix: JAX's input-gradient conv swaps the kernel dims.
  x, y, p = _data()
  body = _smooth_body(p, y)
  assert count_noncanonical_convs(jax.make_jaxpr(lambda z: body(0, z))(x)) == 2
  fixed = canonicalize_convs(lambda z: body(0, z))
  assert count_noncanonical_convs(jax.make_jaxpr(fixed)(x)) == 0


def test_attack_loop_matches_fori_loop():
  x, y, p = _data()
  body = _smooth_body(p, y)
  ref = jax.jit(lambda z: lax.fori_loop(0, 4, body, z))(x)
  assert float(jnp.max(jnp.abs(ref - x))) > 1e-3  # the loop really moves x
  for hoist in (True, False):
    got = jax.jit(lambda z: attack_loop(body, z, 4, hoist=hoist))(x)
    np.testing.assert_allclose(got, ref, **TOL)


def test_body_without_convs_runs_as_a_plain_fori_loop():
  """Nothing to canonicalise: exactly ``lax.fori_loop`` (same jaxpr, same bits)."""
  body = lambda i, z: z * 0.5 + jnp.sin(z) * (1.0 + 0.1 * i)
  x = jnp.asarray(_rng().standard_normal((3, 5)), jnp.float32)
  plain = lambda z: lax.fori_loop(0, 4, body, z)
  ours = lambda z: attack_loop(body, z, 4)
  assert str(jax.make_jaxpr(ours)(x)) == str(jax.make_jaxpr(plain)(x))
  np.testing.assert_array_equal(jax.jit(ours)(x), jax.jit(plain)(x))


def test_loop_body_has_only_canonical_convs_and_kernels_are_hoisted():
  x, y, p = _data()
  body = _smooth_body(p, y)
  plain = jax.make_jaxpr(lambda z: lax.fori_loop(0, 3, body, z))(x)
  fast = jax.make_jaxpr(lambda z: attack_loop(body, z, 3))(x)
  assert count_noncanonical_convs(plain) == 2
  assert count_noncanonical_convs(fast) == 0
  # Kernel flips/transposes were computed once, outside the loop primitive.
  top = [e.primitive.name for e in fast.jaxpr.eqns]
  assert top.count('transpose') == 2 and top.count('rev') == 2, top
  loops = [e for e in fast.jaxpr.eqns if e.primitive.name in ('scan', 'while')]
  assert len(loops) == 1


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU-specific HLO')
def test_compiled_cpu_loop_has_no_swapped_kernel_conv():
  # The cause: XLA:CPU canonicalises convs only in the entry computation, so a
  # `01oi` kernel conv survives (and runs as a naive loop nest) inside a while body.
  x, y, p = _data()
  body = _smooth_body(p, y)
  plain = jax.jit(lambda z: lax.fori_loop(0, 3, body, z)).lower(x).compile().as_text()
  fast = jax.jit(lambda z: attack_loop(body, z, 3)).lower(x).compile().as_text()
  assert '01oi' in plain
  assert '01oi' not in fast


@pytest.mark.parametrize('dn,kshape,kw', [
    (('NCHW', 'OIHW', 'NCHW'), (6, 4, 3, 3), {}),
    (('NHWC', 'HWOI', 'NHWC'), (3, 2, 6, 4), dict(strides=(2, 1), rhs_dilation=(1, 2))),
    (('NHWC', 'OHWI', 'NCHW'), (6, 3, 3, 2), dict(feature_group_count=2, padding='VALID')),
    (('NWC', 'WIO', 'NWC'), (3, 4, 6), dict(strides=(1,), padding='SAME')),
])
def test_canonicalize_convs_values_and_gradients(dn, kshape, kw):
  n = len(kshape)
  xshape = (2, 4, 9, 7) if dn[0] == 'NCHW' else ((2, 9, 7, 4) if n == 4 else (2, 9, 4))
  rng = _rng(1)
  x = jnp.asarray(rng.standard_normal(xshape), jnp.float32)
  k = jnp.asarray(rng.standard_normal(kshape), jnp.float32)

  def f(x, k):
    return jnp.sum(jnp.tanh(_conv(x, k, dn, **dict(kw))) ** 2)

  # Value, input gradient and kernel (weight) gradient, all rewritten.
  g = jax.value_and_grad(f, argnums=(0, 1))
  ref = jax.jit(g)(x, k)
  got = jax.jit(canonicalize_convs(g))(x, k)
  jaxpr = jax.make_jaxpr(canonicalize_convs(g))(x, k)
  assert count_noncanonical_convs(jaxpr) == 0
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_nested_jit_cond_and_scan_are_rewritten():
  x, y, p = _data()

  @jax.jit
  def inner_grad(z):
    return jax.grad(lambda u: jnp.sum(losses.cross_entropy(_net(p, u), y)))(z)

  def body(i, carry):
    z, acc = carry
    g = lax.cond(i % 2 == 0, inner_grad, lambda u: -inner_grad(u), z)
    z2, _ = lax.scan(lambda c, _: (c + 0.01 * inner_grad(c), None), z, None, length=2)
    return z2 + 0.05 * g, acc + jnp.sum(g)

  init = (x, jnp.zeros(()))
  ref = jax.jit(lambda c: lax.fori_loop(0, 3, body, c))(init)
  fast_fn = lambda c: attack_loop(body, c, 3)
  assert count_noncanonical_convs(jax.make_jaxpr(lax.fori_loop, static_argnums=(0, 1, 2))(
      0, 3, body, init)) > 0
  assert count_noncanonical_convs(jax.make_jaxpr(fast_fn)(init)) == 0
  got = jax.jit(fast_fn)(init)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def _numpy_init(model, x, rng):
  """He-normal kernels, identity BatchNorm, from numpy: ``model.init`` compiles
  threefry for every parameter, which costs far more than this test itself."""
  shapes = jax.eval_shape(lambda z: model.init(jax.random.PRNGKey(0), z, train=False), x)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if 'kernel' in name:
      fan_in = int(np.prod(leaf.shape[:-1]))
      v = rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)
    elif 'var' in name or 'scale' in name:
      v = np.ones(leaf.shape)
    else:
      v = 0.1 * rng.standard_normal(leaf.shape)
    return jnp.asarray(v, leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_resnet_sign_pgd_matches_top_level_step():
  """Tiny ResNet (strided 3x3 and 1x1 shortcut convs, BatchNorm): one sign-PGD step."""
  model = create_model('resnet', 10, width=4, depth=(1, 1, 1, 1))
  rng = _rng(2)
  x = jnp.asarray(rng.uniform(size=(2, 8, 8, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, size=(2,)), jnp.int32)
  variables = _numpy_init(model, x, rng)

  def body(_, z):
    g = jax.grad(lambda u: jnp.sum(losses.cross_entropy(
        model.apply(variables, u, train=False), y)))(z)
    return jnp.clip(z + 2 / 255 * jnp.sign(g), 0.0, 1.0)

  # Reference: the step at top level, where XLA canonicalises the convs itself
  # (a fori_loop reference runs the slow naive convs, which may round differently).
  ref = jax.jit(lambda z: body(0, z))(x)
  fast = lambda z: attack_loop(body, z, 1)
  assert count_noncanonical_convs(jax.make_jaxpr(fast)(x)) == 0
  got = jax.jit(fast)(x)
  assert float(jnp.mean(jnp.abs(ref - x) > 1e-6)) > 0.5  # the step moved most pixels
  # Identical except where |grad| is at float-noise level (sign may flip there).
  assert float(jnp.mean(jnp.abs(got - ref) > 1e-6)) < 1e-2


def test_gradient_through_the_loop_matches():
  """Differentiating the loop's result w.r.t. the parameters (e.g. for a meta-loss)."""
  x, y, p = _data()

  def outer(params, loop):
    return jnp.sum(loop(_smooth_body(params, y), x) ** 2)

  g_ref = jax.jit(jax.grad(lambda q: outer(q, lambda b, z: lax.fori_loop(0, 2, b, z))))(p)
  g_got = jax.jit(jax.grad(lambda q: outer(
      q, lambda b, z: attack_loop(b, z, 2))))(p)
  for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
