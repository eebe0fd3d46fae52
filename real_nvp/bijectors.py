"""The flow's tree (flow_tree.py) as a TFP bijector.

TFP's convention: a bijector's `forward` is generative (latent -> data) and
its `inverse` (data -> latent) is what `log_prob` uses. So

    FlowBijector(tree).forward(z) = the tree walked latent -> data
    FlowBijector(tree, training).inverse(x) = the tree walked data -> latent

(in training mode each run of layers is differentiated as its node's
`memory_saving` says, see memory_saving.py).

The walk computes the output and the log-det in one pass; the bijector
stores the log-det in TFP's cache with the output
(`BijectorCacheWithGreedyAttrs`, as TFP's FFJORD does), so `log_prob` runs
every s/t network, and updates every batch-norm average, exactly once.

Keras 3 variables are not tf.Module variables: `bijector.trainable_variables`
is empty. The weights belong to the Keras layers (see `model.RealNVP`).
"""

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import cache_util

from real_nvp import flow_tree

tfb = tfp.bijectors

__all__ = ['FlowBijector', 'traced_walks']

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


class FlowBijector(_ImageBijector):
  """A flow tree (flow_tree.py) as one TFP bijector over image events.

  Args:
    tree: a flow_tree node whose layers are built.
    training: mode of the data -> latent direction (batch statistics and
      moving-average updates in batch norms). The latent -> data direction
      always runs in inference mode.
    walks: None, or (data -> latent, latent -> data) callables of a tensor
      returning (output, log-det) as `flow_tree.run` of the tree would (in
      inference mode): traced functions that several graphs share.
  """

  def __init__(self, tree, training=False, walks=None, name='real_nvp'):
    parameters = dict(locals())
    self._tree = tree
    self._training = training
    self._walks = walks
    super().__init__(parameters, name)

  @property
  def tree(self):
    return self._tree

  def _augmented_forward(self, z):
    if self._walks:
      x, log_det = self._walks[1](z)
    else:
      x, log_det = flow_tree.run(self._tree, z, inverse=True)
    return x, self._attrs(log_det)

  def _augmented_inverse(self, x):
    if self._walks and not self._training:
      z, log_det = self._walks[0](x)
    else:
      z, log_det = flow_tree.run(self._tree, x, training=self._training)
    return z, self._attrs(-log_det)


def traced_walks(tree, spec):
  """`FlowBijector`'s `walks` for graphs that share them: the tree walked
  data -> latent and latent -> data in inference mode, each one tf.function
  over `spec` (a tf.TensorSpec of a batch of any size), traced once."""
  def walk(inverse):
    return tf.function(lambda x: flow_tree.run(tree, x, inverse=inverse),
                       input_signature=[spec], autograph=False)

  return walk(False), walk(True)
