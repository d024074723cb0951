"""Adversarial weight perturbation: the perturbation's per-layer norm, the step against
a hand-written two-pass reference, warm-up, and 1 device == 2 devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _mp_worker as w
from conftest import tiny_config
from sglr_jax import data, experiment, mesh as mesh_lib, objectives
from sglr_jax.attacks.common import example_keys
from sglr_jax.training import awp, step as step_lib

GAMMA = 5e-3


def test_perturbation_has_norm_gamma_times_weight_norm_per_kernel():
  rng = np.random.default_rng(0)
  params = {'conv': {'kernel': rng.normal(size=(3, 3, 2, 4)), 'bias': rng.normal(size=(4,))},
            'dense': {'kernel': rng.normal(size=(8, 3)) * 5.0, 'bias': rng.normal(size=(3,))},
            'bn': {'scale': rng.normal(size=(4,))}}
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  grads = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape) * 1e-3, jnp.float32),
                       params)
  v = awp.perturbation(params, grads, GAMMA)
  for layer in ('conv', 'dense'):
    wn = np.linalg.norm(np.asarray(params[layer]['kernel']).ravel())
    vn = np.linalg.norm(np.asarray(v[layer]['kernel']).ravel())
    np.testing.assert_allclose(vn, GAMMA * wn, rtol=1e-6)
    # the direction is the gradient's
    cos = np.vdot(v[layer]['kernel'], grads[layer]['kernel']) / (
        vn * np.linalg.norm(np.asarray(grads[layer]['kernel']).ravel()))
    np.testing.assert_allclose(cos, 1.0, rtol=1e-6)
  for leaf in (v['conv']['bias'], v['dense']['bias'], v['bn']['scale']):
    np.testing.assert_array_equal(leaf, 0.0)  # 1-D parameters are not perturbed
  zero = awp.perturbation(params, jax.tree.map(jnp.zeros_like, grads), GAMMA)
  assert all(np.all(np.asarray(l) == 0) for l in jax.tree.leaves(zero))  # no NaN at g = 0


@pytest.fixture(scope='module')
def setup():
  """A tiny PGD-AT run with AWP, one device, and its first batch."""
  s = experiment.build(tiny_config('mnist_at', **{'objective.awp_gamma': GAMMA,
                                                  'parallel.num_devices': 1}))
  st = experiment.initial_state(s)
  batch = next(data.train_batches(s.ds, 0, 0, s.train.batch_size))
  return s, st, batch


def _reference(s, st, batch):
  """The two passes written out: x' as the step makes it, g at w, v, g at w + v, then
  the first SGD step (momentum buffer = gradient) from w."""
  model, hp = s.model, s.step.objective
  x = jnp.asarray(batch['image'], jnp.float32) / 255.0
  labels = jnp.asarray(batch['label'])
  keys = example_keys(jax.random.fold_in(st.rng, st.step), jnp.asarray(batch['index']))
  attack_keys = jax.vmap(jax.random.split)(keys)[:, 1]
  variables = {'params': st.params, 'batch_stats': st.batch_stats}
  x_adv = objectives.attack(hp, lambda z: model.apply(variables, z, train=False), x, labels,
                            attack_keys, s.attack_ops)
  onehot = jax.nn.one_hot(labels, s.ds.num_classes)

  def loss(params):
    logits, upd = model.apply({'params': params, 'batch_stats': st.batch_stats}, x_adv,
                              train=True, mutable=['batch_stats'])
    return jnp.mean(-jnp.sum(onehot * jax.nn.log_softmax(logits), -1)), upd

  # the model's BatchNorm synchronises over the mesh axis: run it under the 1-device mesh
  def both(params):
    g0 = jax.grad(lambda p: loss(p)[0])(params)
    flat_w, tree = jax.tree.flatten(params)
    flat_g = jax.tree.leaves(g0)
    flat_v = [GAMMA * jnp.linalg.norm(wl) * gl / jnp.linalg.norm(gl) if wl.ndim > 1
              else jnp.zeros_like(wl) for wl, gl in zip(flat_w, flat_g)]
    moved = jax.tree.unflatten(tree, [a + b for a, b in zip(flat_w, flat_v)])
    g1, upd = jax.grad(loss, has_aux=True)(moved)
    return g1, upd['batch_stats']

  from jax.sharding import PartitionSpec as P
  g1, stats = jax.jit(jax.shard_map(both, mesh=s.mesh, in_specs=P(), out_specs=P(),
                                    check_vma=False))(st.params)
  lr, wd = s.optim.lr, s.optim.weight_decay
  new = jax.tree.map(lambda p, g: p - lr * (g + wd * p), st.params, g1)
  return new, stats


def test_step_equals_two_pass_reference(setup):
  s, st, batch = setup
  step = step_lib.make_train_step(s.model, s.step, s.mesh, st, ops=s.attack_ops)
  before = jax.tree.map(np.asarray, st.params)
  new, _ = step(jax.tree.map(jnp.copy, st), mesh_lib.to_global(batch, s.mesh))
  want_params, want_stats = _reference(s, st, batch)
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(want_params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(new.batch_stats), jax.tree.leaves(want_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # the state passed in keeps w bit for bit (w + v never reaches it)
  for a, b in zip(jax.tree.leaves(st.params), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)


def test_awp_changes_the_update_and_warm_up_is_the_plain_step(setup):
  s, st, batch = setup
  plain_sc = s.step._replace(awp=None)
  warm_sc = s.step._replace(awp=awp.AWPParams(GAMMA, warmup_epochs=1))
  g = mesh_lib.to_global(batch, s.mesh)
  out = {}
  for name, sc in (('plain', plain_sc), ('warm', warm_sc), ('awp', s.step)):
    step = step_lib.make_train_step(s.model, sc, s.mesh, st, ops=s.attack_ops)
    out[name] = step(jax.tree.map(jnp.copy, st), g)[0].params
  for a, b in zip(jax.tree.leaves(out['plain']), jax.tree.leaves(out['warm'])):
    np.testing.assert_array_equal(a, b)  # epoch 0 < warm-up: v = 0 exactly
  diff = max(float(jnp.max(jnp.abs(a - b)))
             for a, b in zip(jax.tree.leaves(out['plain']), jax.tree.leaves(out['awp'])))
  assert diff > 1e-4  # far outside the reference test's tolerance


def test_one_and_two_devices_agree(tmp_path):
  """AWP + SGLR on 2 devices (a subprocess) vs 1 device: the perturbation comes from the
  averaged gradient, so both perturb alike (float32 summation order only, as in
  tests/test_mesh.py)."""
  overrides = {'objective.awp_gamma': 0.01}
  spec = {'job': 'steps', 'overrides': overrides, 'layouts': ['replicated'], 'steps': 2,
          'out': str(tmp_path / 'out.npz')}
  proc, log = w.start_job(spec, devices=2, tmp=str(tmp_path))
  try:
    s = experiment.build(w.config(**overrides))
    assert s.mesh.size == 1 and s.step.awp is not None
    st, _ = w.run_steps(s, experiment.initial_state(s), 2)
    one = w.arrays(st)
    w.finish_job(proc, log, timeout=400)
  finally:
    w.stop([proc])
  two = np.load(spec['out'])
  n = w.MP_OVERRIDES['data.train_size']
  for k, a in one.items():
    b = two['replicated/' + k]
    if k == 'label_table':
      a, b = a[:n], b[:n]
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=k)
