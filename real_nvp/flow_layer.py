"""The contract every invertible Keras layer of the flow follows.

Direction convention (the paper's, §3.1): the *data* side is the image side,
the *latent* side is the Gaussian side.

- `layer(x, training=...)` maps data -> latent and returns `(y, log_det)`,
  where `log_det = log |det dy/dx|` per example, shape [B].
- `layer.decode(y)` maps latent -> data and returns `(x, log_det)` with
  `log_det = log |det dx/dy|` per example. Decoding always uses inference
  mode: the flow is a fixed bijection only with frozen statistics.

The TFP wrappers in `bijectors.py` map `decode` to a bijector's `forward`
(generative, TFP's convention) and `call` to its `inverse`. `coding_map`
describes the layer to the lossless coder (compression.py).
"""

import keras

__all__ = ['FlowLayer']


class FlowLayer(keras.layers.Layer):
  """Base class for the flow's invertible layers (see the module docstring).

  Subclasses implement `call(x, training=False) -> (y, log_det)` and
  `decode(y) -> (x, log_det)`, override the shape methods if they change
  the event shape, and `regularized_weights` / `flops_per_example` if they
  hold networks (the trainer's L2 penalty and the benchmark ask every layer).
  """

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

  def coding_conditioning(self, event_shape):
    """bool [H, W, C]: the elements `coding_map` depends on (coded first, by
    the identity); None when the map depends on none."""
    del event_shape

  def coding_map(self, x, context=None):
    """How lossless coding (coding.py, compression.py) moves each value from
    the data side to the latent side, in inference mode: an `AffineMap` or
    `MonotoneMap` (element-wise given what the layer conditions on, named by
    the map's `conditioning` mask) or a `Permutation`. `x`: the data side
    [B, H, W, C] as float, exact on the kept dimensions at least."""
    raise TypeError(f'{type(self).__name__} ({self.name}) defines no coding_map, '
                    'so a model that holds it cannot compress images.')

  def _check_built(self):
    if not self.built:
      raise ValueError(
          f'{self.name}: call the layer on data once (which builds it) before '
          'calling `decode`.')
