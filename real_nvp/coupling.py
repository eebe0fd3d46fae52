"""Coupling layer (paper §3.2-3.4): a partition, an element-wise transform and
the s/t network that conditions the transform on the kept dimensions.

Data -> latent (the paper's f), with the partition x = (x_a, x_b) and an
optional context tensor c (same H and W; e.g. features of the image that a
dequantizer conditions on):

    y_a = x_a,   y_b = T(x_b; net(x_a, c))
    log|det dy/dx| = log|det dT/dx_b|

Latent -> data:  x_a = y_a,  x_b = T^-1(y_b; net(y_a, c)).
x, y: [B, H, W, C]; c: [B, H, W, F]; log-dets: [B].

The affine transform gives the paper's y_b = x_b * exp(s) + t with
log-det sum(s). Partitions: partition.py; transforms: transforms.py.
"""

import numpy as np
import tensorflow as tf

from real_nvp.coding_maps import AffineMap
from real_nvp.flow_layer import FlowLayer
from real_nvp.partition import make_partition
from real_nvp.st_network import STNetwork
from real_nvp.transforms import TRANSFORMS

__all__ = ['Coupling']


class Coupling(FlowLayer):
  """Coupling layer; see the module docstring for the maps and shapes.

  Args:
    mask_type: 'checkerboard' or 'channel' (see partition.py).
    parity: 0 or 1; consecutive couplings alternate it (b <-> 1 - b).
    num_blocks, feature_maps: size of the residual s/t network.
    bn_momentum: momentum of the s/t network's batch norms.
    st_dtype: dtype policy of the s/t network (e.g. 'mixed_bfloat16');
      default: the layer's own. The coupling itself computes in its own dtype.
    transform: name of the element-wise transform in `transforms.TRANSFORMS`.
  """

  takes_context = True
  recompute_as_unit = True

  def __init__(self, mask_type, parity, num_blocks, feature_maps,
               bn_momentum=0.95, st_dtype=None, transform='affine', **kwargs):
    super().__init__(**kwargs)
    if transform not in TRANSFORMS:
      raise ValueError(f'`transform` must be one of {tuple(TRANSFORMS)}. '
                       f'Received: transform={transform!r}')
    self.partition = make_partition(mask_type, parity)
    self.mask_type = mask_type
    self.parity = parity
    self.num_blocks = num_blocks
    self.feature_maps = feature_maps
    self.bn_momentum = bn_momentum
    self.st_dtype = st_dtype
    self.transform_name = transform

  def build(self, input_shape):
    try:
      self.partition.build(input_shape, self.compute_dtype)
    except ValueError as error:
      raise ValueError(f'{self.name}: {error}') from None
    channels = self.partition.transformed_channels(input_shape[-1])
    self.transform = TRANSFORMS[self.transform_name](
        name=self.transform_name, dtype=self.dtype_policy)
    self.transform.build(channels)
    self.st_net = STNetwork(
        self.transform.num_params * channels, self.num_blocks,
        self.feature_maps, self.bn_momentum, name='st_net',
        dtype=self.st_dtype or self.dtype_policy)

  def _params(self, x, context, training):
    raw = self.st_net(self.partition.conditioner_input(x), context=context,
                      training=training)
    return self.partition.restrict(raw)

  def _forward(self, x, raw):
    y_b, log_det = self.transform.forward(self.partition.transformed_part(x), raw)
    return self.partition.merge(x, y_b), log_det

  def call(self, x, training=False, context=None):
    return self._forward(x, self._params(x, context, training))

  def rerun_from_output(self, y, watch, context=None):
    """See FlowLayer: the s/t network runs once, on the kept part of y (which
    is x's): it gives x_b = T^-1(y_b) and then y_b again from x_b."""
    raw = self._params(y, context, training=True)
    x_b = self.transform.inverse(self.partition.transformed_part(y),
                                 tf.stop_gradient(raw))[0]
    x = tf.stop_gradient(self.partition.merge(y, x_b))
    watch(x)
    return x, self._forward(x, raw)

  def decode(self, y, context=None, training=False):
    self._check_built()
    raw = self._params(y, context, training)
    x_b, log_det = self.transform.inverse(self.partition.transformed_part(y), raw)
    return self.partition.merge(y, x_b), log_det

  def coding_conditioning(self, event_shape):
    return self.partition.kept_mask(event_shape)

  def coding_tensors(self, x, context=None):
    """(s, t) [B, n] in inference mode: those of the transformed dimensions
    (C order of ~coding_conditioning), computed from the kept ones."""
    raw = self._params(x, context, training=False)
    log_scale, shift = self.transform.affine_parameters(raw)
    zeros = tf.zeros_like(x)
    transformed = np.flatnonzero(~self.coding_conditioning(x.shape[1:]))
    return tuple(tf.gather(tf.reshape(self.partition.merge(zeros, values), [tf.shape(x)[0], -1]),
                           transformed, axis=1)
                 for values in (log_scale, shift))

  def coding_map(self, x, context=None, tensors=None):
    """y_b = x_b exp(s) + t as an element-wise map of the transformed
    dimensions (inference mode); the identity on the kept dimensions, from
    which s and t are computed."""
    log_scale, shift = tensors if tensors is not None else self.coding_tensors(x, context)
    return AffineMap(np.exp(np.asarray(log_scale, np.float64)),
                     np.asarray(shift, np.float64),
                     conditioning=self.coding_conditioning(x.shape[1:]),
                     transformed_only=True)

  def regularized_weights(self):
    return self.st_net.gains

  def flops_per_example(self):
    return self.st_net.flops_per_example()

  def get_config(self):
    return {**super().get_config(), 'mask_type': self.mask_type,
            'parity': self.parity, 'num_blocks': self.num_blocks,
            'feature_maps': self.feature_maps, 'bn_momentum': self.bn_momentum,
            'st_dtype': self.st_dtype, 'transform': self.transform_name}
