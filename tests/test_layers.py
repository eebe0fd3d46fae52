"""Each invertible layer: round trip, inverse log-det, dense-Jacobian log-det."""

import math

import numpy as np
import pytest
import tensorflow as tf

from conftest import dense_log_det, per_example_log_det, perturb
from real_nvp.batch_norm import FlowBatchNorm, batch_moments
from real_nvp.coupling import Coupling
from real_nvp.preprocess import LogitPreprocess
from real_nvp.squeeze import Squeeze
from real_nvp.st_network import STNetwork, folded_weights

SHAPES = [(4, 4, 2), (8, 8, 1), (8, 8, 3)]


def _coupling(mask_type, parity, shape):
  layer = Coupling(mask_type, parity, num_blocks=1, feature_maps=4)
  x = tf.random.stateless_normal((3,) + shape, seed=[1, 2], dtype=tf.float64)
  layer(x, training=True)  # builds, and moves the s/t batch-norm averages
  perturb(layer)
  return layer, x


def _cases():
  for shape in SHAPES:
    yield 'checkerboard', 0, shape
    yield 'checkerboard', 1, shape
    if shape[-1] % 2 == 0:
      yield 'channel', 0, shape
      yield 'channel', 1, shape
  yield 'channel', 1, (4, 4, 4)


