"""The fused Adam: the same updates as keras.optimizers.Adam."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from real_nvp.optimizer import Adam
from real_nvp.train_step import WarmupSchedule


@pytest.mark.parametrize('learning_rate', [1e-2, WarmupSchedule(1e-2, 3)])
def test_adam_matches_keras_adam(learning_rate):
  rng = np.random.default_rng(0)
  initial = [rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
             rng.normal(size=(4,)).astype(np.float32)]
  ours = [tf.Variable(value) for value in initial]
  theirs = [keras.Variable(value) for value in initial]
  adam = Adam(ours, learning_rate)
  reference = keras.optimizers.Adam(learning_rate)
  reference.build(theirs)
  step = tf.function(adam.apply_gradients)
  for _ in range(6):
    gradients = [tf.constant(rng.normal(size=v.shape).astype(np.float32)) for v in initial]
    np.testing.assert_allclose(adam.learning_rate, reference.learning_rate, rtol=1e-7)
    step(gradients)
    reference.apply_gradients(zip(gradients, theirs))
    for mine, expected in zip(ours, theirs):
      np.testing.assert_allclose(mine.numpy(), expected.numpy(), atol=1e-6)
  assert int(adam.iterations.numpy()) == 6


def test_adam_checkpoints_its_moments(tmp_path):
  variable = tf.Variable([1., 2.])
  adam = Adam([variable], 0.1)
  adam.apply_gradients([tf.constant([0.5, -1.])])
  path = tf.train.Checkpoint(optimizer=adam, variable=variable).save(str(tmp_path / 'ckpt'))
  restored_variable = tf.Variable([0., 0.])
  restored = Adam([restored_variable], 0.1)
  tf.train.Checkpoint(optimizer=restored, variable=restored_variable).restore(
      path).assert_consumed()
  for adam_ in (adam, restored):
    adam_.apply_gradients([tf.constant([0.25, 0.25])])
  np.testing.assert_array_equal(variable.numpy(), restored_variable.numpy())
  assert int(restored.iterations.numpy()) == 2


def test_adam_wants_one_gradient_per_variable():
  adam = Adam([tf.Variable(1.), tf.Variable(2.)], 0.1)
  with pytest.raises(ValueError, match='Expected 2 gradients, got 1'):
    adam.apply_gradients([tf.constant(1.)])


@pytest.mark.parametrize('case', ['finite', 'nan_gradient', 'squared_gradient_overflows',
                                  'weight_overflows'])
def test_update_is_finite_says_what_the_update_would_write(case):
  big = np.finfo(np.float32).max
  values = {'finite': (1., 0.5), 'nan_gradient': (1., np.nan),
            'squared_gradient_overflows': (1., 1e20), 'weight_overflows': (-big, 1.)}
  weight, gradient = values[case]
  variables = [tf.Variable(np.full((2, 3), 0.5, np.float32)),
               tf.Variable(np.array([weight, 2.], np.float32))]
  adam = Adam(variables, 1e38)  # a step of about the learning rate: -max - 1e38 overflows
  gradients = [tf.ones((2, 3)), tf.constant([gradient, 0.25], tf.float32)]
  predicted = bool(tf.function(adam.update_is_finite)(gradients))
  adam.apply_gradients(gradients)
  written = variables + adam.first_moments + adam.second_moments
  assert predicted == all(np.all(np.isfinite(v.numpy())) for v in written)
  assert predicted == (case == 'finite')
