"""Model shapes, published parameter counts, BatchNorm modes, the registry's rules."""
from __future__ import annotations

import functools
import hashlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sglr_jax import models

# Tiny variants: (name, width, depth) -> built on 8x8 inputs to stay fast on 2 cores.
TINY = [
    ('small_cnn', 8, ()),
    ('resnet', 4, (1, 1, 1, 1)),
    ('resnet_bottleneck', 2, (1, 1, 1, 1)),
    ('preact_resnet', 4, (1, 1, 1, 1)),
    ('wide_resnet', 1, (10,)),       # WRN-10-1: one block per stage
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
  assert set(models.GENERIC.values()) <= set(models.MODEL_NAMES)
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
  model = models.create_model('wide_resnet', 10, width=2, depth=(16,))  # WRN-16-2
  assert _n_params(_shapes(model)['params']) == wrn(2, 2, 10)
  model = models.create_model('wide_resnet', 10, width=1, depth=(1, 2, 3))
  params = _shapes(model)['params']
  assert sorted(k for k in params if k.startswith('block')) == [
      'block1_0', 'block2_0', 'block2_1', 'block3_0', 'block3_1', 'block3_2']
  assert set(params['block2_0']) == {'bn1', 'conv1', 'bn2', 'conv2', 'shortcut'}
  assert set(params['block2_1']) == {'bn1', 'conv1', 'bn2', 'conv2'}  # identity shortcut


def test_wrn_depth_validation():
  for name in ('wrn34_10', 'wide_resnet'):  # a malformed depth is named as such first
    with pytest.raises(ValueError, match='6n \\+ 4'):
      models.create_model(name, 10, depth=(33,))
    with pytest.raises(ValueError, match='blocks-per-stage'):
      models.create_model(name, 10, depth=(1, 1))


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
    ('preact_resnet', 4, (1, 1, 1, 1)), ('wide_resnet', 1, (10,))])
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


# ------------------------------------------------------------------ the registry's rules

@pytest.mark.parametrize('preset,depth,generic', [
    ('resnet18', (1, 1, 1, 1), 'resnet'), ('resnet34', (2, 2, 2, 2), 'resnet'),
    ('resnet50', (1, 1, 1, 1), 'resnet_bottleneck'),
    ('preact_resnet18', (1, 1, 1, 1), 'preact_resnet'),
    ('wrn34_10', (10,), 'wide_resnet'), ('wrn34_10', (5, 5, 4), 'wide_resnet')])
def test_preset_rejects_a_contradicting_depth_and_names_the_generic(preset, depth, generic):
  assert models.GENERIC[preset] == generic
  for call in (lambda: models.create_model(preset, 10, depth=depth),
               lambda: models.check_model(preset, 0, depth, 0, ())):
    with pytest.raises(ValueError) as e:
      call()
    msg = str(e.value)
    assert '\n' not in msg and preset in msg and f"model.name='{generic}'" in msg
  models.check_model(generic, 0, depth, 0, ())  # the generic name takes it
  assert models.create_model(generic, 10, depth=depth) is not None


@pytest.mark.parametrize('preset,depth,stages', [
    ('resnet18', (2, 2, 2, 2), (2, 2, 2, 2)), ('resnet34', (3, 4, 6, 3), (3, 4, 6, 3)),
    ('preact_resnet18', (2, 2, 2, 2), (2, 2, 2, 2)), ('wrn34_10', (34,), (5, 5, 5)),
    ('wrn34_10', (5, 5, 5), (5, 5, 5))])
def test_preset_accepts_its_own_depth_and_any_width(preset, depth, stages):
  model = models.create_model(preset, 10, width=3, depth=depth)
  assert tuple(model.stage_sizes) == stages
  assert models.create_model(preset, 10, width=3) == model  # same module as depth=()


def test_generic_names_default_to_their_presets():
  """A generic name without depth is its best-known preset: same module, same parameters."""
  for generic, preset in (('resnet', 'resnet18'), ('resnet_bottleneck', 'resnet50'),
                          ('preact_resnet', 'preact_resnet18'), ('wide_resnet', 'wrn34_10')):
    assert models.GENERIC[preset] == generic
    assert models.create_model(generic, 10) == models.create_model(preset, 10)


@pytest.mark.parametrize('args,field', [
    (('resnet18', 0, (), 128, ()), 'model.dense'),
    (('wide_resnet', 0, (), 0, (8, 8)), 'model.features'),
    (('small_cnn', 8, (), 0, (8, 8)), 'model.features and model.width'),
    (('small_cnn', 0, (), 0, (8, 0)), 'model.features'),
    (('small_cnn', 0, (2,), 0, ()), 'model.depth'),
    (('small_cnn', 0, (), -1, ()), 'model.dense'),
    (('resnet', 0, (1, 1, 1), 0, ()), 'model.depth'),
    (('preact_resnet', 0, (1, 0, 1, 1), 0, ()), 'model.depth'),
    (('resnet', -2, (), 0, ()), 'model.width'),
    (('vgg', 0, (), 0, ()), 'model.name'),
])
def test_check_model_names_the_field_in_one_line(args, field):
  with pytest.raises(ValueError) as e:
    models.check_model(*args)
  assert str(e.value).startswith(field) and '\n' not in str(e.value)
  with pytest.raises(ValueError):  # create_model applies the same checks
    models.create_model(args[0], 10, width=args[1], depth=args[2],
                        **{k: v for k, v in (('dense', args[3]), ('features', args[4])) if v})


