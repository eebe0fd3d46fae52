"""The whole flow: exactness, normalization, latents, TFP distribution, inputs."""

import math

import numpy as np
import pytest
import tensorflow as tf

from conftest import per_example_log_det, perturb
from real_nvp import FlowConfig, RealNVP, preset
from real_nvp.squeeze import Squeeze

TINY = dict(num_blocks=1, feature_maps=4)


def _model(shape=(4, 4, 2), num_scales=2, levels=256, seed=0, **kwargs):
  model = RealNVP(FlowConfig(shape, levels=levels, num_scales=num_scales,
                             **{**TINY, **kwargs}))
  # Train-mode passes move the batch-norm averages away from (0, 1).
  u = tf.random.stateless_uniform((8,) + shape, seed=[seed, 1],
                                  maxval=levels - 1, dtype=model.compute_dtype)
  for _ in range(2):
    model.log_prob(u, training=True)
  perturb(model, scale=0.1, seed=seed)
  return model


def _pixels(model, batch=3, seed=7):
  return tf.random.stateless_uniform(
      (batch,) + model.config.image_shape, seed=[seed, 0],
      maxval=model.config.levels - 1, dtype=model.compute_dtype)


@pytest.mark.parametrize('shape,num_scales', [((4, 4, 2), 2), ((8, 8, 1), 2),
                                              ((8, 8, 3), 2), ((8, 8, 1), 3)])
def test_flow_round_trip_and_log_det(float64, shape, num_scales):
  model = _model(shape, num_scales)
  u = _pixels(model, batch=2)
  bijector = model.bijector()
  z = bijector.inverse(u)
  assert z.shape == u.shape
  np.testing.assert_allclose(bijector.forward(z), u, atol=1e-8)
  ildj = bijector.inverse_log_det_jacobian(u, event_ndims=3)
  fldj = model.bijector().forward_log_det_jacobian(z, event_ndims=3)
  np.testing.assert_allclose(fldj, -ildj, rtol=1e-9)
  np.testing.assert_allclose(
      ildj, per_example_log_det(lambda v: model.bijector().inverse(v), u),
      rtol=1e-8)


def test_flow_round_trip_float32():
  model = _model((8, 8, 3), 2)
  u = _pixels(model, batch=4)
  z = model.bijector().inverse(u)
  assert np.abs(model.bijector().forward(z) - u).max() <= 1e-4
  images = tf.cast(tf.floor(u), tf.uint8)
  np.testing.assert_array_equal(model.decode(model.encode(images)), images)


def test_one_scale_transforms_every_dimension(float64):
  """Jacobian structure of scale 1 (before factor-out): every output depends on
  other inputs, i.e. every dimension was changed by some coupling."""
  model = _model((4, 4, 2), 2)
  steps = model.scales[0]

  def first_scale(x):
    for layer in steps:
      x = layer(x)[0]
    return tf.nn.depth_to_space(x, 2)  # back to pixel positions

  x = _pixels(model, batch=1)
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = first_scale(x)
  jacobian = tf.reshape(tape.jacobian(y, x), [32, 32]).numpy()
  off_diagonal = np.abs(jacobian - np.diag(np.diag(jacobian)))
  assert np.all(off_diagonal.max(axis=1) > 1e-6)
  assert any(isinstance(layer, Squeeze) for layer in steps)


def test_density_is_normalized(float64):
  """Importance sampling over the whole support of u, which the logit maps
  from R: (-alpha L / (1 - alpha), L). Uniform proposal, 2x2x1 images."""
  levels, alpha = 4, 0.05
  model = _model((2, 2, 1), num_scales=1, levels=levels)
  low, high = -alpha * levels / (1 - alpha), float(levels)
  u = tf.random.stateless_uniform((200_000, 2, 2, 1), seed=[9, 9], minval=low,
                                  maxval=high, dtype=tf.float64)
  log_p = model.distribution().log_prob(u)
  integral = np.mean(np.exp(log_p)) * (high - low) ** 4
  assert integral == pytest.approx(1., abs=0.05)


