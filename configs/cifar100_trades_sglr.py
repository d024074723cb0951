"""CIFAR-100, ResNet-18, TRADES + SGLR (paper Tab. 3, row TRADES + SGLR)."""
from configs import default


def get_config():
  c = default.get_config()
  c.data.name = 'cifar100'
  c.data.augment = True  # random crop 32 (4-pixel zero padding) + horizontal flip
  c.model.name = 'resnet18'
  c.objective.name = 'trades'
  c.sglr.enabled = True
  c.sglr.start_epoch = 90  # authors' code: refinement from epoch 90 of 200
  # The paper's schedule: batch 128, SGD 0.9, wd 5e-4, lr 0.1 decayed x0.1 after epochs
  # 100 and 150 of 200; eps 8/255, PGD-10 step 2/255; test PGD-20 step 2/255.
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
  c.objective.beta = 6.0
  return c
