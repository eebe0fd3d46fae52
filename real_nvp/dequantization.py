"""Dequantization: uint8 pixels x -> continuous u in [x, x + 1) with density q(u|x).

A flow gives a density p(u) of continuous u; the probability of the discrete
pixels x is P(x) = ∫_[x, x+1) p(u) du, and for any q(u|x) on that bin

    log P(x) >= E_q[log p(u) - log q(u|x)]                       (the bound)
    log P(x) >= E[log (1/K) Σ_k p(u_k) / q(u_k|x)],  u_k ~ q    (importance-weighted)

The second is tighter and grows with K (Burda et al. 2016; Flow++ §3.1).

- `UniformDequantizer`: u = x + U[0, 1)^D, log q = 0 (the paper).
- `VariationalDequantizer` (Flow++, Ho et al. 2019, §3.1): u = x + sigmoid(v),
  v = g(ε; x), ε ~ N(0, I), with g a conditional flow of this project's
  couplings whose s/t networks also see features of x (a context network):

      log q(u|x) = log N(ε; 0, I) - log|det ∂v/∂ε| - Σ_d log σ'(v_d)

Both draw their base noise from a stateless seed (`base_noise`), so a
step's noise is a pure function of (seed, step) or (seed, image index).
Shapes: images [B, H, W, C] uint8; base noise and u [K, B, H, W, C] or
[B, H, W, C] per draw; log q [B] per draw.
"""

import math

import keras
import tensorflow as tf
from tensorflow.python.ops import gen_stateless_random_ops_v2

from real_nvp import flow_tree
from real_nvp.config import MAX_DEQUANT_SAMPLES
from real_nvp.coupling import Coupling
from real_nvp.squeeze import Squeeze
from real_nvp.st_network import STNetwork

# tf.random.stateless_*'s default algorithm (Philox on CPUs and GPUs).
_AUTO_SELECT = 3

__all__ = ['UniformDequantizer', 'VariationalDequantizer',
           'MAX_DEQUANT_SAMPLES', 'make_dequantizer', 'base_noise', 'inside_bins',
           'stateless_seed']


def stateless_seed(seed):
  """int -> [2] int64; [2] and [B, 2] seeds pass through as int64."""
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
  if seed.shape.rank == 0:
    return tf.stack([seed, tf.constant(0, tf.int64)])
  return seed


def base_noise(distribution, images, seed, num_samples, dtype, first_draw=0):
  """Draws first_draw .. first_draw + K - 1 of U[0, 1) ('uniform') or N(0, 1)
  ('normal') noise, [K, B, H, W, C].

  Draw k of an image is the same numbers whatever K and first_draw are, so
  K draws may be taken one at a time (`first_draw=k`, K = 1) in memory that
  does not grow with K.
  `seed` [2]: one draw for the whole batch. Inside a replica context of R
  replicas with equal local batches (training), the draw is of the global
  batch [K, R B, ...] and this replica takes its slice, so the noise of an
  image does not depend on how the global batch is split.
  `seed` [B, 2]: one seed per image (evaluation: the image's index), so the
  noise of an image does not depend on batching at all.
  """
  seed = stateless_seed(seed)
  event = tf.shape(images)[1:]
  per_example = tf.cast(tf.reduce_prod(event), tf.int64)
  first_draw = tf.cast(first_draw, tf.int64)
  shape = tf.concat([[num_samples], event], 0)
  if seed.shape.rank == 2:
    per_image = tf.map_fn(
        lambda s: tf.reshape(_stream(distribution, s, first_draw * per_example,
                                     tf.reduce_prod(shape), dtype), shape),
        seed, fn_output_signature=tf.TensorSpec(None, dtype))
    return tf.transpose(per_image, [1, 0, 2, 3, 4])
  context = tf.distribute.get_replica_context()
  replicas = context.num_replicas_in_sync if context else 1
  local = tf.shape(images)[0]
  global_batch = tf.cast(local * replicas, tf.int64)
  start = (tf.cast(context.replica_id_in_sync_group, tf.int64) * tf.cast(local, tf.int64)
           if replicas > 1 else tf.constant(0, tf.int64))
  draw_offset = first_draw * global_batch * per_example
  if isinstance(num_samples, int) and num_samples == 1:  # This replica's part only.
    noise = _stream(distribution, seed, draw_offset + start * per_example,
                    tf.cast(local, tf.int64) * per_example, dtype)
    return tf.reshape(noise, tf.concat([[1, local], event], 0))
  noise = tf.reshape(
      _stream(distribution, seed, draw_offset,
              tf.cast(num_samples, tf.int64) * global_batch * per_example, dtype),
      tf.concat([[num_samples, local * replicas], event], 0))
  if replicas == 1:
    return noise
  return noise[:, start:start + tf.cast(local, tf.int64)]


