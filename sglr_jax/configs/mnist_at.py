"""PGD-AT baseline on the packaged MNIST subset (the embedded default's baseline)."""
from sglr_jax.configs import default


def get_config():
  c = default.get_config()
  c.data.name = 'mnist'
  c.model.name = 'small_cnn'
  c.attack.eps = 0.1
  c.attack.step_size = 0.025
  c.attack.steps = 10
  c.eval.eps = 0.1
  c.eval.step_size = 0.0125
  c.eval.steps = 20
  c.eval.suite = ('natural', 'pgd20', 'autoattack', 'ece')  # AutoAttack: 1,000 points
  c.eval.batch_size = 1000  # the packaged test split in one batch (faster attacks on CPU)
  c.train.epochs = 20
  c.train.batch_size = 128
  c.schedule.decay_epochs = (10, 15)
  return c