@pytest.mark.parametrize('mask_type,parity,shape', list(_cases()))
def test_coupling_inference(float64, mask_type, parity, shape):
  layer, x = _coupling(mask_type, parity, shape)
  y, log_det = layer(x, training=False)
  x_back, inverse_log_det = layer.decode(y)
  np.testing.assert_allclose(x_back, x, atol=1e-10)
  np.testing.assert_allclose(inverse_log_det, -log_det, atol=1e-10)
  assert np.abs(log_det).max() > 1e-3  # not the identity
  expected = per_example_log_det(lambda v: layer(v, training=False)[0], x)
  np.testing.assert_allclose(log_det, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('mask_type', ['checkerboard', 'channel'])
def test_coupling_with_context(float64, mask_type):
  """The s/t network also sees a context tensor: still exact and invertible,
  and the output depends on the context."""
  layer = Coupling(mask_type, 0, num_blocks=1, feature_maps=4)
  x = tf.random.stateless_normal((2, 4, 4, 2), seed=[5, 2], dtype=tf.float64)
  context = tf.random.stateless_normal((2, 4, 4, 3), seed=[5, 3], dtype=tf.float64)
  layer(x, training=True, context=context)
  perturb(layer)
  y, log_det = layer(x, context=context)
  x_back, inverse_log_det = layer.decode(y, context=context)
  np.testing.assert_allclose(x_back, x, atol=1e-10)
  np.testing.assert_allclose(inverse_log_det, -log_det, atol=1e-10)
  expected = per_example_log_det(lambda v: layer(v, context=context[:1])[0], x[:1])
  np.testing.assert_allclose(log_det[:1], expected, rtol=1e-9)
  assert np.abs(layer(x, context=2. * context)[0] - y).max() > 1e-3


def test_new_transforms_and_partitions_are_refused_by_name():
  with pytest.raises(ValueError, match='transform'):
    Coupling('checkerboard', 0, num_blocks=1, feature_maps=4, transform='spline')


@pytest.mark.parametrize('mask_type', ['checkerboard', 'channel'])
def test_coupling_training_mode_log_det(float64, mask_type):
  """Batch statistics couple the examples, but only through kept dimensions:
  the whole batch's Jacobian is triangular with log-det = sum of log_dets."""
  layer, x = _coupling(mask_type, 0, (4, 4, 2))
  _, log_det = layer(x, training=True)
  full = dense_log_det(lambda v: layer(v, training=True)[0], x)
  np.testing.assert_allclose(full, np.sum(log_det), rtol=1e-9)


def test_coupling_keeps_masked_dimensions(float64):
  layer, x = _coupling('checkerboard', 0, (4, 4, 2))
  y, _ = layer(x, training=False)
  kept = layer.partition.mask.numpy().astype(bool)[..., 0]
  np.testing.assert_array_equal(y.numpy()[:, kept], x.numpy()[:, kept])
  assert np.abs(y.numpy()[:, ~kept] - x.numpy()[:, ~kept]).min() > 0


def test_coupling_starts_as_identity():
  layer = Coupling('checkerboard', 0, num_blocks=2, feature_maps=8)
  x = tf.random.normal((2, 4, 4, 3))
  y, log_det = layer(x, training=True)
  np.testing.assert_array_equal(y, x)
  np.testing.assert_array_equal(log_det, np.zeros(2))


def test_coupling_rejects_odd_channels_for_channel_mask():
  layer = Coupling('channel', 0, num_blocks=1, feature_maps=4)
  with pytest.raises(ValueError, match='even number of channels'):
    layer(tf.zeros((1, 4, 4, 3)))
  with pytest.raises(ValueError, match='mask_type'):
    Coupling('diagonal', 0, num_blocks=1, feature_maps=4)


def _batch_norm(lag=False):
  layer = FlowBatchNorm(momentum=0.9, lag=lag)
  x = 3. + 2. * tf.random.stateless_normal((5, 4, 4, 2), seed=[3, 4],
                                           dtype=tf.float64)
  layer(x, training=True)
  return layer, x


def test_batch_norm_inference_round_trip_and_log_det(float64):
  layer, x = _batch_norm()
  y, log_det = layer(x, training=False)
  x_back, inverse_log_det = layer.decode(y)
  np.testing.assert_allclose(x_back, x, atol=1e-10)
  np.testing.assert_allclose(inverse_log_det, -log_det, atol=1e-10)
  np.testing.assert_allclose(
      log_det, per_example_log_det(lambda v: layer(v)[0], x), rtol=1e-9)


@pytest.mark.parametrize('lag', [False, True])
def test_batch_norm_training_log_det_with_fixed_statistics(float64, lag):
  layer, x = _batch_norm(lag)
  moving_before = layer.moving_mean.numpy().copy()
  batch_mean, batch_var = batch_moments(x)
  y, log_det = layer(x, training=True)
  # The statistics used: the batch's, or Appendix E's running average.
  rho = layer.momentum
  expected_mean = (rho * moving_before + (1 - rho) * batch_mean.numpy()
                   if lag else batch_mean.numpy())
  np.testing.assert_allclose(layer.moving_mean.numpy(),
                             rho * moving_before + (1 - rho) * batch_mean.numpy())
  mean, var = (layer.moving_mean.numpy(), layer.moving_variance.numpy()) if lag \
      else (batch_mean, batch_var)
  np.testing.assert_allclose(mean, expected_mean)
  y_fixed, log_det_fixed = layer.normalize(x, mean, var)
  np.testing.assert_allclose(y, y_fixed, atol=1e-12)
  np.testing.assert_allclose(log_det, log_det_fixed)
  expected = per_example_log_det(lambda v: layer.normalize(v, mean, var)[0], x)
  np.testing.assert_allclose(log_det, expected, rtol=1e-9)
  if not lag:  # Normalized output: zero mean, unit variance per channel.
    np.testing.assert_allclose(tf.reduce_mean(y, [0, 1, 2]), 0., atol=1e-10)
    np.testing.assert_allclose(tf.math.reduce_variance(y, [0, 1, 2]), 1., atol=1e-3)


def test_batch_norm_tiny_batches_stay_finite():
  layer = FlowBatchNorm()
  for shape in [(1, 1, 1, 2), (1, 4, 4, 1)]:
    y, log_det = layer(tf.ones(shape), training=True)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(log_det))


def test_squeeze_round_trip_and_layout(float64):
  layer = Squeeze()
  x = tf.reshape(tf.range(2 * 4 * 4 * 3, dtype=tf.float64), (2, 4, 4, 3))
  y, log_det = layer(x)
  assert y.shape == (2, 2, 2, 12)
  # y[b, i, j, (2 di + dj) C + c] = x[b, 2i + di, 2j + dj, c]
  np.testing.assert_array_equal(y[0, 1, 0, (2 * 1 + 0) * 3 + 2], x[0, 3, 0, 2])
  np.testing.assert_array_equal(log_det, np.zeros(2))
  np.testing.assert_array_equal(layer.decode(y)[0], x)
  assert dense_log_det(lambda v: layer(v)[0], x[:1]) == pytest.approx(0., abs=1e-12)
  with pytest.raises(ValueError, match='even height and width'):
    Squeeze()(tf.zeros((1, 3, 4, 1)))


