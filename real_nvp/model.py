"""The Real NVP model: dequantization, preprocessing, the multi-scale flow,
the prior, and the objective (bits/dim of uint8 images).

The flow's order (paper §3.6) is multiscale.py's, built once as a tree
(flow_tree.py): `model.flow`; the TFP bijector wraps it, the per-scale
latents' layout is derived from it (`split_latents` / `merge_latents`), and
the lossless coder walks it. The latent z has the image's shape, so the
prior is a unit Gaussian over [H, W, C].

The objective is the model's: `log_weights` draws K dequantizations
u_k ~ q(u|x) from a stateless seed and returns log p(u_k) - log q(u_k|x);
`bits_per_dim_estimates` turns them into the bound and the
importance-weighted estimate in the data's own pixel space (see
dequantization.py). Training, evaluation and the SavedModel all call these.
"""

import contextlib
import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from real_nvp import flow_tree, model_inputs, multiscale
from real_nvp.bijectors import FlowBijector, traced_walks
from real_nvp.config import MEMORY_SAVING_MODES, FlowConfig
from real_nvp.dequantization import make_dequantizer
from real_nvp.generation import Generation

tfb = tfp.bijectors
tfd = tfp.distributions

__all__ = ['RealNVP']


class RealNVP(Generation, keras.Model):
  """Real NVP density model of images with `config.levels` pixel levels.

  Densities are of dequantized pixels u in [0, L)^D (the data's pixel space);
  `training=True` makes every batch norm use (and update) batch statistics.

  Args:
    config: a `FlowConfig`.
    st_dtype: dtype policy of the s/t networks, e.g. 'mixed_bfloat16' or
      'mixed_float16'; the flow, its log-dets and the prior stay float32.
    memory_saving: how training mode is differentiated, one of
      `config.MEMORY_SAVING_MODES` (see memory_saving.py): a setting of the run,
      not of the architecture; it may change between runs of a checkpoint.

  Attributes:
    flow: the flow from the preprocessing's input u to the latent z, a
      flow_tree node built once; `dequantizer` holds its own.
    latent_layout: where each scale's latent sits in z (derived from `flow`).
  """

  def __init__(self, config, st_dtype=None, memory_saving='off', **kwargs):
    super().__init__(**kwargs)
    if not isinstance(config, FlowConfig):
      raise TypeError(f'`config` must be a FlowConfig. Received: {config!r}')
    if memory_saving not in MEMORY_SAVING_MODES:
      raise ValueError(f'`memory_saving` must be one of {MEMORY_SAVING_MODES}. '
                       f'Received: {memory_saving!r}')
    self.config = config
    self._st_dtype = st_dtype
    self.memory_saving = memory_saving
    self.dequantizer = make_dequantizer(config, st_dtype, memory_saving)
    # Attributes, so that Keras tracks the layers; the tree is built over them.
    self.preprocess, self.scales, self.flow = multiscale.build_flow(
        config, st_dtype, memory_saving)
    self.latent_layout = flow_tree.LatentLayout(self.flow, config.image_shape)
    self._shared_walks = None  # See `shared_flow_traces`.
    self._build_layers()

  # --- construction -------------------------------------------------------

  def _build_layers(self):
    images = tf.zeros((1,) + self.config.image_shape, tf.uint8)
    self.log_weights(images)
    self.built = True

  # --- the flow as TFP objects --------------------------------------------

  def bijector(self, training=False):
    """TFP bijector of `flow`: forward latent z -> dequantized pixels u;
    inverse u -> z.

    A new one on each call (cheap: the tree and the weights are built
    once), and bijectors compare by identity, so no TFP cache entry is shared
    between calls: in eager mode a cached result would skip the gradient
    tape, and would be stale after a weight update. `training` sets the mode
    of every batch norm in the data -> latent direction (differentiated as
    `memory_saving` says).
    """
    return FlowBijector(self.flow, training, self._shared_walks)

  @contextlib.contextmanager
  def shared_flow_traces(self):
    """Within this context, every graph that walks the flow in inference
    mode calls one tf.function per direction (data -> latent, latent ->
    data) instead of tracing the flow again: the SavedModel's six
    signatures trace the flow twice instead of six times (the s/t networks
    were ~40 % of the signatures' traces). The functions take any batch
    size."""
    self._shared_walks = traced_walks(self.flow, tf.TensorSpec(
        (None,) + self.config.image_shape, self.compute_dtype))
    try:
      yield
    finally:
      self._shared_walks = None

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

  def log_prob(self, pixels, training=False):
    """log p(u) in nats per example, u: float [B, H, W, C] in [0, L). -> [B].

    Values outside [0, L) raise InvalidArgumentError.
    """
    pixels = model_inputs.pixels(self.config, self.compute_dtype, pixels)
    if training:
      return self.distribution(training).log_prob(pixels)
    return model_inputs.unless_empty(pixels, lambda: self.distribution().log_prob(pixels),
                         lambda: tf.zeros([0], pixels.dtype))

  def _log_prob_of_examples(self, pixels, training):
    """log_prob of a batch known not to be empty (no emptiness guard)."""
    pixels = model_inputs.pixels(self.config, self.compute_dtype, pixels)
    return self.distribution(training).log_prob(pixels)

  def dequantize(self, images, seed=(0, 0), training=False):
    """One draw u ~ q(u|x) [B, H, W, C] in [x, x + 1) and log q(u|x) [B], nats.

    `images`: uint8 [B, H, W, C]. `seed`: a stateless seed, int or [2] (one
    draw for the batch, see `dequantization.base_noise`) or [B, 2] (one per
    image).
    """
    images = model_inputs.uint8_images(self.config, images)
    return self.dequantizer.sample(images, seed, training=training)

  def log_weights(self, images, seed=(0, 0), num_samples=1, training=False):
    """log p(u_k) - log q(u_k|x) in nats, [K, B], u_k ~ q(u|x), k < K.

    `images`, `seed`: see `dequantize`. `num_samples` (K) may be a Python
    int or a scalar tensor. In training mode the K draws form one batch of
    K B examples (batch statistics over all of them); in inference mode they
    are drawn and scored one after the other, so memory does not grow with K
    (beyond the [K, B] result). An empty batch gives [K, 0].
    """
    images = model_inputs.uint8_images(self.config, images)
    if training:  # Training batches are never empty (and all-reduce in BN).
      return self._log_weights(images, seed, num_samples, training)
    return model_inputs.unless_empty(
        images, lambda: self._log_weights(images, seed, num_samples, training),
        lambda: tf.zeros(tf.stack([num_samples, 0]), self.compute_dtype))

  def _log_weights(self, images, seed, num_samples, training):
    """`log_weights` of checked, non-empty images."""
    context = self.dequantizer.context(images, training)

    def log_weights(draws, first_draw=0):
      u, log_q = self.dequantizer.sample(images, seed, draws, first_draw, training,
                                         context)
      log_w = self._log_prob_of_examples(u, training) - log_q
      return tf.reshape(log_w, tf.stack([draws, tf.shape(images)[0]]))

    if training or (isinstance(num_samples, int) and num_samples == 1):
      return log_weights(num_samples)
    # At most 4 draws in flight: as fast as unbounded parallelism on a CPU,
    # and memory independent of K.
    return tf.map_fn(
        lambda k: log_weights(1, k)[0],
        tf.range(num_samples), parallel_iterations=4,
        fn_output_signature=tf.TensorSpec(None, self.compute_dtype))

  def bits_per_dim_estimates(self, images, seed=(0, 0), num_samples=1,
                             training=False):
    """Per-image bits/dim of uint8 images from K dequantization draws.

    Returns {'bits_per_dim': [B], 'bits_per_dim_iw': [B]}:
      bound = -mean_k(log w_k) / (D ln 2)
      iw    = -(logsumexp_k(log w_k) - log K) / (D ln 2)  <= bound
    with log w_k = log p(u_k) - log q(u_k|x) (see `log_weights`); equal for K = 1.
    """
    log_w = self.log_weights(images, seed, num_samples, training)
    count = tf.cast(tf.shape(log_w)[0], log_w.dtype)
    nats_per_bit_dim = self.config.num_dims * math.log(2.)
    return {
        'bits_per_dim': -tf.reduce_mean(log_w, axis=0) / nats_per_bit_dim,
        'bits_per_dim_iw': -(tf.reduce_logsumexp(log_w, axis=0) -
                             tf.math.log(count)) / nats_per_bit_dim,
    }

  def bits_per_dim(self, images, seed=(0, 0), training=False, num_samples=1):
    """Bits/dim of uint8 images [B, H, W, C] (the bound, mean over K draws). -> [B]."""
    return self.bits_per_dim_estimates(images, seed, num_samples,
                                       training)['bits_per_dim']

  # --- regularization and cost ---------------------------------------------------

  def _components(self):
    """The dequantizer and every flow layer, data side first."""
    return [self.dequantizer] + self.flow.all_layers()

  @property
  def weight_norm_gains(self):
    """The weights under the paper's L2 penalty (5e-5): every layer's
    `regularized_weights`, the dequantizer's included."""
    return [weight for layer in self._components()
            for weight in layer.regularized_weights()]

  def flops_per_example(self):
    """Analytic forward FLOPs of every network of the model for one image."""
    return sum(layer.flops_per_example() for layer in self._components())

  def get_config(self):
    return {'config': self.config.to_json(), 'st_dtype': self._st_dtype}

  @classmethod
  def from_config(cls, config):
    return cls(FlowConfig.from_json(config['config']), config.get('st_dtype'))
