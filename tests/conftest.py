"""Shared test helpers: float64 layers, dense Jacobians, non-trivial weights."""

import os
import subprocess
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Under pytest-xdist each worker is one of N TensorFlow processes sharing the
# cores: a core's share of threads each (their subprocesses inherit it), not
# N thread pools each as wide as the machine. Measured with -n 2 on 2 cores:
# the tests' summed time 1,302 s against 1,404 s.
_WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
if _WORKERS > 1:
  for _POOL in ('TF_NUM_INTRAOP_THREADS', 'TF_NUM_INTEROP_THREADS'):
    os.environ.setdefault(_POOL, str(max(1, (os.cpu_count() or 1) // _WORKERS)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import real_nvp  # noqa: E402,F401  before TensorFlow: it chooses the CPU kernels
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


# The longest files first in collection order (measured: these six take 2-4
# minutes each on 2 cores). pytest-xdist 3.8's --dist loadfile then orders
# the files by their number of tests (--loadscope-reorder, its default), so
# this order breaks its ties; forcing it (--no-loadscope-reorder) gains
# nothing in a simulation of the two workers' queues (docs/performance.md).
_LONGEST_FIRST = ('test_train.py', 'test_eval_export.py', 'test_distributed.py',
                  'test_hardware.py', 'test_best_checkpoint.py', 'test_model_dir.py')


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow: trains or starts TensorFlow processes for half a minute or '
      'more (-m "not slow" for a fast loop; CI runs everything)')


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.basename(str(item.fspath))
    return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)
  items.sort(key=rank)  # Stable: the order within a file is kept.


@pytest.fixture
def float64():
  """Layers created inside the test compute in float64 (exact log-det checks)."""
  previous, policy = keras.config.floatx(), keras.config.dtype_policy()
  keras.config.set_floatx('float64')
  keras.config.set_dtype_policy('float64')
  yield
  keras.config.set_floatx(previous)
  keras.config.set_dtype_policy(policy)


def dense_log_det(fn, x):
  """log|det| of the full Jacobian of fn at x (all of x's elements jointly)."""
  n = int(np.prod(x.shape))
  # A few elements are faster row by row than through pfor, which traces a
  # vectorized graph of the backward pass (the 2-D toy flow: 0.5 against 5
  # s a point); from 32 elements pfor is the faster.
  pfor = n > 16
  with tf.GradientTape(persistent=not pfor) as tape:
    tape.watch(x)
    y = fn(x)
  jacobian = tf.reshape(tape.jacobian(y, x, experimental_use_pfor=pfor),
                        [int(np.prod(y.shape)), n])
  sign, log_abs_det = tf.linalg.slogdet(jacobian)
  assert sign.numpy() != 0.
  return log_abs_det.numpy()


def per_example_log_det(fn, x):
  """[B] log|det| of each example's Jacobian (fn maps examples independently)."""
  return np.array([dense_log_det(fn, x[i:i + 1]) for i in range(x.shape[0])])


def perturb(layer_or_model, scale=0.3, seed=0):
  """Random trainable weights, so that couplings are not the identity."""
  rng = np.random.default_rng(seed)
  for variable in layer_or_model.trainable_variables:
    value = variable.numpy()
    variable.assign(value + scale * rng.standard_normal(value.shape))


TINY = dict(num_scales=1, num_blocks=1, feature_maps=4)


def tiny_trainer(model_dir, steps, checkpoint_every=2, **train):
  """A Trainer of a tiny digits model on one device, evaluating on 16 images."""
  from real_nvp import data, distribute, preset
  from real_nvp.config import TrainConfig
  from real_nvp.train_lib import Trainer
  config = TrainConfig(**{
      'train_steps': steps, 'batch_size': 16, 'eval_every': 0, 'eval_examples': 16,
      'checkpoint_every': checkpoint_every, 'num_samples': 4, 'log_every_secs': 1000.,
      **train})
  return Trainer(distribute.get_strategy('one_device'), data.load_dataset('digits'),
                 preset('digits', **TINY), config, str(model_dir))


def subprocess_env():
  """The environment of the suite's TensorFlow subprocesses: deterministic
  ops, unbuffered output, no cluster."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', TF_DETERMINISTIC_OPS='1',
             PYTHONUNBUFFERED='1')
  env.pop('TF_CONFIG', None)
  return env


class MirroredRuns:
  """The runs of distributed_helper.py's `mirrored` mode: `losses(name)`,
  `weights(name)` of a run named 'uniform/mirrored', 'variational/one_device',
  'uniform/mirrored_invert', ...; other results by key."""

  def __init__(self, path):
    self._arrays = np.load(path)

  def losses(self, name):
    return self._arrays[f'{name}/losses']

  def weights(self, name):
    count = sum(key.startswith(f'{name}/weights/') for key in self._arrays.files)
    return [self._arrays[f'{name}/weights/{i}'] for i in range(count)]

  def __getitem__(self, key):
    return self._arrays[key]


@pytest.fixture(scope='session')
def mirrored_runs(tmp_path_factory):
  """Every two-replica training run the suite compares, made once in a new
  process (two logical CPUs must be set before TensorFlow starts)."""
  out = tmp_path_factory.mktemp('mirrored') / 'runs.npz'
  subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'distributed_helper.py'),
                  'mirrored', str(out)], cwd=ROOT, env=subprocess_env(), check=True,
                 timeout=900)
  return MirroredRuns(out)
