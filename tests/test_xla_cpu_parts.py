"""What the builder injects on XLA:CPU: exactly the parts CPU runs used before injection."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sglr_jax import models
from sglr_jax.attacks import common, pgd
from sglr_jax.platforms.xla_cpu import canonical_loop, conv, parts, pool


def test_model_parts_are_the_fast_conv_and_pool_for_the_small_cnn_only():
  p = parts.model_parts('small_cnn')
  assert set(p) == {'conv', 'pool'}
  assert p['pool'] is pool.max_pool
  assert p['conv'].func is nn.Conv and not p['conv'].args
  assert p['conv'].keywords == {'conv_general_dilated': conv.conv_general_dilated}
  for name in models.MODEL_NAMES:
    if name != 'small_cnn':
      assert parts.model_parts(name) == {}, name  # XLA's own convs for the ResNets
  # One object per part: models built twice are equal (and hash equal).
  a = models.create_model('small_cnn', 10, **parts.model_parts('small_cnn'))
  b = models.create_model('small_cnn', 10, **parts.model_parts('small_cnn'))
  assert a == b and hash(a) == hash(b)
  assert a != models.create_model('small_cnn', 10)


def test_attack_ops_are_the_canonical_loop_and_transform():
  ops = parts.attack_ops()
  assert isinstance(ops, common.AttackOps)
  assert ops.loop is canonical_loop.attack_loop
  assert ops.grad_transform is canonical_loop.canonicalize_convs
  assert ops == parts.attack_ops() and hash(ops) == hash(parts.attack_ops())  # jit-static
  assert ops != common.DEFAULT_OPS


def test_attack_ops_make_pgd_loop_convs_canonical():
  """Plain PGD keeps the swapped-kernel input-gradient convs in its loop body; with the
  CPU ops none is left (same ``pgd_attack``, only ``ops`` differs)."""
  model = models.create_model('resnet', 10, width=2, depth=(1, 1, 1, 1))
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  v = jax.eval_shape(lambda z: model.init(jax.random.key(0), z, train=False), x)
  y = jax.ShapeDtypeStruct((2,), jnp.int32)

  def attack(ops):
    return jax.make_jaxpr(lambda v, x, y: pgd.pgd_attack(
        lambda z: model.apply(v, z, train=False), x, y, eps=0.03, step_size=0.01, steps=3,
        key=jax.random.key(1), ops=ops))(v, x, y)
  assert canonical_loop.count_noncanonical_convs(attack(common.DEFAULT_OPS)) > 0
  assert canonical_loop.count_noncanonical_convs(attack(parts.attack_ops())) == 0


def test_init_compiler_options_are_unoptimised_and_a_fresh_dict():
  opts = parts.init_compiler_options()
  assert opts == {'xla_backend_optimization_level': 0,
                  'xla_llvm_disable_expensive_passes': True}
  opts['xla_backend_optimization_level'] = 3
  assert parts.init_compiler_options()['xla_backend_optimization_level'] == 0
  # XLA:CPU accepts them (an unknown option would fail the compile).
  model = models.create_model('small_cnn', 10, width=4)
  v = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8, 8, 1)), train=False),
              compiler_options=parts.init_compiler_options())(jax.random.key(0))
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(v))
