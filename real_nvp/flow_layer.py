"""The contract every invertible Keras layer of the flow follows.

Direction convention (the paper's, §3.1): the *data* side is the image side,
the *latent* side is the Gaussian side.

- `layer(x, training=...)` maps data -> latent and returns `(y, log_det)`,
  where `log_det = log |det dy/dx|` per example, shape [B].
- `layer.decode(y)` maps latent -> data and returns `(x, log_det)` with
  `log_det = log |det dx/dy|` per example, in inference mode: the flow is a
  fixed bijection only with frozen statistics. `decode(y, training=True)`
  inverts the training-mode map of a recorded pass, with the batch
  statistics that pass used (batch_statistics.py; the same map for layers
  without batch norms): the memory-saving gradient reconstructs layer
  inputs with it (memory_saving.py).

Layers are composed by the flow tree (flow_tree.py) and run by
layer_run.py; the TFP wrapper (`bijectors.py`) maps the tree's latent -> data
walk to a bijector's `forward` (generative, TFP's convention) and the data
-> latent walk to its `inverse`. `permutation` and `coding_map` describe the
layer to the latents' layout and to the lossless coder (batch_coder.py).
"""

import keras
import tensorflow as tf

__all__ = ['FlowLayer']


class FlowLayer(keras.layers.Layer):
  """Base class for the flow's invertible layers (see the module docstring).

  Subclasses implement `call(x, training=False) -> (y, log_det)` and
  `decode(y, training=False) -> (x, log_det)`, override the shape methods if they change
  the event shape, and `regularized_weights` / `flops_per_example` if they
  hold networks (the trainer's L2 penalty and the benchmark ask every layer).
  """

  # Whether the layer's `call` and `decode` take a `context` keyword (features
  # of the image that the variational dequantizer's couplings condition on).
  takes_context = False
  # Whether `--memory_saving=recompute` makes the layer one op that keeps its
  # input and runs again in the backward pass (the couplings: their s/t
  # networks hold the activations worth dropping).
  recompute_as_unit = False

  def encoded_context(self, context):
    """The context in the latent-side layout of this layer (the same by default)."""
    return context

  def decoded_context(self, context):
    """Inverse of `encoded_context`."""
    return context

  def permutation(self):
    """A `Permutation` when the layer only moves values (the squeeze); None."""
    return None

  def encoded_shape(self, data_shape):
    """Event shape [H, W, C] on the latent side for a data-side event shape."""
    return list(data_shape)

  def decoded_shape(self, latent_shape):
    """Event shape [H, W, C] on the data side for a latent-side event shape."""
    return list(latent_shape)

  def regularized_weights(self):
    """Weights under the paper's L2 penalty (weight-norm gains); none by default."""
    return []

  def flops_per_example(self):
    """Analytic forward FLOPs of the layer's networks for one example; 0 by default."""
    return 0

  def rerun_from_output(self, y, watch, context=None):
    """For the inverting memory-saving gradient (memory_saving.py), in
    training mode while a recorded pass is replayed (batch_statistics.py):
    reconstructs the input x that gave y, calls `watch(x)` (a tape starts
    following it) and recomputes (y', log_det) = self(x, training=True).
    Returns (x, (y', log_det)). The recomputation may read the dimensions
    that the layer passes through unchanged from y instead of x (a
    coupling's s/t network does, so that it runs once): the gradient with
    respect to x is the sum of those with respect to x and to y."""
    del context  # Only couplings take one.
    x = tf.stop_gradient(self.decode(y, training=True)[0])
    watch(x)
    return x, self(x, training=True)

  def coding_conditioning(self, event_shape):
    """bool [H, W, C]: the elements `coding_map` depends on (coded first, by
    the identity); None when the map depends on none, nor on the context or
    the batch's size (its parameters broadcast): the coder then asks for it
    once."""
    del event_shape

  def coding_tensors(self, x, context=None):
    """What `coding_map` computes with TensorFlow, a tuple of tensors: traceable,
    so that the coder runs it as one graph per layer, the same on both sides.
    None by default."""
    del x, context
    return ()

  def coding_map(self, x, context=None, tensors=None):
    """How lossless coding (coding_maps.py, batch_coder.py) moves each value from
    the data side to the latent side, in inference mode: an `AffineMap` or
    `MonotoneMap` (element-wise given what the layer conditions on, named by
    the map's `conditioning` mask). `x`: the data side [B, H, W, C] as float,
    exact on the kept dimensions at least; `tensors`: `coding_tensors(x,
    context)` if already computed."""
    raise TypeError(f'{type(self).__name__} ({self.name}) defines no coding_map, '
                    'so a model that holds it cannot compress images.')

  def _check_built(self):
    if not self.built:
      raise ValueError(
          f'{self.name}: call the layer on data once (which builds it) before '
          'calling `decode`.')
