"""The embedded default: PGD-AT + SGLR on the packaged MNIST subset, 2-core CPU sized.

eps 0.1 (train PGD-10 step eps/4, test PGD-20 step eps/8), small CNN, 20 epochs,
lr 0.1 decayed x0.1 after epochs 10 and 15, refinement from epoch 4 (0-based) on.
"""
from sglr_jax.configs import mnist_at


def get_config():
  c = mnist_at.get_config()
  c.sglr.enabled = True
  c.sglr.start_epoch = 4
  return c
