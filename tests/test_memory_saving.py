"""Memory-saving gradients (memory_saving.py): the same gradients, batch-norm
averages and training as autodiff, and exact resume, under each mode."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import perturb, tiny_trainer
from real_nvp import batch_statistics, data, preset
from real_nvp.batch_norm import FlowBatchNorm
from real_nvp.coupling import Coupling
from real_nvp.model import RealNVP

# Invert reconstructs each layer's input from its output in float32, through
# up to 13 layers per scale, so its gradients carry rounding differences: a
# few 1e-5 of a variable's gradient where the gradient is substantial
# (measured: at most 7e-5 over a 3-scale model; ~5e-7 of the whole
# gradient's norm). Variables that a batch norm follows (conv biases, gains)
# have gradient 0 in exact arithmetic; theirs is rounding noise (~1e-10) in
# every mode, so the bound is absolute there. With bfloat16 s/t networks a
# reconstructed input can round to another bfloat16 than the original did (8
# bits of mantissa), and a bfloat16 gradient is itself only good to ~1e-2:
# there the whole gradient is compared, by its norm.
INVERT_RTOL = 1e-3
INVERT_ATOL_OF_LARGEST = 1e-5
INVERT_NORM_RTOL = {None: 1e-5, 'mixed_bfloat16': 5e-2}


def _loss_gradients_averages(model, mode, images, averages):
  for variable, value in zip(model.non_trainable_variables, averages):
    variable.assign(value)
  model.memory_saving = mode

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(model.bits_per_dim(images, seed=(1, 2), training=True,
                                               num_samples=2))
    return loss, tape.gradient(loss, model.trainable_variables)

  loss, grads = step()
  return (float(loss), [g.numpy() for g in grads],
          [v.numpy() for v in model.non_trainable_variables])


@pytest.mark.parametrize('flow', [
    dict(num_scales=3),
    dict(num_scales=2, dequantization='variational', dequant_feature_maps=4,
         bn_lag=True),
    dict(num_scales=2, st_dtype='mixed_bfloat16'),
], ids=['3-scales', 'variational-lagged-bn', 'mixed-bfloat16'])
def test_gradients_and_averages_equal_those_of_off(flow):
  st_dtype = flow.pop('st_dtype', None)
  model = RealNVP(preset('digits', num_blocks=1, feature_maps=4, **flow),
                  st_dtype=st_dtype)
  perturb(model, 0.1)
  images = tf.constant(data.load_dataset('digits').train.images[:16])
  averages = [v.numpy() for v in model.non_trainable_variables]
  off, recompute, invert = (_loss_gradients_averages(model, mode, images, averages)
                            for mode in ('off', 'recompute', 'invert'))
  names = [v.path for v in model.trainable_variables]
  # Recompute runs the same ops on the same inputs: the same numbers.
  assert recompute[0] == off[0]
  for name, a, b in zip(names, off[1], recompute[1]):
    np.testing.assert_array_equal(b, a, err_msg=name)
  # Every mode moves every average once, by the same numbers.
  for after in (recompute[2], invert[2]):
    for a, b in zip(off[2], after):
      np.testing.assert_array_equal(b, a)
  assert not all(np.array_equal(a, b) for a, b in zip(averages, off[2]))
  np.testing.assert_allclose(invert[0], off[0], rtol=1e-6)
  norm = np.sqrt(sum(np.sum(np.square(a - b)) for a, b in zip(off[1], invert[1])) /
                 sum(np.sum(np.square(a)) for a in off[1]))
  assert norm < INVERT_NORM_RTOL[st_dtype]
  largest = max(np.max(np.abs(g)) for g in off[1])
  worst = 0.
  for name, a, b in zip(names, off[1], invert[1]):
    scale = np.max(np.abs(a))
    if st_dtype is None:
      np.testing.assert_allclose(
          b, a, rtol=0, atol=INVERT_RTOL * scale + INVERT_ATOL_OF_LARGEST * largest,
          err_msg=name)
    if scale > 1e-3 * largest:
      worst = max(worst, np.max(np.abs(a - b)) / scale)
  print(f'invert: gradient difference {norm:.1e} of the norm, at most {worst:.1e} '
        'of a variable\'s largest')


@pytest.mark.parametrize('lag', [False, True])
def test_training_mode_inverse_replays_the_recorded_statistics(float64, lag):
  x = tf.constant(np.random.default_rng(0).normal(1., 2., (6, 4, 4, 2)))
  coupling = Coupling('checkerboard', 0, num_blocks=1, feature_maps=4)
  norm = FlowBatchNorm(momentum=0.5, lag=lag)
  coupling(x), norm(x)
  perturb(coupling)
  record = batch_statistics.StatisticsRecord()
  with batch_statistics.recording(record):
    h, _ = coupling(x, training=True)
    y, log_det = norm(h, training=True)
  averages = [v.numpy() for v in coupling.non_trainable_variables + norm.variables]
  with batch_statistics.replaying(record):
    h_back, inverse_log_det = norm.decode(y, training=True)
    x_back, _ = coupling.decode(h_back, training=True)
  np.testing.assert_allclose(x_back, x, atol=1e-12)
  np.testing.assert_allclose(inverse_log_det, -log_det, atol=1e-12)
  with batch_statistics.replaying(record):
    watched = []
    h_again, (y_again, log_det_again) = norm.rerun_from_output(y, watched.append)
  np.testing.assert_allclose(h_again, h, atol=1e-12)
  np.testing.assert_allclose(y_again, y, atol=1e-12)
  np.testing.assert_allclose(log_det_again, log_det, atol=1e-12)
  assert watched and watched[0] is h_again
  # Replaying moved no average.
  for before, variable in zip(averages, coupling.non_trainable_variables + norm.variables):
    np.testing.assert_array_equal(variable.numpy(), before)
  with pytest.raises(ValueError, match='batch statistics of the forward pass'):
    norm.decode(y, training=True)


def _weights(trainer):
  return [v.numpy() for v in trainer.model.variables]


@pytest.mark.slow
def test_each_mode_trains_like_off_and_resumes_exactly(tmp_path):
  off = tiny_trainer(tmp_path / 'off', 4)
  off_held_out = off.train()
  runs = {}
  for mode in ('recompute', 'invert'):
    full = tiny_trainer(tmp_path / mode, 4, memory_saving=mode)
    runs[mode] = (full.train(), _weights(full))
    # Half under another setting (recompute: off), then resumed under this one.
    tiny_trainer(tmp_path / f'{mode}-resumed', 2,
                 memory_saving='off' if mode == 'recompute' else mode).train()
    resumed = tiny_trainer(tmp_path / f'{mode}-resumed', 4, memory_saving=mode)
    assert resumed.train() == runs[mode][0]
    for a, b in zip(runs[mode][1], _weights(resumed)):
      np.testing.assert_array_equal(b, a)
  assert runs['recompute'][0] == off_held_out
  for a, b in zip(_weights(off), runs['recompute'][1]):
    np.testing.assert_array_equal(b, a)
  np.testing.assert_allclose(runs['invert'][0], off_held_out, rtol=1e-4)
  for a, b in zip(_weights(off), runs['invert'][1]):  # See the two-replica test.
    np.testing.assert_allclose(b, a, rtol=0, atol=3e-4)
