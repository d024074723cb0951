"""The paper's CIFAR setup, shared by every ``configs/cifar*.py`` (a helper, not a
config: ``--config`` files are the modules without a leading underscore).

ResNet-18 (or WRN-34-10), batch 128, SGD momentum 0.9, weight decay 5e-4, lr 0.1
decayed x0.1 after epochs 100 and 150 of 200; eps 8/255, PGD-10 step 2/255; test
PGD-20 step 2/255; random crop 32 (4-pixel zero padding) + horizontal flip; SGLR
refines from epoch 90 (the authors' code).
"""
from sglr_jax.configs import default


def get_config(dataset: str, objective: str, sglr: bool, model: str = 'resnet18'):
  """``dataset``: 'cifar10' or 'cifar100'; ``objective``: 'at', 'trades', 'ls' or 'te'."""
  c = default.get_config()
  c.data.name = dataset
  c.data.augment = True
  c.model.name = model
  c.objective.name = objective
  c.sglr.enabled = sglr
  c.sglr.start_epoch = 90
  c.train.epochs = 200
  c.train.batch_size = 128
  c.optim.lr = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.schedule.name = 'piecewise'
  c.schedule.decay_epochs = (100, 150)
  c.attack.eps = 8 / 255
  c.attack.step_size = 2 / 255
  c.attack.steps = 10
  c.eval.eps = 8 / 255
  c.eval.step_size = 2 / 255
  c.eval.steps = 20
  c.eval.batch_size = 500
  c.eval.suite = ('natural', 'pgd20', 'autoattack', 'ece')
  if objective == 'trades':
    c.objective.beta = 6.0
  return c
