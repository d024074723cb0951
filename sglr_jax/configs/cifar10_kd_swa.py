"""CIFAR-10, ResNet-18, KD-SWA (Chen et al. 2021; paper Tab. 2, row KD-SWA): PGD-AT
distilling from a robust and a standard teacher (``_kd.distil``), with one weight
snapshot per epoch from five epochs after the first learning-rate decay (the authors'
offset). Train the teachers first: ``configs/cifar10_at.py`` into ``runs/cifar10_at``
and ``configs/cifar10_standard.py`` into ``runs/cifar10_standard``.
"""
from sglr_jax.configs import _cifar_paper as cifar_paper
from sglr_jax.configs import _kd as kd


def get_config():
  c = kd.distil(cifar_paper.get_config('cifar10', 'at', sglr=False), 'runs/cifar10_at',
                'runs/cifar10_standard')
  c.train.swa_start_epoch = 105  # decay after epoch 100; the authors: 55 after 50
  return c
