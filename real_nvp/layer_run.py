"""The one loop of the flow: run a list of layers and add up their log-dets.

    run_layers(layers, x)                           data -> latent, inference mode
    run_layers(layers, x, training=True, memory_saving='invert')
    run_layers(layers, y, inverse=True)             latent -> data (decodes, reversed)

Data -> latent applies `layer(x, training=...)` in order; latent -> data
applies `layer.decode(y, training=...)` in reverse order. Either way the
result is (output, log_det [B]) with log_det the sum of the layers' own
log-dets in the order they ran (log|det| of the map in the direction run).

`context` (features of the image, the variational dequantizer's) goes to
every layer that takes one (`FlowLayer.takes_context`); a layer may move it
as it moves the data (`FlowLayer.encoded_context`, the squeeze), so the
layers after it see it in their own layout. In training mode data -> latent
is differentiated as `memory_saving` says (memory_saving.py); a
memory-saving unit sees one context, so a unit never holds a layer that
moves it.
"""

from real_nvp import memory_saving as memory_saving_lib
from real_nvp.config import MEMORY_SAVING_MODES

__all__ = ['run_layers', 'advance_context']


def run_layers(layers, x, inverse=False, training=False, memory_saving='off',
               context=None):
  """(y, log_det [B]) of `layers` applied to x; see the module docstring."""
  if memory_saving not in MEMORY_SAVING_MODES:
    raise ValueError(f'`memory_saving` must be one of {MEMORY_SAVING_MODES}. '
                     f'Received: {memory_saving!r}')
  if inverse:
    return _sequential(list(reversed(layers)), x, context, _decode(training), inverse)
  if not training or memory_saving == 'off':
    return _sequential(layers, x, context, _call(training))
  if memory_saving == 'invert':
    return memory_saving_lib.inverting_op(layers, x, context, _train)
  return _sequential(layers, x, context, _recomputed)


def advance_context(layers, context, inverse=False):
  """The context as the layer after `layers` sees it (in the direction run)."""
  if context is None:
    return None
  for layer in (reversed(layers) if inverse else layers):
    context = layer.decoded_context(context) if inverse else layer.encoded_context(context)
  return context


def _sequential(layers, x, context, apply, inverse=False):
  """`layers` applied in the order given (`inverse`: as decodes)."""
  log_det = None
  for layer in layers:
    x, step = apply(layer, x, context if layer.takes_context else None)
    log_det = step if log_det is None else log_det + step
    context = advance_context([layer], context, inverse)
  return x, log_det


def _call(training):
  def call(layer, x, context):
    if context is None:
      return layer(x, training=training)
    return layer(x, training=training, context=context)
  return call


def _decode(training):
  def decode(layer, y, context):
    if context is None:
      return layer.decode(y, training=training)
    return layer.decode(y, training=training, context=context)
  return decode


def _train(layers, x, context):
  """The plain training-mode run that the memory-saving ops recompute."""
  return _sequential(layers, x, context, _call(True))


def _recomputed(layer, x, context):
  if layer.recompute_as_unit:
    return memory_saving_lib.recomputing_op([layer], x, context, _train)
  return _call(True)(layer, x, context)
