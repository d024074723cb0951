"""CIFAR-10, ResNet-18, standard (non-adversarial) training: KD-SWA's standard teacher
(``configs/cifar10_kd_swa.py`` distils from its final checkpoint).

``attack.eps = 0``: the one-step training attack returns the clean image, so the
objective is the plain CE.
"""
from sglr_jax.configs import _cifar_paper as cifar_paper


def get_config():
  c = cifar_paper.get_config('cifar10', 'at', sglr=False)
  c.attack.eps = 0.0
  c.attack.steps = 1
  c.eval.suite = ('natural', 'pgd20', 'ece')
  return c
