"""CIFAR-10, ResNet-18, TRADES (beta 6; paper Tab. 2, row TRADES)."""
from sglr_jax.configs import _cifar_paper as cifar_paper


def get_config():
  c = cifar_paper.get_config('cifar10', 'trades', sglr=False)
  return c
