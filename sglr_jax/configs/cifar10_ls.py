"""CIFAR-10, ResNet-18, PGD-AT + label smoothing (paper Tab. 2, row PGD-AT + LS)."""
from sglr_jax.configs import _cifar_paper as cifar_paper


def get_config():
  c = cifar_paper.get_config('cifar10', 'ls', sglr=False)
  c.objective.ls_eps = 0.1  # uniform smoothing mass (the paper does not print its value)
  return c
