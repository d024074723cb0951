"""Mixed precision: bfloat16 compute with float32 parameters, statistics and logits.

Tolerances. bfloat16 keeps 8 significant bits: every cast of an activation or weight
rounds it by at most 2^-9 relative (unit roundoff), and about 2^-8 once the rounded
operands meet in a product. The tiny models below cast at 5-10 layers, so their logits
drift by ~1% from float32 (random-walk accumulation: sqrt(10) * 2^-8 = 1.2%; measured
0.6-1.3%); 5% allows those errors to add coherently at every layer (10 * 2^-8 = 3.9%)
and still fails if a layer lost its normalisation or a cast went wrong (errors of order
one). The input gradient passes through the ReLU masks twice, and a pre-activation near
zero may flip sign in bfloat16, so its direction is compared (cosine > 0.9; measured
>= 0.957) instead of its values. The same holds for a train step's parameter update: PGD
steps along the sign of the input gradient, so pixels whose gradient is near zero move
the other way in bfloat16, the adversarial batch differs a little, and the update is
compared by direction too; its loss and gradient norm, sums over the batch, by value.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from sglr_jax import data, experiment, mesh as mesh_lib, models
from sglr_jax.configs import default
from sglr_jax.training import step as step_lib
from test_models import TINY, fake_variables

REL_TOL = 0.05  # relative L2 distance of bf16 from fp32 results (module docstring)
COS_TOL = 0.9  # cosine similarity of bf16 and fp32 input gradients


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _pair(name, width, depth, **kwargs):
  m32 = models.create_model(name, 7, width=width, depth=depth, **kwargs)
  m16 = models.create_model(name, 7, width=width, depth=depth, dtype='bfloat16', **kwargs)
  return m32, m16


def _dtypes(tree) -> set:
  """Dtypes of the floating-point leaves (an optimizer's step count is an integer)."""
  return {leaf.dtype for leaf in jax.tree.leaves(tree)
          if jnp.issubdtype(leaf.dtype, jnp.floating)}


def _compute_dtypes(fn, *args) -> set:
  """Operand dtypes of every convolution and matmul in ``fn``'s jaxpr (nested too)."""
  found = set()

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ('conv_general_dilated', 'dot_general'):
        found.update(str(v.aval.dtype) for v in eqn.invars)
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


def test_compute_dtype_names():
  assert models.compute_dtype('bfloat16') == jnp.bfloat16
  assert models.compute_dtype('float32') == jnp.float32
  with pytest.raises(ValueError, match=r"^model.compute_dtype='float16' is unknown"):
    models.compute_dtype('float16')
  assert (models.create_model('resnet18', 10, dtype='bfloat16')
          == models.create_model('resnet18', 10, dtype=jnp.bfloat16))


@pytest.mark.parametrize('name,width,depth', TINY)
def test_bf16_model_keeps_float32_variables_and_logits(name, width, depth):
  m32, m16 = _pair(name, width, depth)
  x = jax.random.uniform(jax.random.key(2), (8, 8, 8, 3))  # [B, H, W, C] in [0, 1]
  init = lambda m: jax.eval_shape(lambda: m.init(jax.random.key(0), x[:1], train=False))
  v32, v16 = init(m32), init(m16)
  assert _dtypes(v16) == {jnp.dtype('float32')}  # params and batch_stats
  assert jax.tree.structure(v16) == jax.tree.structure(v32)
  assert [a.shape for a in jax.tree.leaves(v16)] == [a.shape for a in jax.tree.leaves(v32)]
  v = fake_variables(m32, x)
  infer = lambda m: lambda v, x: m.apply(v, x, train=False)
  assert _compute_dtypes(infer(m16), v, x) == {'bfloat16'}
  assert _compute_dtypes(infer(m32), v, x) == {'float32'}

  def run(m):
    logits_fn = lambda z: m.apply(v, z, train=False)
    grad = jax.grad(lambda z: jnp.sum(jax.nn.log_softmax(logits_fn(z))[:, 0]))(x)
    logits_t, upd = m.apply(v, x, train=True, mutable=['batch_stats'])
    return logits_fn(x), grad, logits_t, upd

  l32, g32, t32, u32 = jax.jit(lambda: run(m32))()
  l16, g16, t16, u16 = jax.jit(lambda: run(m16))()
  for out in (l16, g16, t16):
    assert out.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out)))
  assert 0 < _rel(l16, l32) < REL_TOL  # > 0: the model did compute in bfloat16
  assert _rel(t16, t32) < REL_TOL
  cos = float(jnp.vdot(g16, g32) / (jnp.linalg.norm(g16) * jnp.linalg.norm(g32)))
  assert cos > COS_TOL
  # BatchNorm statistics: float32, and computed from (nearly) the same activations.
  assert _dtypes(u16) == {jnp.dtype('float32')}
  for a, b in zip(jax.tree.leaves(u16), jax.tree.leaves(u32)):
    assert _rel(a, b) < REL_TOL


def _experiment(name, width, depth, batch=16, k=10, hw=8):
  """A one-device experiment on synthetic CIFAR-like data, SGLR active from step 0."""
  c = default.get_config()
  c.model.name, c.model.width, c.model.depth = name, width, depth
  c.attack.steps = 3
  c.sglr.enabled = True
  c.sglr.start_epoch = 0
  c.train.batch_size = batch
  c.parallel.num_devices = 1
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4 * batch, hw, hw, 3), dtype=np.uint8)
  labels = rng.integers(0, k, 4 * batch).astype(np.int32)
  ds = data.Dataset('synthetic', k, images, labels, labels, images[:1], labels[:1])
  return experiment.build(c, ds=ds)


@pytest.mark.parametrize('name,width,depth', [('small_cnn', 8, ()),
                                              ('preact_resnet', 4, (1, 1, 1, 1))])
def test_bf16_train_step_is_close_to_fp32_and_keeps_state_float32(name, width, depth):
  exp = _experiment(name, width, depth)
  batch = mesh_lib.to_global(next(data.train_batches(exp.ds, 0, 0, 16)), exp.mesh)
  p0 = jax.device_get(experiment.initial_state(exp).params)
  out = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    model = exp.model.clone(dtype=dtype)  # the platform's conv / pool parts kept
    st = experiment.initial_state(dataclasses.replace(exp, model=model))
    step = step_lib.make_train_step(model, exp.step, exp.mesh, st, ops=exp.attack_ops)
    out[dtype] = jax.device_get(step(st, batch))
  (s32, m32), (s16, m16) = out[jnp.float32], out[jnp.bfloat16]
  for field in ('params', 'opt_state', 'batch_stats', 'label_table'):
    assert _dtypes(getattr(s16, field)) == {jnp.dtype('float32')}, field
  for key in ('loss_sum', 'grad_norm'):
    assert np.isfinite(m16[key])
    assert abs(m16[key] - m32[key]) < REL_TOL * abs(m32[key]), key
  delta = lambda s: jax.tree.map(lambda a, b: a - b, s.params, p0)  # the update
  flat = lambda t: np.concatenate([np.ravel(a) for a in jax.tree.leaves(t)])
  assert np.all(np.isfinite(flat(s16.params)))
  d16, d32 = flat(delta(s16)), flat(delta(s32))
  assert np.dot(d16, d32) / (np.linalg.norm(d16) * np.linalg.norm(d32)) > COS_TOL, (
      _rel(d16, d32))
  assert _rel(s16.label_table, s32.label_table) < REL_TOL
  assert not np.array_equal(flat(s16.params), flat(s32.params))
