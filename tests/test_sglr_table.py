"""SGLR refinement against numbers worked out by hand (3 classes)."""
import jax.numpy as jnp
import numpy as np

from sglr_jax import sglr_table

HP = sglr_table.SGLRParams(momentum=0.9, lam=0.8, temperature=1.0, alpha=0.5, start_epoch=0)
ONE_HOT0 = jnp.array([1.0, 0.0, 0.0])
ADV = jnp.array([2.0, 1.0, 0.0])  # softmax = [0.665241, 0.244728, 0.090031]
CLEAN = jnp.zeros(3)  # softmax = [1/3, 1/3, 1/3]


def test_refine_one_hand_computed():
  # p = 0.8 * softmax(adv) + 0.2 / 3 = [0.598860, 0.262449, 0.138691]
  # Y = 0.9 * onehot + 0.1 * p;   t = 0.5 * onehot + 0.5 * Y
  row, target = sglr_table.refine_one(ONE_HOT0, ADV, CLEAN, ONE_HOT0, HP)
  np.testing.assert_allclose(row, [0.959886, 0.026245, 0.013869], atol=1e-6)
  np.testing.assert_allclose(target, [0.979943, 0.013122, 0.006935], atol=1e-6)
  np.testing.assert_allclose(jnp.sum(target), 1.0, atol=1e-6)


def test_temperature_changes_the_label():
  # T = 2: softmax(adv / 2) = [0.506480, 0.307196, 0.186324]
  # p = [0.471851, 0.312424, 0.215726]
  row, _ = sglr_table.refine_one(ONE_HOT0, ADV, CLEAN, ONE_HOT0, HP._replace(temperature=2.0))
  np.testing.assert_allclose(row, [0.947185, 0.031242, 0.021573], atol=1e-6)


def test_ema_uses_the_stored_row():
  stored = jnp.array([0.5, 0.3, 0.2])
  row, _ = sglr_table.refine_one(stored, ADV, CLEAN, ONE_HOT0, HP)
  np.testing.assert_allclose(row, [0.509886, 0.296245, 0.193869], atol=1e-6)


def test_alpha_zero_is_plain_at():
  rows = jnp.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
  base = jnp.eye(3)[jnp.array([0, 2])]
  _, targets = sglr_table.refine_batch(rows, jnp.stack([ADV, ADV]), jnp.stack([CLEAN, CLEAN]),
                                   base, HP._replace(alpha=0.0), jnp.asarray(True))
  np.testing.assert_array_equal(targets, base)


def test_warm_up_keeps_one_hot_and_table():
  rows = jnp.array([[0.5, 0.3, 0.2]])
  base = jnp.eye(3)[jnp.array([0])]
  new_rows, targets = sglr_table.refine_batch(rows, ADV[None], CLEAN[None], base, HP,
                                          jnp.asarray(False))
  np.testing.assert_array_equal(new_rows, rows)
  np.testing.assert_array_equal(targets, base)


def test_batch_is_the_vmapped_single_example():
  rng = np.random.default_rng(0)
  rows = jnp.asarray(rng.dirichlet(np.ones(5), size=4), jnp.float32)
  adv, clean = (jnp.asarray(rng.normal(size=(4, 5)), jnp.float32) for _ in range(2))
  base = jnp.eye(5)[jnp.array([0, 3, 1, 4])]
  got_rows, got_t = sglr_table.refine_batch(rows, adv, clean, base, HP, jnp.asarray(True))
  for i in range(4):
    r, t = sglr_table.refine_one(rows[i], adv[i], clean[i], base[i], HP)
    np.testing.assert_allclose(got_rows[i], r, rtol=1e-6)
    np.testing.assert_allclose(got_t[i], t, rtol=1e-6)


def test_write_owned_rows_matches_replicated_write():
  table = jnp.asarray(np.random.default_rng(1).random((8, 3)), jnp.float32)
  idx = jnp.array([6, 1, 3])
  rows = jnp.ones((3, 3)) * jnp.arange(1, 4)[:, None]
  full = sglr_table.write_rows(table, idx, rows)
  shards = [sglr_table.write_owned_rows(table[o:o + 4], idx, rows, o) for o in (0, 4)]
  np.testing.assert_array_equal(jnp.concatenate(shards), full)
  # reading back through the owners gives the written rows
  got = sum(sglr_table.read_owned_rows(s, idx, o) for s, o in zip(shards, (0, 4)))
  np.testing.assert_array_equal(got, rows)
