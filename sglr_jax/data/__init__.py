"""Data on the host: datasets as uint8 arrays, label noise, epoch permutations, batches.

``load(DataParams(...))`` gives a ``Dataset``; ``train_batches`` / ``eval_batches``
cut it into host batches (see ``batches``); ``prefetch_to_mesh`` places them on the
devices ahead of the step. The on-device augmentation is
``data.augment``; CIFAR is read from a prepared tfds copy by ``data.tfds_cifar``.
"""
from __future__ import annotations

from sglr_jax.data.batches import epoch_permutation
from sglr_jax.data.batches import eval_batches
from sglr_jax.data.batches import steps_per_epoch
from sglr_jax.data.batches import train_batches
from sglr_jax.data.datasets import DATASETS
from sglr_jax.data.datasets import DataParams
from sglr_jax.data.datasets import Dataset
from sglr_jax.data.datasets import load
from sglr_jax.data.prefetch import prefetch_to_mesh

__all__ = ['DATASETS', 'DataParams', 'Dataset', 'load', 'train_batches', 'eval_batches',
           'steps_per_epoch', 'epoch_permutation', 'prefetch_to_mesh']
