"""PGD-AT + SGLR (refinement from epoch 4, 0-based) in the robust-overfitting setting of
``mnist_noisy_nobn_at``: the wide small CNN without BatchNorm, 40% symmetric noise."""
from sglr_jax.configs import mnist_noisy_nobn_at


def get_config():
  c = mnist_noisy_nobn_at.get_config()
  c.sglr.enabled = True
  c.sglr.start_epoch = 4
  return c
