"""CIFAR-10, ResNet-18, KD-AT (Chen et al. 2021; paper Tab. 2, row KD-AT): PGD-AT
distilling from a robust teacher at temperature 2 (``_kd.distil``). Train the teacher
first: ``configs/cifar10_at.py`` into ``runs/cifar10_at`` (its best checkpoint distils).
"""
from sglr_jax.configs import _cifar_paper as cifar_paper
from sglr_jax.configs import _kd as kd


def get_config():
  return kd.distil(cifar_paper.get_config('cifar10', 'at', sglr=False), 'runs/cifar10_at')
