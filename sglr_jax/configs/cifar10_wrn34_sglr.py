"""CIFAR-10, WideResNet-34-10, PGD-AT + SGLR (paper Tab. 2, WRN-34-10 rows)."""
from sglr_jax.configs import _cifar_paper as cifar_paper


def get_config():
  c = cifar_paper.get_config('cifar10', 'at', sglr=True, model='wrn34_10')
  return c
