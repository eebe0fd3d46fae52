"""Dequantizers and the model's objective: exact log q, bins, bound vs IW."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import dense_log_det, perturb
from real_nvp import RealNVP, data, preset
from real_nvp.dequantization import VariationalDequantizer, base_noise

LEVELS = 5


def _dequantizer(shape=(4, 4, 2), seed=0):
  layer = VariationalDequantizer(shape, LEVELS, num_couplings=1, feature_maps=4,
                                 num_blocks=1)
  images = _images(shape, seed)
  noise = tf.random.stateless_normal(images.shape, seed=[seed, 9],
                                     dtype=layer.compute_dtype)
  layer.transform(images, noise, training=True)  # builds, moves BN averages
  perturb(layer, scale=0.2, seed=seed)
  return layer, images, noise


def _images(shape, seed=0, batch=3):
  rng = np.random.default_rng(seed)
  return tf.constant(rng.integers(0, LEVELS, (batch,) + shape), tf.uint8)


def _log_normal(noise):
  return np.sum(-0.5 * noise.numpy() ** 2 - 0.5 * math.log(2 * math.pi), axis=(1, 2, 3))


@pytest.mark.parametrize('shape', [(4, 4, 2), (3, 5, 1), (2, 2, 3)])
def test_variational_log_q_is_exact(float64, shape):
  """log q(u|x) = log N(ε) - log|det ∂u/∂ε|, the Jacobian by autodiff."""
  layer, images, noise = _dequantizer(shape)
  u, log_q = layer.transform(images, noise)
  assert np.all(u.numpy() >= images.numpy()) and np.all(u.numpy() < images.numpy() + 1.)
  log_det = np.array([
      dense_log_det(lambda e, i=i: layer.transform(images[i:i + 1], e)[0],
                    noise[i:i + 1]) for i in range(images.shape[0])])
  np.testing.assert_allclose(log_q, _log_normal(noise) - log_det, rtol=1e-9, atol=1e-9)
  assert np.abs(log_q.numpy() - _log_normal(noise)).max() > 1e-2  # g is not trivial


def test_variational_log_q_is_exact_in_training_mode(float64):
  """Batch statistics couple the examples only through the conditioning
  parts: the whole batch's Jacobian has log-det = sum of per-example terms."""
  layer, images, noise = _dequantizer((4, 4, 2))
  _, log_q = layer.transform(images, noise, training=True)
  full = dense_log_det(lambda e: layer.transform(images, e, training=True)[0], noise)
  np.testing.assert_allclose(np.sum(log_q), np.sum(_log_normal(noise)) - full, rtol=1e-9)


def test_conditional_flow_round_trip(float64):
  layer, images, noise = _dequantizer((4, 4, 2))
  u, _ = layer.transform(images, noise)
  np.testing.assert_allclose(layer.noise_of(images, u), noise, atol=1e-7)


def test_extreme_noise_stays_in_the_bin_and_finite():
  layer, _, _ = _dequantizer((4, 4, 2))
  images = tf.constant(np.stack([np.zeros((4, 4, 2)), np.full((4, 4, 2), LEVELS - 1)] * 3),
                       tf.uint8)
  for value in (0., 8., -8., 50., -50., 200., -200.):
    noise = tf.fill(images.shape, value)
    u, log_q = layer.transform(images, noise)
    x = images.numpy().astype(np.float32)
    assert np.all(u.numpy() >= x) and np.all(u.numpy() < x + 1.), value
    assert np.all(np.isfinite(log_q.numpy())), value


def test_uniform_noise_rounding_up_stays_in_the_bin():
  model = RealNVP(preset('digits', num_scales=1, num_blocks=1, feature_maps=4))
  images = tf.fill((1, 8, 8, 1), tf.constant(16, tf.uint8))
  u, log_q = model.dequantizer.transform(images, tf.fill((1, 8, 8, 1), 0.99999994))
  assert np.all(u.numpy() < 17.) and np.all(u.numpy() > 16.99)
  assert np.all(log_q.numpy() == 0.)


def _digits_model(dequantization='uniform'):
  keras.utils.set_random_seed(5)
  model = RealNVP(preset('digits', num_blocks=1, feature_maps=8,
                         dequantization=dequantization, dequant_feature_maps=4))
  u = tf.random.stateless_uniform((16, 8, 8, 1), seed=[1, 1], maxval=16.)
  model.log_prob(u, training=True)
  perturb(model, scale=0.05, seed=1)
  return model


