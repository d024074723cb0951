"""KD-SWA (Chen et al. 2021; ``_kd.distil``) on the packaged MNIST subset: PGD-AT
distilling from a robust and a standard teacher, with weight averaging from the first
epoch after the first learning-rate decay. Train the teachers first:
``configs/mnist_at.py`` into ``runs/mnist_at`` and ``configs/mnist_standard.py`` into
``runs/mnist_standard``.
"""
from sglr_jax.configs import _kd as kd
from sglr_jax.configs import mnist_at


def get_config():
  c = kd.distil(mnist_at.get_config(), 'runs/mnist_at', 'runs/mnist_standard')
  c.train.swa_start_epoch = 10  # decay_epochs (10, 15): averaging at the lower rates
  return c
