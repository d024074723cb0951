"""KD-AT / KD-SWA (Chen et al. 2021): distillation settings shared by the configs.

The authors' weights: label CE 0.3, robust teacher 0.6, standard teacher 0.1, at
temperature 2. With one (robust) teacher the standard teacher's weight goes to the
label's CE, so the weights still sum to one.
"""


def distil(c, teacher: str, std_teacher: str = ''):
  """``c`` set to distil from the run in ``teacher`` (and ``std_teacher``, if given)."""
  c.objective.name = 'kd'
  c.objective.teacher_workdir = teacher
  c.objective.std_teacher_workdir = std_teacher
  c.objective.kd_temperature = 2.0
  c.objective.kd_weight = 0.6
  c.objective.kd_std_weight = 0.1 if std_teacher else 0.0
  c.objective.kd_ce_weight = 0.3 if std_teacher else 0.4
  c.train.swa_every_steps = 0  # with SWA: one snapshot per epoch end, as the authors
  return c
