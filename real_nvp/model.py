"""The Real NVP model: preprocessing, the multi-scale flow and the prior.

This is the only module that knows the order of the flow (paper §3.6):

    uint8 x -> dequantize -> u in [0, L) -> logit -> w -> scale 1 -> ... -> z

Scale i < last, data -> latent, on h [H, W, C]:
    3 checkerboard couplings (alternating masks), each followed by flow BN
    squeeze -> [H/2, W/2, 4C]
    3 channel couplings (alternating masks), each followed by flow BN
    factor out: channels [:2C] are scale i's latent; [2C:] go to scale i+1
    unsqueeze the concatenation back to [H, W, C]
Last scale: 4 checkerboard couplings, each followed by flow BN.

The latent z has the image's shape, so the prior is a unit Gaussian over
[H, W, C]; `split_latents` / `merge_latents` give the per-scale latents.
"""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from real_nvp import preprocess
from real_nvp.batch_norm import FlowBatchNorm
from real_nvp.bijectors import FactorOut, FlowLayerBijector
from real_nvp.config import FlowConfig
from real_nvp.coupling import AffineCoupling
from real_nvp.squeeze import Squeeze

tfb = tfp.bijectors
tfd = tfp.distributions

__all__ = ['RealNVP']


class RealNVP(keras.Model):
  """Real NVP density model of images with `config.levels` pixel levels.

  Densities are of dequantized pixels u in [0, L)^D (the data's pixel space);
  `training=True` makes every batch norm use (and update) batch statistics.

  Args:
    config: a `FlowConfig`.
    st_dtype: dtype policy of the s/t networks, e.g. 'mixed_bfloat16' or
      'mixed_float16'; the flow, its log-dets and the prior stay float32.
  """

  def __init__(self, config, st_dtype=None, **kwargs):
    super().__init__(**kwargs)
    if not isinstance(config, FlowConfig):
      raise TypeError(f'`config` must be a FlowConfig. Received: {config!r}')
    self.config = config
    self._st_dtype = st_dtype
    self.preprocess = preprocess.LogitPreprocess(
        config.levels, config.alpha, name='preprocess')
    self.scales = [self._make_scale(i) for i in range(config.num_scales)]
    self._build_layers()

  # --- construction -------------------------------------------------------

  def _coupling_steps(self, mask_type, count, feature_maps, prefix):
    steps = []
    for k in range(count):
      steps.append(AffineCoupling(
          mask_type, parity=k % 2, num_blocks=self.config.num_blocks,
          feature_maps=feature_maps, bn_momentum=self.config.bn_momentum,
          st_dtype=self._st_dtype, name=f'{prefix}_{mask_type}{k}'))
      if self.config.flow_batch_norm:
        steps.append(FlowBatchNorm(
            momentum=self.config.bn_momentum, lag=self.config.bn_lag,
            name=f'{prefix}_{mask_type}{k}_bn'))
    return steps

  def _make_scale(self, index):
    """The layers of scale `index`, data -> latent, the factor-out aside."""
    prefix = f'scale{index}'
    feature_maps = self.config.feature_maps * 2 ** index
    if index == self.config.num_scales - 1:
      return self._coupling_steps('checkerboard', 4, feature_maps, prefix)
    return (self._coupling_steps('checkerboard', 3, feature_maps, prefix) +
            [Squeeze(name=f'{prefix}_squeeze')] +
            self._coupling_steps('channel', 3, 2 * feature_maps, prefix))

  def _build_layers(self):
    self.bijector().inverse(
        tf.zeros((1,) + self.config.image_shape, self.compute_dtype))
    self.built = True

  # --- the flow as TFP objects --------------------------------------------

  def bijector(self, training=False):
    """tfb.Chain: forward latent z -> dequantized pixels u; inverse u -> z.

    Built anew on each call (cheap: the weights live in the Keras layers), and
    its bijectors compare by identity, so no TFP cache entry is shared between
    calls: in eager mode a cached result would skip the gradient tape, and
    would be stale after a weight update. `training` sets the mode of every
    batch norm in the data -> latent direction.
    """
    inner = None
    for index in reversed(range(len(self.scales))):
      steps = self.scales[index]
      parts = [FlowLayerBijector(layer, training) for layer in steps]
      if inner is not None:
        squeeze = next(layer for layer in steps if isinstance(layer, Squeeze))
        parts += [FactorOut(inner, name=f'scale{index}_factor_out'),
                  tfb.Invert(FlowLayerBijector(squeeze), name=f'scale{index}_unsqueeze')]
      inner = tfb.Chain(parts, name=f'scale{index}')
    return tfb.Chain([FlowLayerBijector(self.preprocess, training), inner],
                     name='real_nvp')

  def prior(self, temperature=1.):
    """Unit Gaussian over [H, W, C] (standard deviation `temperature`)."""
    return tfd.Independent(
        tfd.Normal(tf.zeros(self.config.image_shape, self.compute_dtype),
                   tf.cast(temperature, self.compute_dtype)),
        reinterpreted_batch_ndims=3)

  def distribution(self, training=False, temperature=1.):
    """tfd.TransformedDistribution of dequantized pixels u in [0, L)^D."""
    return tfd.TransformedDistribution(
        self.prior(temperature), self.bijector(training), name='RealNVP')

  # --- likelihood ------------------------------------------------------------

  def _check_images(self, images, what):
    """Static check of rank and [H, W, C]; a clear error instead of a conv's."""
    shape = images.shape
    if shape.rank != 4 or tuple(shape[1:]) != self.config.image_shape:
      raise ValueError(
          f'{what} must have shape [batch, {", ".join(map(str, self.config.image_shape))}] '
          f'(this model\'s image shape). Received shape {shape}')

  def log_prob(self, pixels, training=False):
    """log p(u) in nats per example, u: float [B, H, W, C] in [0, L). -> [B].

    Values outside [0, L) raise InvalidArgumentError.
    """
    pixels = tf.convert_to_tensor(pixels, self.compute_dtype)
    self._check_images(pixels, 'pixels')
    levels = float(self.config.levels)
    with tf.control_dependencies([
        tf.debugging.assert_greater_equal(
            pixels, tf.constant(0., pixels.dtype),
            message='pixels must be >= 0'),
        tf.debugging.assert_less(
            pixels, tf.constant(levels, pixels.dtype),
            message=f'pixels must be < levels={levels:g}')]):
      pixels = tf.identity(pixels)  # carries the checks
    return self.distribution(training).log_prob(pixels)

  def dequantize(self, images, seed):
    """uint8 [B, H, W, C] -> u = images + U[0, 1) (stateless `seed`: int or [2])."""
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8:
      raise TypeError(f'images must be uint8. Received dtype {images.dtype.name}')
    self._check_images(images, 'images')
    with tf.control_dependencies([tf.debugging.assert_less(
        tf.cast(images, tf.int32), self.config.levels,
        message=f'images must be < levels={self.config.levels}')]):
      noise = tf.random.stateless_uniform(
          tf.shape(images), seed=_stateless_seed(seed), dtype=self.compute_dtype)
      return preprocess.dequantize(images, self.config.levels, noise)

  def bits_per_dim(self, images, seed=(0, 0), training=False):
    """Bits/dim of uint8 images [B, H, W, C] under uniform dequantization. -> [B]."""
    log_prob = self.log_prob(self.dequantize(images, seed), training)
    return preprocess.bits_per_dim(log_prob, self.config.num_dims)

  # --- generation and latents ---------------------------------------------

  def sample_pixels(self, num_samples, temperature=1., seed=None):
    """Dequantized pixels u [n, H, W, C] from the prior scaled by `temperature`.

    `seed`: None (TF's global RNG) or a stateless seed (int or shape [2]).
    """
    shape = tf.concat([[num_samples], self.config.image_shape], axis=0)
    if seed is None:
      z = tf.random.normal(shape, dtype=self.compute_dtype)
    else:
      z = tf.random.stateless_normal(
          shape, seed=_stateless_seed(seed), dtype=self.compute_dtype)
    return self.bijector().forward(z * tf.cast(temperature, z.dtype))

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
    self._check_images(images, 'images')
    if images.dtype == tf.uint8:
      images = tf.cast(images, self.compute_dtype) + 0.5
    return self.split_latents(self.bijector().inverse(images))

  def decode(self, latents):
    """uint8 images from per-scale latents (a list) or a latent [B, H, W, C]."""
    z = self.merge_latents(latents) if isinstance(latents, (list, tuple)) else latents
    return preprocess.quantize(self.bijector().forward(z), self.config.levels)

  def split_latents(self, z):
    """Latent z [B, H, W, C] -> [z_1, ..., z_S], one per scale, finest first.

    z_i (i < S) has shape [B, H/2^i, W/2^i, 2^i C]; z_S is the last scale's
    input, [B, H/2^(S-1), W/2^(S-1), 2^(S-1) C].
    """
    latents = []
    for _ in range(self.config.num_scales - 1):
      factored, z = tf.split(tf.nn.space_to_depth(z, 2), 2, axis=-1)
      latents.append(factored)
    return latents + [z]

  def merge_latents(self, latents):
    """Inverse of `split_latents`."""
    if len(latents) != self.config.num_scales:
      raise ValueError(f'Expected {self.config.num_scales} per-scale latents, '
                       f'one per scale. Received {len(latents)}')
    z = latents[-1]
    for factored in reversed(latents[:-1]):
      z = tf.nn.depth_to_space(tf.concat([factored, z], axis=-1), 2)
    return z

  # --- regularization ----------------------------------------------------------

  @property
  def weight_norm_gains(self):
    """Weight-normalization gains of every s/t network (paper: L2 5e-5)."""
    return [gain for steps in self.scales for layer in steps
            if isinstance(layer, AffineCoupling) for gain in layer.gains]

  def get_config(self):
    return {'config': self.config.to_json(), 'st_dtype': self._st_dtype}

  @classmethod
  def from_config(cls, config):
    return cls(FlowConfig.from_json(config['config']), config.get('st_dtype'))


def _stateless_seed(seed):
  seed = tf.convert_to_tensor(seed)
  if seed.shape.rank == 0:
    return tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
  return seed