def test_check_model_accepts_the_shipped_combinations():
  models.check_model('small_cnn', 0, (), 1024, (64, 64))  # mnist_noisy_at's net
  models.check_model('small_cnn', 8, (), 0, ())
  for name in models.MODEL_NAMES:
    models.check_model(name, 0, (), 0, ())


# Param trees of the models as they were before the split into modules (models.py at
# the commit this replaced), pinned as (number of leaves, sha256[:16] of the
# "path shape" lines in tree order). ``model.init`` draws each parameter from a key
# folded with its module path, so equal names and shapes mean bit-identical
# initial parameters; the hand-built reference below checks the values for one model.
_FULL_TREES = {  # num_classes 10, 32x32x3 inputs
    'small_cnn': (14, '24688904d92d8ec8'), 'resnet18': (102, 'c4733d8c85d59e4b'),
    'resnet34': (182, '11020d2355886e96'), 'resnet50': (267, '9809808e85485a42'),
    'preact_resnet18': (90, 'b79ddbdfc3127774'), 'wrn34_10': (160, 'd1dd8c06571de528'),
}
_TINY_TREES = {  # num_classes 7, 8x8x3 inputs, the TINY variants
    'small_cnn': (14, '699cc663e589191e'), 'resnet': (62, 'a7521bc800d6af48'),
    'resnet_bottleneck': (87, '9352b87611a1151a'), 'preact_resnet': (50, 'c5dd1dc62f60ae54'),
    'wide_resnet': (39, 'f90e921259c8aa9a'),
}


def _tree_digest(model, hw=32, c=3):
  tree = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, hw, hw, c)),
                                           train=False))
  lines = [f'{jax.tree_util.keystr(p)} {tuple(leaf.shape)}'
           for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]
  return len(lines), hashlib.sha256('\n'.join(lines).encode()).hexdigest()[:16]


def test_param_trees_are_unchanged():
  for name in models.MODEL_NAMES:
    preset = {v: k for k, v in models.GENERIC.items() if k != 'resnet34'}.get(name, name)
    assert _tree_digest(models.create_model(name, 10)) == _FULL_TREES[preset], name
  for name, width, depth in TINY:
    model = models.create_model(name, 7, width=width, depth=depth)
    assert _tree_digest(model, hw=8) == _TINY_TREES[name], name
  madry = models.SmallCNN(features=(4, 8), kernel=5, strides=1, use_pool=True, dense=16)
  assert _tree_digest(madry, hw=12, c=1) == (14, '2301e394f8a1f6bd')


class _ReferenceSmallCNN(nn.Module):
  """The small CNN written out with plain Flax layers (the pre-split definition)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5)
    for f in (8, 16):
      x = nn.Conv(f, (3, 3), strides=2, padding='SAME', use_bias=False)(x)
      x = nn.relu(norm()(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(128)(x))
    return nn.Dense(7)(x)


def test_small_cnn_init_and_outputs_match_a_hand_built_reference():
  r = _tiny('small_cnn', 8, ())
  ref = _ReferenceSmallCNN()
  init = lambda m: jax.jit(lambda k: m.init(k, r['x'][:1], train=False))(jax.random.key(5))
  got, want = init(r['model']), init(ref)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(r['logits'], jax.jit(ref.apply)(r['variables'], r['x']))


@pytest.mark.parametrize('name,width,depth', TINY)
def test_every_conv_goes_through_the_conv_field(name, width, depth):
  """A platform's ``conv`` replaces every convolution, and nothing else changes."""
  calls = []

  def counting(*args, **kwargs):
    calls.append(args[1].shape)  # kernel
    return jax.lax.conv_general_dilated(*args, **kwargs)

  conv = functools.partial(nn.Conv, conv_general_dilated=counting)
  plain = models.create_model(name, 7, width=width, depth=depth)
  model = models.create_model(name, 7, width=width, depth=depth, conv=conv)
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  v = jax.eval_shape(lambda z: plain.init(jax.random.key(0), z, train=False), x)
  jax.eval_shape(lambda v, z: model.apply(v, z, train=False), v, x)
  kernels = [leaf.shape for leaf in jax.tree.leaves(v['params']) if leaf.ndim == 4]
  assert sorted(calls) == sorted(kernels) and kernels


def test_small_cnn_without_batch_norm_has_conv_biases_and_no_statistics():
  m = models.create_model('small_cnn', 10, width=8, batch_norm=False)
  v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)
  assert 'batch_stats' not in v
  assert all('bias' in v['params'][f'Conv_{i}'] for i in range(2))
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 28, 28, 1))
  # train and inference mode are one function without BatchNorm
  np.testing.assert_array_equal(m.apply(v, x, train=False), m.apply(v, x, train=True))
