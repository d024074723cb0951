"""CIFAR-100, ResNet-18, PGD-AT (paper Tab. 3, row PGD-AT)."""
from sglr_jax.configs import _cifar_paper as cifar_paper


def get_config():
  c = cifar_paper.get_config('cifar100', 'at', sglr=False)
  return c
