"""PGD-AT + SGLR on the packaged MNIST with 40% symmetric label noise; refinement from
epoch 4 (0-based), before memorisation begins."""
from sglr_jax.configs import mnist_noisy_at


def get_config():
  c = mnist_noisy_at.get_config()
  c.sglr.enabled = True
  c.sglr.start_epoch = 4
  return c
