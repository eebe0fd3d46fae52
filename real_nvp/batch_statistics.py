"""The batch statistics of one training-mode pass, kept to normalize with again.

In training mode a batch norm normalizes with the moments of the batch it
sees. The inverting memory-saving gradient (memory_saving.py) reconstructs a
layer's input from its output in the backward pass and runs the layer again;
the reconstructed input differs from the forward pass's in the last bits, so
its moments would too, and a flow batch norm cannot be inverted at all
without the statistics it used. So:

- inside `recording(record)`, every batch norm in training mode stores the
  (mean, variance) it normalized with (per channel) in `record`;
- inside `replaying(record)`, it normalizes with the stored numbers, while
  the gradient still flows through the moments of its own input:

      used = stored + weight * (moments(x) - stop_gradient(moments(x)))

  (value: exactly `stored`; `weight` is d used / d moments: 1, or
  1 - momentum for the lagged flow batch norm); a training-mode inverse
  takes the stored numbers as they are (`stored`). Replaying never moves an
  average.

The scope is per thread: the replicas of a MirroredStrategy trace their
step in threads of their own, over the same layers.
"""

import tensorflow as tf

from real_nvp.thread_scope import ThreadScope

__all__ = ['StatisticsRecord', 'recording', 'replaying', 'is_replaying', 'record',
           'replay', 'stored']

_scope = ThreadScope()


class StatisticsRecord:
  """The (mean, variance) each batch-norm layer normalized with in one pass."""

  def __init__(self):
    self._statistics = {}

  def store(self, layer, mean, variance):
    if id(layer) in self._statistics:
      raise ValueError(f'{layer.name} normalized twice in one recorded pass; a '
                       'replay could not tell which statistics to use.')
    self._statistics[id(layer)] = (mean, variance)

  def stored(self, layer):
    if id(layer) not in self._statistics:
      raise ValueError(f'{layer.name}: no batch statistics were recorded for this '
                       'layer in the pass being replayed.')
    return self._statistics[id(layer)]


def recording(statistics_record):
  """Scope in which training-mode batch norms store their statistics."""
  return _scope.holding({'record': statistics_record, 'replay': False})


def replaying(statistics_record):
  """Scope in which training-mode batch norms use the stored statistics."""
  return _scope.holding({'record': statistics_record, 'replay': True})


def is_replaying():
  """Whether training-mode batch norms in this thread replay stored statistics."""
  state = _scope.value()
  return bool(state and state['replay'])


def record(layer, mean, variance):
  """Stores what `layer` normalized with, if this thread is recording."""
  state = _scope.value()
  if state and not state['replay']:
    state['record'].store(layer, mean, variance)


def stored(layer):
  """The (mean, variance) `layer` normalized with in the pass being replayed."""
  state = _scope.value()
  if not (state and state['replay']):
    raise ValueError(
        f'{layer.name}: the training-mode inverse needs the batch statistics of '
        'the forward pass; run it inside batch_statistics.replaying(record).')
  return state['record'].stored(layer)


def replay(layer, batch_mean, batch_variance, weight=1.):
  """The stored (mean, variance) of `layer`, differentiable through the
  layer's batch moments."""
  mean, variance = stored(layer)

  def pinned(stored_value, batch):
    zero_valued = batch - tf.stop_gradient(batch)
    return stored_value + (zero_valued if weight == 1. else weight * zero_valued)

  return pinned(mean, batch_mean), pinned(variance, batch_variance)
