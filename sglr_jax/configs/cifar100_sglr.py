"""CIFAR-100, ResNet-18, PGD-AT + SGLR (paper Tab. 3, row PGD-AT + SGLR)."""
from sglr_jax.configs import _cifar_paper as cifar_paper


def get_config():
  c = cifar_paper.get_config('cifar100', 'at', sglr=True)
  return c