def test_uniform_dequantization_reproduces_the_numbers_before_the_dequantizer():
  """Recorded with the code before dequantizers existed (commit 4cb5c9d)."""
  model = _digits_model()
  images = data.load_dataset('digits').eval.images[:6]
  np.testing.assert_allclose(model.bits_per_dim(images, seed=[3, 3]), [
      5.349398136138916, 4.9527153968811035, 5.378358840942383,
      6.389341354370117, 5.810370445251465, 5.607316017150879], rtol=1e-6)
  np.testing.assert_allclose(model.bits_per_dim(images, seed=[3, 3], training=True), [
      3.8035647869110107, 3.8533146381378174, 3.9129905700683594,
      3.957213878631592, 3.7306551933288574, 3.6978209018707275], rtol=1e-6)


@pytest.mark.parametrize('dequantization', ['uniform', 'variational'])
@pytest.mark.parametrize('training', [False, True])
def test_importance_weighted_estimate_is_below_the_bound(dequantization, training):
  model = _digits_model(dequantization)
  images = data.load_dataset('digits').eval.images[:5]
  one = model.bits_per_dim_estimates(images, seed=2, num_samples=1, training=training)
  np.testing.assert_array_equal(one['bits_per_dim_iw'], one['bits_per_dim'])
  many = model.bits_per_dim_estimates(images, seed=2, num_samples=4, training=training)
  assert np.all(many['bits_per_dim_iw'].numpy() < many['bits_per_dim'].numpy())


def test_draws_are_independent_of_how_they_are_scored():
  """Inference scores K draws one at a time: the same numbers as K calls."""
  model = _digits_model('variational')
  images = data.load_dataset('digits').eval.images[:4]
  seeds = tf.constant([[7, i] for i in range(4)], tf.int64)
  log_w = model.log_weights(images, seeds, num_samples=3)
  noise = base_noise('normal', images, seeds, 3, tf.float32)
  for k in range(3):
    u, log_q = model.dequantizer.transform(images, noise[k])
    np.testing.assert_allclose(log_w[k], model.log_prob(u) - log_q, rtol=1e-5)
  # One image's per-image seed gives the same noise alone or in a batch.
  np.testing.assert_array_equal(base_noise('normal', images[1:2], seeds[1:2], 3, tf.float32),
                                noise[:, 1:2])


@pytest.mark.parametrize('dequantization', ['uniform', 'variational'])
@pytest.mark.parametrize('num_samples', [1, 4])
def test_noise_drawn_per_draw_gives_the_numbers_of_the_joint_draw(
    dequantization, num_samples):
  """Inference draws each of the K noise tensors alone (memory flat in K);
  the numbers equal those of one [K, B, H, W, C] draw of
  tf.random.stateless_*, as before, for a batch seed and per-image seeds,
  also for images whose size is not a multiple of 4 (Philox's block)."""
  model = _digits_model(dequantization)
  images = data.load_dataset('digits').eval.images[:3]
  draw = {'uniform': tf.random.stateless_uniform,
          'normal': tf.random.stateless_normal}[model.dequantizer.noise_distribution]
  batch_seed = tf.constant([5, 11], tf.int64)
  per_image_seeds = tf.constant([[7, i] for i in range(3)], tf.int64)
  joint = {'batch': draw([num_samples, 3, 8, 8, 1], seed=batch_seed),
           'per image': tf.stack([draw([num_samples, 8, 8, 1], seed=s)
                                  for s in per_image_seeds], axis=1)}
  for name, seed in (('batch', batch_seed), ('per image', per_image_seeds)):
    log_w = model.log_weights(images, seed, num_samples)
    for k in range(num_samples):
      u, log_q = model.dequantizer.transform(images, joint[name][k])
      np.testing.assert_array_equal(log_w[k], model.log_prob(u) - log_q)
  odd = tf.zeros([2, 3, 5, 1], tf.uint8)
  reference = draw([3, 2, 3, 5, 1], seed=batch_seed)
  for k in range(3):
    np.testing.assert_array_equal(
        base_noise(model.dequantizer.noise_distribution, odd, batch_seed, 1,
                   tf.float32, first_draw=k)[0], reference[k])


def test_variational_model_regularizes_and_counts_its_dequantizer():
  uniform, variational = _digits_model(), _digits_model('variational')
  extra = len(variational.weight_norm_gains) - len(uniform.weight_norm_gains)
  # Context network (2 + 2 blocks) and 4 couplings' s/t networks (4 convs each).
  assert extra == 4 + 4 * 4
  assert all('gain' in g.path for g in variational.weight_norm_gains)
  assert variational.flops_per_example() > uniform.flops_per_example() > 0
  paths = [v.path for v in variational.variables]
  assert len(set(paths)) == len(paths)