def test_identity_initialization_matches_closed_form():
  levels = 17
  model = RealNVP(FlowConfig((8, 8, 1), levels=levels, num_scales=2,
                             flow_batch_norm=False, **TINY))
  images = np.random.default_rng(0).integers(0, levels, (4, 8, 8, 1)).astype(np.uint8)
  u = model.dequantize(images, seed=[3, 3])[0].numpy().astype(np.float64)
  p = 0.05 + 0.95 * u / levels
  w = np.log(p / (1 - p))
  log_prob = np.sum(-0.5 * w**2 - 0.5 * math.log(2 * math.pi) + math.log(0.95) - math.log(levels)
                    - np.log(p) - np.log1p(-p), axis=(1, 2, 3))
  expected = -log_prob / (64 * math.log(2))
  np.testing.assert_allclose(model.bits_per_dim(images, seed=[3, 3]), expected,
                             rtol=1e-5)


def test_latents_split_merge_and_shapes():
  model = _model((8, 8, 1), num_scales=3)
  images = tf.cast(_pixels(model, batch=2), tf.uint8)
  latents = model.encode(images)
  assert [tuple(z.shape) for z in latents] == [(2, 4, 4, 2), (2, 2, 2, 4), (2, 2, 2, 4)]
  z = model.merge_latents(latents)
  for a, b in zip(model.split_latents(z), latents):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(model.decode(latents), images)


def test_sample_encode_decode_and_temperature():
  model = _model((8, 8, 1), num_scales=2, levels=17)
  samples = model.sample(5, seed=11)
  assert samples.shape == (5, 8, 8, 1) and samples.dtype == tf.uint8
  assert samples.numpy().max() < 17
  np.testing.assert_array_equal(model.sample(5, seed=11), samples)
  np.testing.assert_array_equal(model.decode(model.encode(samples)), samples)
  zeros = [tf.zeros_like(z) for z in model.encode(samples[:2])]
  cold = model.sample(2, temperature=0., seed=1)
  np.testing.assert_array_equal(cold, model.decode(zeros))
  np.testing.assert_array_equal(cold, model.sample(2, temperature=0., seed=2))


def test_extreme_images_and_batch_of_one_are_finite():
  model = _model((8, 8, 3), num_scales=2)
  for value in (0, 255):
    images = np.full((2, 8, 8, 3), value, np.uint8)
    assert np.all(np.isfinite(model.bits_per_dim(images, seed=[0, 1])))
    assert np.all(np.isfinite(model.bits_per_dim(images, training=True)))
  one = tf.constant(np.full((1, 8, 8, 3), 255, np.uint8))
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(model.bits_per_dim(one, training=True))
  grads = tape.gradient(loss, model.trainable_variables)
  assert np.isfinite(loss.numpy())
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_log_prob_twice_on_one_tensor_gives_right_gradients():
  """TFP caches bijector results by input tensor; a cache hit in eager mode
  skips the tape. model.log_prob must give the same gradients every time."""
  model = _model((4, 4, 2), 2)
  u = _pixels(model, batch=4)
  model.log_prob(u)  # outside any tape: would poison a shared cache
  grads = []
  for _ in range(2):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(model.log_prob(u))
    grads.append(tape.gradient(loss, model.trainable_variables))
  assert all(g is not None for g in grads[0])
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  assert max(float(tf.reduce_max(tf.abs(g))) for g in grads[0]) > 0


def test_new_bijectors_never_reuse_cached_results():
  """TFP caches by bijector equality; a chain built after a weight update
  must not return the outputs cached by an earlier chain."""
  model = _model((4, 4, 2), 2)
  u = _pixels(model, batch=2)
  before = model.bijector().inverse(u)
  assert model.bijector() != model.bijector()
  perturb(model, scale=0.1, seed=5)
  after = model.bijector().inverse(u)
  assert np.abs(after - before).max() > 1e-3


