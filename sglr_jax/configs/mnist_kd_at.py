"""PGD-AT + distillation from a robust teacher (KD-AT, Chen et al. 2021; ``_kd.distil``)
on the packaged MNIST subset. Train the teacher first: ``configs/mnist_at.py`` into
``runs/mnist_at`` (its best checkpoint distils).
"""
from sglr_jax.configs import _kd as kd
from sglr_jax.configs import mnist_at


def get_config():
  return kd.distil(mnist_at.get_config(), 'runs/mnist_at')
