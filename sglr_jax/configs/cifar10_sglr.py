"""CIFAR-10, ResNet-18, PGD-AT + SGLR (paper Tab. 2, row PGD-AT + SGLR)."""
from sglr_jax.configs import _cifar_paper as cifar_paper


def get_config():
  c = cifar_paper.get_config('cifar10', 'at', sglr=True)
  return c
