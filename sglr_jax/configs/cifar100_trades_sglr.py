"""CIFAR-100, ResNet-18, TRADES + SGLR (paper Tab. 3, row TRADES + SGLR)."""
from sglr_jax.configs import _cifar_paper as cifar_paper


def get_config():
  c = cifar_paper.get_config('cifar100', 'trades', sglr=True)
  return c
