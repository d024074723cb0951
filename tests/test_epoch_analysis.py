"""Per-epoch IIW and Hessian trace in the history: the numbers of the analysis functions
applied directly to the epoch's checkpoint, only on the epochs due, the same after a
resume."""
import pytest

from conftest import tiny_config
from sglr_jax import experiment, history
from sglr_jax.analysis import checkpoint as analysis_checkpoint, hessian, information
from sglr_jax.training import epoch_analysis, loop

TIME_KEYS = ('epoch_time_s', 'train_time_s')
KEYS = ('iiw', 'hessian_trace')
# 90 examples: two chunks of eval.batch_size 50, the second padded (the padding masked)
FIELDS = {'train.epochs': 2, 'schedule.decay_epochs': (1,), 'train.train_fit_every_epochs': 0,
          'eval.every_epochs': 0,  # no test attack to compile: the analysis is what is tested
          'data.noise.kind': 'symmetric', 'data.noise.rate': 0.4,
          'train.analysis_examples': 90, 'train.hessian_probes': 2}


def _config(**more):
  return tiny_config('mnist_at', **FIELDS, **more)


def _strip(hist, drop=()):
  return [{k: v for k, v in r.items() if k not in TIME_KEYS + drop} for r in hist]


@pytest.fixture(scope='module')
def full(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('full'))
  loop.train_and_evaluate(_config(**{'train.analysis_every_epochs': 1}), wd, progress=False)
  return wd


def test_every_epoch_has_the_numbers_of_the_analysis_of_its_checkpoint(full):
  hist = history.read_history(full)
  assert [r['epoch'] for r in hist] == [1, 2]
  assert all(set(KEYS) <= set(r) for r in hist)
  assert hist[-1]['iiw'] > 0  # exactly 0 only at the initial weights
  exp = experiment.build(_config(**{'train.analysis_every_epochs': 1}))
  st, epoch = experiment.restore(exp, full, 'final')
  assert epoch == 2
  params0 = experiment.initial_state(exp).params  # rebuilt from the seed
  n = 90
  x, y = exp.ds.train_images[:n], exp.ds.train_labels[:n]  # the noisy labels trained on
  assert (y != exp.ds.train_clean_labels[:n]).any()
  loss = analysis_checkpoint.clean_ce(exp.eval_model, st.batch_stats)
  with experiment.eval_precision(exp.eval):
    iiw = information.information_in_weights(loss, st.params, params0, [(x, y)])['iiw']
    trace = hessian.hutchinson_trace(lambda p: loss(p, (x, y)), st.params,
                                     epoch_analysis.hessian_key(exp.seed, 2), probes=2)
  assert hist[-1]['iiw'] == pytest.approx(iiw, rel=1e-4)
  assert hist[-1]['hessian_trace'] == pytest.approx(trace['trace'], rel=1e-4)
  other = hessian.hutchinson_trace(lambda p: loss(p, (x, y)), st.params,
                                   epoch_analysis.hessian_key(exp.seed, 1), probes=2)
  assert other['trace'] != pytest.approx(hist[-1]['hessian_trace'], rel=1e-4)  # the epoch's key


def test_every_second_epoch_and_a_resume_log_what_an_uninterrupted_run_does(full, tmp_path):
  """Halted after epoch 1 and resumed, every 2 epochs: epoch 1 has no analysis, epoch 2
  the numbers of the uninterrupted run (IIW against the initial weights, rebuilt)."""
  wd = str(tmp_path)
  every2 = {'train.analysis_every_epochs': 2}
  loop.train_and_evaluate(_config(**every2, **{'train.halt_after_epoch': 1}), wd,
                          progress=False)
  hist = loop.train_and_evaluate(_config(**every2), wd, progress=False)
  assert [set(KEYS) <= set(r) for r in hist] == [False, True]
  assert not set(KEYS) & set(hist[0])
  ref = history.read_history(full)
  assert _strip(hist[:1]) == _strip(ref[:1], KEYS)
  assert _strip(hist[1:]) == _strip(ref[1:])


def test_due_epochs_and_settings_of_old_configs():
  assert [e for e in range(1, 7) if epoch_analysis.is_due(2, e)] == [2, 4, 6]
  assert not any(epoch_analysis.is_due(0, e) for e in range(1, 4))
  c = tiny_config('mnist_at')
  del c.train['analysis_every_epochs']  # a config.json written before the field
  assert epoch_analysis.settings(c)[0] == 0
