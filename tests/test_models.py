"""Model shapes, published parameter counts, BatchNorm modes and name errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sglr_jax import models

# Tiny variants: (name, width, depth) -> built on 8x8 inputs to stay fast on 2 cores.
TINY = [
    ('small_cnn', 8, ()),
    ('resnet18', 4, (1, 1, 1, 1)),
    ('resnet50', 2, (1, 1, 1, 1)),
    ('preact_resnet18', 4, (1, 1, 1, 1)),
    ('wrn34_10', 1, (10,)),       # WRN-10-1: one block per stage
]


def _n_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _shapes(model, hw=32):
  """Variables' shapes without running the full-size model (eval_shape)."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, hw, hw, 3)),
                                           train=False))


def fake_variables(model, x, seed=0):
  """Variables of ``model`` with numpy-drawn values, shaped by ``eval_shape(init)``.

  ``model.init`` itself costs tens of seconds of XLA compile per model on this CPU
  (jax.random.normal/truncated_normal compile slowly), so the tests draw He-scaled
  kernels, BN scale ~1 and unit running variance directly.
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  rng = np.random.default_rng(seed)

  def draw(path, s):
    leaf = path[-1].key
    if leaf == 'kernel':
      return rng.normal(0, np.sqrt(2 / np.prod(s.shape[:-1])), s.shape).astype(s.dtype)
    if leaf == 'scale':
      return (1 + 0.1 * rng.normal(size=s.shape)).astype(s.dtype)
    if leaf == 'var':
      return np.ones(s.shape, s.dtype)
    if leaf == 'mean':
      return np.zeros(s.shape, s.dtype)
    return (0.01 * rng.normal(size=s.shape)).astype(s.dtype)  # biases

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _run_tiny(name, width, depth, num_classes=7, batch=8):
  """Inference (on two batches) and training forward passes of a tiny model, one jit."""
  model = models.create_model(name, num_classes=num_classes, width=width, depth=depth)
  x = 3.0 * jax.random.uniform(jax.random.key(2), (batch, 8, 8, 3)) + 1.0  # far from N(0, 1)
  variables = fake_variables(model, x)

  @jax.jit
  def run(v, x):
    other = x.at[1:].set(x[::-1][:-1] * 0.5)  # same first row, different rest of batch
    logits_t, updates = model.apply(v, x, train=True, mutable=['batch_stats'])
    return (model.apply(v, x, train=False), model.apply(v, other, train=False)[0],
            logits_t, updates)

  logits, first, logits_t, updates = run(variables, x)
  return dict(model=model, x=x, variables=variables, logits=logits, first=first,
              logits_t=logits_t, updates=updates)


_CACHE = {}


def _tiny(name, width, depth):
  key = (name, width, depth)
  if key not in _CACHE:
    _CACHE[key] = _run_tiny(name, width, depth)
  return _CACHE[key]


@pytest.mark.parametrize('name,width,depth', TINY)
def test_tiny_output_shapes(name, width, depth):
  r = _tiny(name, width, depth)
  assert r['logits'].shape == (8, 7) and r['logits_t'].shape == (8, 7)
  assert np.all(np.isfinite(np.asarray(r['logits'])))
  assert np.all(np.isfinite(np.asarray(r['logits_t'])))


def test_model_names_cover_new_models():
  assert {'preact_resnet18', 'wrn34_10', 'resnet18', 'small_cnn'} <= set(models.MODEL_NAMES)
  for name in models.MODEL_NAMES:  # every advertised name builds
    assert models.create_model(name, 10) is not None


# Published counts (trainable parameters incl. BatchNorm scale/bias, PyTorch convention):
#  * CIFAR ResNet-18 (kuangliu/pytorch-cifar): 11,173,962.
#  * PreActResNet-18 of Rice et al. 2020 (locuslab/robust_overfitting preactresnet.py, with
#    its final BN before pooling): 11,172,170 = kuangliu's PreActResNet18 11,171,146 + 2*512.
#  * WRN-34-10 (TRADES / Rice et al. wideresnet.py): 46,160,474.
@pytest.mark.parametrize('name,classes,expected', [
    ('resnet18', 10, 11_173_962),
    ('preact_resnet18', 10, 11_172_170),
    ('wrn34_10', 10, 46_160_474),
    ('resnet18', 100, 11_173_962 + 90 * 513),  # 90 more rows of a 512->K dense layer
    ('wrn34_10', 100, 46_160_474 + 90 * 641),  # 640-wide final features
])
def test_full_size_parameter_counts(name, classes, expected):
  model = models.create_model(name, classes)
  variables = _shapes(model)
  assert _n_params(variables['params']) == expected
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                       jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert out.shape == (2, classes)  # full size on CIFAR inputs, traced without compiling


def test_preact_and_wrn_structure_hand_counted():
  """Independent count from the architecture spec, so a wrong block layout fails."""
  conv = lambda cin, cout, k: cin * cout * k * k
  bn = lambda c: 2 * c
  # WRN-d-k with n blocks per stage: stem 3->16, stages 16k, 32k, 64k.
  def wrn(n, k, classes):
    total, cin = conv(3, 16, 3), 16
    for cout in (16 * k, 32 * k, 64 * k):
      for j in range(n):
        total += bn(cin) + conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3)
        if cin != cout:
          total += conv(cin, cout, 1)
        cin = cout
    return total + bn(cin) + cin * classes + classes
  assert wrn(5, 10, 10) == 46_160_474  # the formula itself matches the published number
  model = models.create_model('wrn34_10', 10, width=2, depth=(16,))  # WRN-16-2
  assert _n_params(_shapes(model)['params']) == wrn(2, 2, 10)
  model = models.create_model('wrn34_10', 10, width=1, depth=(1, 2, 3))
  params = _shapes(model)['params']
  assert sorted(k for k in params if k.startswith('block')) == [
      'block1_0', 'block2_0', 'block2_1', 'block3_0', 'block3_1', 'block3_2']
  assert set(params['block2_0']) == {'bn1', 'conv1', 'bn2', 'conv2', 'shortcut'}
  assert set(params['block2_1']) == {'bn1', 'conv1', 'bn2', 'conv2'}  # identity shortcut


def test_wrn_depth_validation():
  with pytest.raises(ValueError, match='6n \\+ 4'):
    models.create_model('wrn34_10', 10, depth=(33,))
  with pytest.raises(ValueError, match='blocks-per-stage'):
    models.create_model('wrn34_10', 10, depth=(1, 1))


@pytest.mark.parametrize('name,width,depth', TINY)
def test_train_and_inference_batchnorm_differ(name, width, depth):
  """Training uses batch statistics and updates running ones; inference uses running ones."""
  r = _tiny(name, width, depth)
  assert not np.allclose(np.asarray(r['logits']), np.asarray(r['logits_t']), atol=1e-4)
  old = jax.tree.leaves(r['variables']['batch_stats'])
  new = jax.tree.leaves(r['updates']['batch_stats'])
  assert len(old) == len(new) > 0
  assert any(not np.allclose(a, b) for a, b in zip(old, new))
  # Inference is per-example: a sample's logits do not depend on the rest of the batch.
  np.testing.assert_allclose(r['first'], r['logits'][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name,width,depth', [
    ('preact_resnet18', 4, (1, 1, 1, 1)), ('wrn34_10', 1, (10,))])
def test_synchronised_batchnorm_over_axis(name, width, depth):
  """With bn_axis_name='data', two shards of 4 give the statistics of the batch of 8.

  vmap with an axis name stands in for shard_map over a 'data' mesh axis (same
  collectives), so this runs on one CPU device. Each shard's own statistics would
  differ from the full batch's, so an ignored axis name fails the comparison.
  """
  r = _tiny(name, width, depth)
  synced = models.create_model(name, 7, width=width, depth=depth, bn_axis_name='data')
  shard = lambda xs: synced.apply(r['variables'], xs, train=True, mutable=['batch_stats'])
  out, upd = jax.jit(jax.vmap(shard, axis_name='data'))(r['x'].reshape(2, 4, 8, 8, 3))
  np.testing.assert_allclose(out.reshape(8, 7), r['logits_t'], rtol=1e-4, atol=1e-4)
  for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(r['updates'])):
    np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a[1], b, rtol=1e-4, atol=1e-5)


def test_unknown_name_raises_with_allowed_values():
  with pytest.raises(ValueError) as e:
    models.create_model('resnet19', 10)
  msg = str(e.value)
  assert 'resnet19' in msg
  for name in models.MODEL_NAMES:
    assert name in msg
