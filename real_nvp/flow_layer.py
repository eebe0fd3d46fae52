"""The contract every invertible Keras layer of the flow follows.

Direction convention (the paper's, §3.1): the *data* side is the image side,
the *latent* side is the Gaussian side.

- `layer(x, training=...)` maps data -> latent and returns `(y, log_det)`,
  where `log_det = log |det dy/dx|` per example, shape [B].
- `layer.decode(y)` maps latent -> data and returns `(x, log_det)` with
  `log_det = log |det dx/dy|` per example. Decoding always uses inference
  mode: the flow is a fixed bijection only with frozen statistics.

The TFP wrappers in `bijectors.py` map `decode` to a bijector's `forward`
(generative, TFP's convention) and `call` to its `inverse`.
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

  def _check_built(self):
    if not self.built:
      raise ValueError(
          f'{self.name}: call the layer on data once (which builds it) before '
          'calling `decode`.')