def _stream(distribution, seed, offset, count, dtype):
  """Elements offset .. offset + count - 1 of the stream that
  tf.random.stateless_{uniform,normal}([n], seed) draws, flat.

  TF's stateless Philox generator makes 4 numbers per 128-bit counter value
  (uniform: one per 32-bit word; normal: Box-Muller on pairs of words) and
  starts every seed at the counter's low 64 bits = 0, so element i comes
  from counter + i // 4, position i % 4: skipping to an offset is adding to
  the counter, without drawing what comes before.
  """
  op = {'uniform': gen_stateless_random_ops_v2.stateless_random_uniform_v2,
        'normal': gen_stateless_random_ops_v2.stateless_random_normal_v2}[distribution]
  key, counter = gen_stateless_random_ops_v2.stateless_random_get_key_counter(seed)
  offset = tf.cast(offset, tf.int64)
  counter += tf.stack([tf.cast(offset // 4, tf.uint64), tf.constant(0, tf.uint64)])
  skip = offset % 4
  values = op(tf.reshape(skip + tf.cast(count, tf.int64), [1]), key=key,
              counter=counter, alg=_AUTO_SELECT, dtype=dtype)
  return values[skip:]


def inside_bins(images, noise):
  """u = x + noise, noise in [0, 1], kept strictly below x + 1.

  In float32, x + 0.99999994 rounds to x + 1 for x >= 1 (and a sigmoid
  rounds to 1): the clamp keeps u in the image's own bin, and so below L,
  where the logit preprocessing would be infinite.
  """
  pixels = tf.cast(images, noise.dtype)
  return tf.minimum(pixels + noise, tf.math.nextafter(pixels + 1., pixels))


class Dequantizer(keras.layers.Layer):
  """q(u|x): `transform` maps base noise to (u, log q(u|x)); `sample` draws
  the noise too. Subclasses set `noise_distribution` and define `transform`
  (and `context`, when the map is conditioned on features of the image)."""

  noise_distribution = None

  def context(self, images, training=False):
    del images, training
    return None

  def sample(self, images, seed, num_samples=1, first_draw=0, training=False,
             context=None):
    """u ~ q(u|x) and log q(u|x): draws first_draw .. first_draw + K - 1 of
    every image, as one batch of K B examples (draw-major): (u [K B, H, W, C],
    log q [K B]). `seed`: see `base_noise`; `context`: this dequantizer's
    context of the images, when the caller has it already."""
    noise = base_noise(self.noise_distribution, images, seed, num_samples,
                       self.compute_dtype, first_draw)
    if context is None:
      context = self.context(images, training)
    if isinstance(num_samples, int) and num_samples == 1:
      return self.transform(images, noise[0], context, training)
    tiled = _tile(images, num_samples)
    return self.transform(tiled, tf.reshape(noise, tf.shape(tiled)),
                          _tile(context, num_samples), training)

  def regularized_weights(self):
    return []

  def flops_per_example(self):
    return 0


def _tile(batch, count):
  """[B, ...] -> [count B, ...], the batch repeated (None stays None)."""
  if batch is None:
    return None
  return tf.tile(batch, tf.concat([[count], tf.ones([batch.shape.rank - 1], tf.int32)], 0))


class UniformDequantizer(Dequantizer):
  """u = x + U[0, 1)^D, log q(u|x) = 0 (paper §4.1)."""

  noise_distribution = 'uniform'

  def transform(self, images, noise, context=None, training=False):
    """(u, log q(u|x)) [B]: images [B, H, W, C], noise [B, H, W, C]."""
    del context, training
    return inside_bins(images, noise), tf.zeros(tf.shape(noise)[:1], noise.dtype)


class VariationalDequantizer(Dequantizer):
  """Flow++'s variational dequantization; see the module docstring.

  g, on ε [B, H, W, C] (data -> latent direction of each coupling):
    `num_couplings` checkerboard couplings (alternating masks), then, when H
    and W are even, squeeze, `num_couplings` channel couplings, unsqueeze.
  Every s/t network sees the context: features [B, H, W, feature_maps] of
  the image (x + 1/2) / L - 1/2 from a residual network (squeezed along with
  the data for the channel couplings). g starts as the identity.

  Args:
    image_shape: (H, W, C) of the images.
    levels: quantization levels L.
    num_couplings, feature_maps, num_blocks: size of g and of the context
      network (which has `num_blocks` residual blocks too).
    bn_momentum: momentum of the s/t networks' batch norms.
    st_dtype: dtype policy of the networks (see `Coupling`).
    memory_saving: how training mode is differentiated (memory_saving.py).
  """

  noise_distribution = 'normal'

  def __init__(self, image_shape, levels, num_couplings=2, feature_maps=32,
               num_blocks=1, bn_momentum=0.95, st_dtype=None, memory_saving='off',
               **kwargs):
    super().__init__(**kwargs)
    if num_couplings < 1 or feature_maps < 1 or num_blocks < 0:
      raise ValueError(
          'The variational dequantizer needs num_couplings >= 1, '
          'feature_maps >= 1 and num_blocks >= 0. Received: '
          f'{num_couplings}, {feature_maps}, {num_blocks}')
    self.image_shape = tuple(image_shape)
    self.levels = levels
    self.num_couplings = num_couplings
    self.feature_maps = feature_maps
    self.num_blocks = num_blocks
    self.bn_momentum = bn_momentum
    self.st_dtype = st_dtype
    self.context_net = STNetwork(
        feature_maps, num_blocks, feature_maps, bn_momentum,
        zero_init_output=False, name='dequant_context_net', dtype=st_dtype or self.dtype_policy)
    # Attributes, so that Keras tracks the layers (in this order: the weights'
    # order, which the compressed file's model fingerprint reads).
    self.checkerboard = self._couplings('checkerboard')
    height, width = self.image_shape[:2]
    self.channel = (self._couplings('channel') if height % 2 == 0 and width % 2 == 0
                    else [])
    stages = [flow_tree.Steps(self.checkerboard, memory_saving)]
    if self.channel:
      squeeze = flow_tree.Steps([Squeeze(name='dequant_squeeze')])
      stages += [squeeze, flow_tree.Steps(self.channel, memory_saving),
                 flow_tree.Inverted(squeeze)]
    # g: ε -> v data -> latent; the context is squeezed with the data.
    self.flow = flow_tree.Chain(stages)
    self.built = True  # The sublayers build on first use.

  def _couplings(self, mask_type):
    return [Coupling(mask_type, parity=k % 2, num_blocks=self.num_blocks,
                     feature_maps=self.feature_maps, bn_momentum=self.bn_momentum,
                     st_dtype=self.st_dtype, name=f'dequant_{mask_type}{k}')
            for k in range(self.num_couplings)]

  def context(self, images, training=False):
    """Features of the images [B, H, W, feature_maps], float32."""
    scaled = (tf.cast(images, self.compute_dtype) + 0.5) / self.levels - 0.5
    return tf.cast(self.context_net(scaled, training=training), self.compute_dtype)

  def transform(self, images, noise, context=None, training=False):
    """(u, log q(u|x)) [B] for base noise ε [B, H, W, C]."""
    if context is None:
      context = self.context(images, training)
    v, log_det = flow_tree.run(self.flow, noise, training=training, context=context)
    log_normal = tf.reduce_sum(-0.5 * tf.square(noise) - 0.5 * math.log(2 * math.pi),
                               axis=[1, 2, 3])
    log_sigmoid_slope = tf.reduce_sum(-tf.nn.softplus(-v) - tf.nn.softplus(v),
                                      axis=[1, 2, 3])
    u = inside_bins(images, tf.sigmoid(v))
    return u, log_normal - log_det - log_sigmoid_slope

  def noise_of(self, images, u):
    """ε with transform(images, ε)[0] = u (inference mode): g^-1(logit(u - x))."""
    fraction = u - tf.cast(images, u.dtype)
    v = tf.math.log(fraction) - tf.math.log1p(-fraction)
    return flow_tree.run(self.flow, v, inverse=True, context=self.context(images))[0]

  def regularized_weights(self):
    return self.context_net.gains + [
        gain for layer in self.flow.all_layers() for gain in layer.regularized_weights()]

  def flops_per_example(self):
    return self.context_net.flops_per_example() + sum(
        layer.flops_per_example() for layer in self.flow.all_layers())

  def get_config(self):
    return {**super().get_config(), 'image_shape': self.image_shape,
            'levels': self.levels,
            'num_couplings': self.num_couplings,
            'feature_maps': self.feature_maps, 'num_blocks': self.num_blocks,
            'bn_momentum': self.bn_momentum, 'st_dtype': self.st_dtype}


def make_dequantizer(config, st_dtype=None, memory_saving='off'):
  """The dequantizer a FlowConfig describes."""
  if config.dequantization == 'uniform':
    return UniformDequantizer(name='dequantizer')
  return VariationalDequantizer(
      config.image_shape, config.levels, config.dequant_couplings, config.dequant_feature_maps,
      config.dequant_blocks, config.bn_momentum, st_dtype, memory_saving,
      name='dequantizer')
