"""Generation and the latent space of a flow model: sampling from the prior,
images to per-scale latents and back (a part of `model.RealNVP`).

The host class provides `config` (a FlowConfig), `compute_dtype`,
`prior(temperature)` (the tempered prior, a TFP distribution), `bijector()` (forward: latent z -> dequantized pixels u) and
`latent_layout` (where each scale's latent sits in z, flow_tree.py).
"""

import tensorflow as tf

from real_nvp import model_inputs, preprocess
from real_nvp.dequantization import stateless_seed

__all__ = ['Generation']


class Generation:
  """Sampling and latents; see the module docstring."""

  def sample_pixels(self, num_samples, temperature=1., seed=None):
    """Dequantized pixels u [n, H, W, C]: z from the tempered prior
    (`prior(temperature)`, standard deviation `temperature`) through the flow.

    `seed`: None (TF's global RNG) or a stateless seed (int or shape [2]) of
    32-bit integers, as TFP's samplers take them (the numbers are those of
    tf.random.stateless_normal with that seed, times the temperature).
    """
    temperature = tf.convert_to_tensor(temperature, self.compute_dtype)
    with tf.control_dependencies([
        tf.debugging.assert_all_finite(temperature, 'temperature must be finite'),
        tf.debugging.assert_non_negative(temperature,
                                         message='temperature must be >= 0')]):
      prior = self.prior(tf.identity(temperature))
    if seed is None:
      z = prior.sample(num_samples)
    else:
      z = prior.sample(num_samples, seed=_int32_seed(seed))
    return self.bijector().forward(z)

  def sample(self, num_samples, temperature=1., seed=None):
    """uint8 images [n, H, W, C]; see `sample_pixels`."""
    return preprocess.quantize(
        self.sample_pixels(num_samples, temperature, seed), self.config.levels)

  def encode(self, images):
    """Per-scale latents of images (inference mode); see `split_latents`.

    uint8 images are placed at the centres of their bins (x + 0.5), so that
    `decode(encode(x)) == x`; float images are taken as dequantized pixels.
    """
    images = tf.convert_to_tensor(images)
    if images.dtype == tf.uint8:
      images = model_inputs.uint8_images(self.config, images)
      images = tf.cast(images, self.compute_dtype) + 0.5
    else:
      images = model_inputs.pixels(self.config, self.compute_dtype, images)
    return self.split_latents(model_inputs.unless_empty(
        images, lambda: self.bijector().inverse(images), lambda: images))

  def decode(self, latents):
    """uint8 images from per-scale latents (a list) or a latent [B, H, W, C]."""
    z = self.merge_latents(latents) if isinstance(latents, (list, tuple)) else latents
    z = tf.convert_to_tensor(z, self.compute_dtype)
    model_inputs.check_shape(z, self.config.image_shape, 'latents')
    with tf.control_dependencies([tf.debugging.assert_all_finite(
        z, 'latents must be finite (no NaN or inf)')]):
      z = tf.identity(z)
    return preprocess.quantize(
        model_inputs.unless_empty(z, lambda: self.bijector().forward(z), lambda: z),
        self.config.levels)

  def split_latents(self, z):
    """Latent z [B, H, W, C] -> [z_1, ..., z_S], one per scale, finest first.

    z_i (i < S) has shape [B, H/2^i, W/2^i, 2^i C]; z_S is the last scale's
    input, [B, H/2^(S-1), W/2^(S-1), 2^(S-1) C] (`latent_layout.shapes`).
    """
    return self.latent_layout.split(z)

  def merge_latents(self, latents):
    """Inverse of `split_latents`."""
    return self.latent_layout.merge(latents, self.config.image_shape)


def _int32_seed(seed):
  """A stateless seed as the int32 pair TFP's samplers take, or a clear error."""
  seed = stateless_seed(seed)
  with tf.control_dependencies([tf.debugging.assert_less_equal(
      tf.abs(seed), tf.constant(2 ** 31 - 1, tf.int64),
      message='sample seeds must be 32-bit integers')]):
    return tf.cast(seed, tf.int32)
