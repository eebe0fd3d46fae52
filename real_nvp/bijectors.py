"""TFP bijectors over the flow's Keras layers, and the factor-out bijector.

TFP's convention: a bijector's `forward` is generative (latent -> data) and
its `inverse` (data -> latent) is what `log_prob` uses. So

    FlowLayerBijector(layer).forward(z) = layer.decode(z)
    FlowLayerBijector(layer).inverse(x) = layer(x, training=...)

(or a run of layers in order; in training mode the run is differentiated
as `memory_saving` says, see memory_saving.py).

Each layer computes its output and log-det in one pass; the bijectors store
the log-det in TFP's cache with the output (`BijectorCacheWithGreedyAttrs`,
as TFP's FFJORD does), so `log_prob` runs every s/t network, and updates
every batch-norm average, exactly once.

Keras 3 variables are not tf.Module variables: `bijector.trainable_variables`
is empty. The weights belong to the Keras layers (see `model.RealNVP`).
"""

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import cache_util

from real_nvp import memory_saving

tfb = tfp.bijectors

__all__ = ['FlowLayerBijector', 'FactorOut']

_EVENT_NDIMS = 3  # [H, W, C]


class _ImageBijector(tfb.Bijector):
  """Base: image events, log-det computed together with the output."""

  _cache = cache_util.BijectorCacheWithGreedyAttrs(
      forward_name='_augmented_forward', inverse_name='_augmented_inverse')

  def __init__(self, parameters, name):
    super().__init__(
        forward_min_event_ndims=_EVENT_NDIMS, is_constant_jacobian=False,
        validate_args=False, parameters=parameters, name=name)

  # TFP keys its cache by bijector equality, and bijectors with the same
  # parameters compare equal: two chains over the same layers would share
  # cached outputs, stale once the weights change. Identity semantics give
  # every bijector (and so every chain built by RealNVP.bijector) its own.
  __hash__ = object.__hash__

  def __eq__(self, other):
    return self is other

  @staticmethod
  def _attrs(forward_log_det):
    return {'fldj': forward_log_det, 'ildj': -forward_log_det}

  def _forward(self, z):
    return self._augmented_forward(z)[0]

  def _inverse(self, x):
    return self._augmented_inverse(x)[0]

  def _forward_log_det_jacobian(self, z):
    attrs = self._cache.forward_attributes(z)
    if 'fldj' not in attrs:
      attrs.update(self._augmented_forward(z)[1])
    return attrs['fldj']

  def _inverse_log_det_jacobian(self, x):
    attrs = self._cache.inverse_attributes(x)
    if 'ildj' not in attrs:
      attrs.update(self._augmented_inverse(x)[1])
    return attrs['ildj']


class FlowLayerBijector(_ImageBijector):
  """A run of `FlowLayer`s as one TFP bijector (inverse: the layers in
  order; forward: their decodes in reverse order).

  Args:
    layers: a built `real_nvp.flow_layer.FlowLayer`, or a list of them.
    training: mode of the data -> latent direction (batch statistics and
      moving-average updates in batch norms). The latent -> data direction
      always runs in inference mode.
    memory_saving: how the training-mode direction is differentiated (one of
      `memory_saving.MODES`; the run is the unit that `invert` keeps the
      output of).
  """

  def __init__(self, layers, training=False, memory_saving='off', name=None):
    parameters = dict(locals())
    self._layers = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    self._training = training
    self._memory_saving = memory_saving
    super().__init__(parameters, name or '_'.join(layer.name for layer in self._layers))

  @property
  def layers(self):
    return self._layers

  def _augmented_forward(self, z):
    log_det = None
    for layer in reversed(self._layers):
      z, step = layer.decode(z)
      log_det = step if log_det is None else log_det + step
    return z, self._attrs(log_det)

  def _augmented_inverse(self, x):
    if self._training:
      z, log_det = memory_saving.apply(self._layers, x, self._memory_saving)
    else:
      log_det = None
      for layer in self._layers:
        x, step = layer(x, training=False)
        log_det = step if log_det is None else log_det + step
      z = x
    return z, self._attrs(-log_det)

  def _forward_event_shape(self, input_shape):
    shape = input_shape.as_list()
    for layer in reversed(self._layers):
      shape = layer.decoded_shape(shape)
    return tf.TensorShape(shape)

  def _inverse_event_shape(self, output_shape):
    shape = output_shape.as_list()
    for layer in self._layers:
      shape = layer.encoded_shape(shape)
    return tf.TensorShape(shape)

  def _forward_event_shape_tensor(self, input_shape):
    return tf.constant(self._forward_event_shape(
        tf.TensorShape(tf.get_static_value(input_shape).tolist())).as_list(), tf.int32)

  def _inverse_event_shape_tensor(self, output_shape):
    return tf.constant(self._inverse_event_shape(
        tf.TensorShape(tf.get_static_value(output_shape).tolist())).as_list(), tf.int32)


class FactorOut(_ImageBijector):
  """Multi-scale factor-out (paper §3.6) on events [H, W, 2K].

  Data -> latent: the first K channels are factored out (they go straight to
  the latent); `inner` maps the other K to the latent of the coarser scales:

      inverse([h_out, h_rest]) = [h_out, inner.inverse(h_rest)]

  log-det = inner's. Shape preserving, so the whole flow maps [H, W, C] to a
  latent of the same shape.
  """

  def __init__(self, inner, name='factor_out'):
    parameters = dict(locals())
    self._inner = inner
    super().__init__(parameters, name)

  @property
  def inner(self):
    return self._inner

  def _augmented_forward(self, z):
    z_out, z_rest = tf.split(z, 2, axis=-1)
    x_rest = self._inner.forward(z_rest)
    log_det = self._inner.forward_log_det_jacobian(z_rest, _EVENT_NDIMS)
    return tf.concat([z_out, x_rest], axis=-1), self._attrs(log_det)

  def _augmented_inverse(self, x):
    x_out, x_rest = tf.split(x, 2, axis=-1)
    z_rest = self._inner.inverse(x_rest)
    log_det = self._inner.inverse_log_det_jacobian(x_rest, _EVENT_NDIMS)
    return tf.concat([x_out, z_rest], axis=-1), self._attrs(-log_det)