def test_tfp_distribution_matches_and_trains_in_tf_function():
  model = _model((4, 4, 2), 2)
  u = _pixels(model, batch=4)
  variables = model.trainable_variables

  @tf.function
  def grads_via_distribution(u):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(model.distribution(training=False).log_prob(u))
    return loss, tape.gradient(loss, variables)

  with tf.GradientTape() as tape:
    loss = -tf.reduce_mean(model.log_prob(u))
  expected = tape.gradient(loss, variables)
  loss_tf, got = grads_via_distribution(u)
  np.testing.assert_allclose(loss_tf, loss, rtol=1e-6)
  for a, b in zip(got, expected):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_training_mode_updates_each_batch_norm_once():
  model = _model((4, 4, 2), 2, flow_batch_norm=True)
  layer = next(l for l in model.scales[0] if 'bn' in l.name)
  before = layer.moving_mean.numpy().copy()
  u = _pixels(model, batch=4)
  x = model.preprocess(u)[0]
  for step in model.scales[0]:
    if step is layer:
      break
    x = step(x, training=True)[0]
  batch_mean = tf.reduce_mean(x, [0, 1, 2]).numpy()
  model.log_prob(u, training=True)
  rho = layer.momentum
  np.testing.assert_allclose(layer.moving_mean.numpy(),
                             rho * before + (1 - rho) * batch_mean, rtol=1e-5,
                             atol=1e-6)


def test_trainable_weights_include_st_networks_and_gains():
  model = _model((4, 4, 2), 2)
  names = [v.path for v in model.trainable_variables]
  assert any('st_net' in n and 'direction' in n for n in names)
  # 10 couplings; each s/t net: in_conv, out_conv and 2 convs per block.
  assert len(model.weight_norm_gains) == 10 * (2 + 2 * TINY['num_blocks'])
  assert all('gain' in g.path for g in model.weight_norm_gains)


def test_bad_inputs_give_clear_errors():
  model = _model((4, 4, 2), 2, levels=17)
  with pytest.raises(ValueError, match=r'shape \[batch, 4, 4, 2\]'):
    model.bits_per_dim(np.zeros((2, 8, 8, 1), np.uint8))
  with pytest.raises(TypeError, match='uint8'):
    model.bits_per_dim(np.zeros((2, 4, 4, 2), np.float32))
  with pytest.raises(tf.errors.InvalidArgumentError, match='levels=17'):
    model.bits_per_dim(np.full((2, 4, 4, 2), 200, np.uint8))
  with pytest.raises(tf.errors.InvalidArgumentError, match='levels=17'):
    model.log_prob(np.full((1, 4, 4, 2), 17., np.float32))
  with pytest.raises(ValueError, match='divisible by 4'):
    FlowConfig((6, 6, 1), num_scales=3)
  with pytest.raises(ValueError, match='levels'):
    FlowConfig((8, 8, 1), levels=1000)
  with pytest.raises(ValueError, match='Unknown preset'):
    preset('cifar100')


@pytest.mark.parametrize('name', ['cifar10', 'imagenet32', 'mnist', 'digits'])
def test_presets_build(name):
  config = preset(name, num_blocks=1, feature_maps=2)
  model = RealNVP(config)
  images = tf.zeros((1,) + config.image_shape, tf.uint8)
  assert np.isfinite(model.bits_per_dim(images).numpy()).all()


@pytest.mark.parametrize('st_dtype', ['mixed_bfloat16', 'mixed_float16'])
def test_mixed_precision_st_networks_keep_bits_per_dim(st_dtype):
  model = _model((8, 8, 1), 2, levels=17)
  low = RealNVP(model.config, st_dtype=st_dtype)
  assert [v.path for v in low.variables] == [v.path for v in model.variables]
  for target, source in zip(low.variables, model.variables):
    target.assign(source)
  images = np.random.default_rng(1).integers(0, 17, (16, 8, 8, 1)).astype(np.uint8)
  exact = model.bits_per_dim(images, seed=[1, 1])
  mixed = low.bits_per_dim(images, seed=[1, 1])
  assert mixed.dtype == tf.float32
  np.testing.assert_allclose(mixed, exact, atol=0.02)
  assert all(v.dtype == 'float32' for v in low.variables)