@pytest.mark.parametrize('levels', [256, 17, 2])
def test_logit_preprocess(float64, levels):
  layer = LogitPreprocess(levels=levels, alpha=0.05)
  u = tf.random.stateless_uniform((3, 4, 4, 2), seed=[5, 6], dtype=tf.float64,
                                  maxval=levels)
  w, log_det = layer(u)
  p = 0.05 + 0.95 * u.numpy() / levels
  np.testing.assert_allclose(w, np.log(p / (1 - p)), rtol=1e-10)
  closed_form = np.sum(math.log(0.95) - math.log(levels) - np.log(p) - np.log1p(-p),
                       axis=(1, 2, 3))
  np.testing.assert_allclose(log_det, closed_form, rtol=1e-10)
  np.testing.assert_allclose(log_det, per_example_log_det(lambda v: layer(v)[0], u),
                             rtol=1e-9)
  u_back, inverse_log_det = layer.decode(w)
  np.testing.assert_allclose(u_back, u, atol=1e-9)
  np.testing.assert_allclose(inverse_log_det, -log_det, rtol=1e-10)


def test_logit_preprocess_is_finite_at_the_borders():
  layer = LogitPreprocess(levels=256)
  u = tf.constant([0., np.nextafter(np.float32(256), 0)], tf.float32)
  w, log_det = layer(tf.reshape(u, (2, 1, 1, 1)))
  assert np.all(np.isfinite(w)) and np.all(np.isfinite(log_det))


def test_residual_batch_norm_fused_matches_moments():
  from real_nvp.st_network import ResidualBatchNorm
  x = 2. + 3. * tf.random.stateless_normal((4, 5, 5, 3), seed=[8, 9])
  layer = ResidualBatchNorm(momentum=0.5)
  y = layer(x, training=True)
  mean, variance = batch_moments(x)
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(variance + 1e-4), atol=1e-4)
  np.testing.assert_allclose(layer.moving_mean, 0.5 * mean, rtol=1e-5)
  np.testing.assert_allclose(layer.moving_variance, 0.5 + 0.5 * variance, rtol=1e-5)
  expected = (x - layer.moving_mean) / np.sqrt(layer.moving_variance + 1e-4)
  np.testing.assert_allclose(layer(x, training=False), expected, atol=1e-4)


def test_a_network_traced_with_folded_weights_computes_the_same_map():
  """st_network.folded_weights (the lossless coder's graphs): the inference
  outputs of the network, from variables of the store (folded kernels,
  biases and batch-norm scales and shifts); the graph keeps the weights
  of its tracing, and a new store sees new ones."""
  network = STNetwork(out_channels=2, num_blocks=2, feature_maps=8, zero_init_output=False)
  x = tf.random.stateless_normal((5, 4, 4, 3), seed=[3, 4])
  network(x, training=True)  # builds, and moves the batch-norm averages
  perturb(network)
  spec = tf.TensorSpec((None, 4, 4, 3))

  def trace(store):
    with folded_weights(store):
      return tf.function(lambda v: network(v, training=False),
                         autograph=False).get_concrete_function(spec)

  store = {}
  folded = trace(store)
  assert len(store) == 2 * (2 * 2 + 2) - 1  # 6 convolutions, 5 batch norms
  read = {id(variable) for variables in store.values() for variable in variables}
  assert not read & {id(variable) for variable in network.variables}
  expected = network(x, training=False).numpy()
  np.testing.assert_allclose(folded(x).numpy(), expected, rtol=1e-5, atol=1e-5)
  assert not np.all(expected == 0.)
  perturb(network, seed=1)
  np.testing.assert_allclose(folded(x).numpy(), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(trace({})(x).numpy(), network(x, training=False).numpy(),
                             rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(network(x, training=False).numpy() - expected)) > 1e-3
