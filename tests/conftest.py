"""Test setup: fast XLA compilation, a shared compilation cache, tiny configs."""
import os

# Tests run tiny models, where XLA:CPU's compile time dominates: compile unoptimised.
# (Numbers are compared within a run or with tolerances, never against optimised builds.)
_FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FAST_COMPILE).strip()

# An attack program runs its model hundreds of times, where -O0 costs ~25x in run time
# and saves little compile time: attack tests pass this to jax.jit(compiler_options=...).
O2 = {'xla_backend_optimization_level': 2}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402


def tiny_config(name='mnist_sglr', **overrides):
  """A config that trains in seconds: tiny CNN, small data, few PGD steps."""
  import importlib  # pylint: disable=g-import-not-at-top
  c = importlib.import_module(f'sglr_jax.configs.{name}').get_config()
  c.model.width = 8
  c.data.train_size = 256
  c.data.test_size = 100
  c.train.batch_size = 64
  c.train.epochs = 3
  c.schedule.decay_epochs = (2,)
  c.attack.steps = 2
  c.eval.steps = 3
  c.eval.batch_size = 50
  c.eval.autoattack_budget = 'smoke'
  if c.sglr.enabled:
    c.sglr.start_epoch = 1
  return set_fields(c, overrides)


def set_fields(c, overrides: dict):
  """``c`` with each dotted field of ``overrides`` set (``{'train.epochs': 2}``)."""
  for k, v in overrides.items():
    node = c
    *path, last = k.split('.')
    for p in path:
      node = node[p]
    node[last] = v
  return c


@pytest.fixture
def tiny():
  return tiny_config


def _enable_compilation_cache():
  """Identical programs (the same tiny model in several tests) compile once per session."""
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  path = os.environ.get('SGLR_TEST_JAX_CACHE')
  if not path:  # this process made it: it goes when the session's first process ends
    import atexit  # pylint: disable=g-import-not-at-top
    import shutil  # pylint: disable=g-import-not-at-top
    path = tempfile.mkdtemp(prefix='sglr_jax_cache_')
    atexit.register(shutil.rmtree, path, True)
  os.environ['SGLR_TEST_JAX_CACHE'] = path  # subprocesses and xdist workers share it
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


_enable_compilation_cache()


@pytest.fixture(scope='session', autouse=True)
def _temporaries_under_pytest(tmp_path_factory):
  """Temporary files of libraries (tfds leaves an empty ``tmp*tfds`` directory per
  dataset it inspects) go under pytest's own temporary tree, which pytest prunes."""
  import tempfile  # pylint: disable=g-import-not-at-top
  before = tempfile.tempdir
  tempfile.tempdir = str(tmp_path_factory.mktemp('tmp'))
  yield
  tempfile.tempdir = before
