"""Memory-saving gradients of the flow in training mode (`--memory_saving`).

Autodiff (`off`) keeps every activation of every s/t network until the
backward pass reaches it, so memory grows with depth, batch and image size.
The flow allows two cheaper gradients:

- `recompute`: each coupling is one op that keeps only its input. Its
  backward pass runs the coupling again under a tape (the same ops on the
  same input: the same numbers) and differentiates that.
- `invert`: a run of layers (one scale of the flow, one stage of the
  variational dequantizer) is one op that keeps only its output. Its
  backward pass walks the run from the end: each layer reconstructs its
  input with its training-mode inverse and recomputes its output from it
  under a tape (`FlowLayer.rerun_from_output`), and the gradient moves one
  layer down. Batch norms normalize with the batch statistics the forward
  pass recorded (batch_statistics.py), per channel; the reconstruction in
  float32 is close but not bit-exact, and so are the gradients.

How the ops are built (`_saving_op`):
- The layers' variables enter the op as tensors read before it (so autodiff
  carries their gradients on to the variables), and a Keras StatelessScope
  maps the variables to them inside: the op reads no variable, so
  `tf.custom_gradient` captures none, whatever the distribution strategy.
- Moving averages: the scope collects the forward pass's assignments, which
  are applied once, after it; recomputations see the averages as they were
  before the step, and what they assign is dropped.
- Order: a recomputation's input is multiplied by a 1 computed from the
  incoming gradient, so it runs only once the backward pass reaches it, and
  common-subexpression elimination cannot merge it with the forward pass.
"""

import keras
import tensorflow as tf

from real_nvp import batch_statistics
from real_nvp.coupling import Coupling

__all__ = ['MODES', 'apply']

MODES = ('off', 'recompute', 'invert')


def apply(layers, x, mode, context=None):
  """Data -> latent through `layers` (in order) in training mode, with the
  gradient of `mode`: (y, log_det [B]). `context` goes to every layer (the
  couplings of the variational dequantizer)."""
  if mode not in MODES:
    raise ValueError(f'`memory_saving` must be one of {MODES}. Received: {mode!r}')
  if mode == 'invert':
    return _saving_op(layers, x, context, keep_input=False)
  return _run(layers, x, context, _recomputed_call if mode == 'recompute' else _call)


def _call(layer, x, context):
  if context is None:
    return layer(x, training=True)
  return layer(x, training=True, context=context)


def _recomputed_call(layer, x, context):
  if isinstance(layer, Coupling):
    return _saving_op([layer], x, context, keep_input=True)
  return _call(layer, x, context)


def _run(layers, x, context, call=_call):
  log_det = None
  for layer in layers:
    x, step = call(layer, x, context)
    log_det = step if log_det is None else log_det + step
  return x, log_det


def _after(tensor, gradient):
  """`tensor` (exactly: times 1), available only once `gradient` is."""
  first = tf.reshape(gradient, [-1])[:1]
  flag = tf.cast(tf.reduce_max(first), tf.bool)  # Any value, even NaN or none.
  one = tf.where(tf.equal(flag, flag), tf.constant(1., tensor.dtype),
                 tf.constant(float('nan'), tensor.dtype))
  return tensor * one


def _saving_op(layers, x, context, keep_input):
  """The layers' training-mode map as one op whose gradient keeps their input
  (`keep_input`, recompute) or their output (invert); see the module
  docstring."""
  variables = [v for layer in layers for v in layer.variables]
  trainable = [v for v in variables if v.trainable]
  averages = [v for v in variables if not v.trainable]
  # The averages as they were before the step: every pass of the op reads these.
  before = [tf.convert_to_tensor(v) for v in averages]
  inputs = [x] if context is None else [x, context]

  def scope(values):
    return keras.StatelessScope(
        state_mapping=list(zip(trainable, values)) + list(zip(averages, before)))

  def split(args):
    """(x, context, values) of the op's flat arguments (or their gradients)."""
    count = len(inputs)
    return args[0], (args[1] if count > 1 else None), list(args[count:])

  @tf.custom_gradient
  def op(*args):
    x, context, values = split(args)
    record = batch_statistics.StatisticsRecord()
    forward = scope([tf.stop_gradient(v) for v in values])
    initial = {id(v): forward.get_current_value(v) for v in averages}
    with forward, batch_statistics.recording(record):
      y, log_det = _run(layers, tf.stop_gradient(x),
                        None if context is None else tf.stop_gradient(context))
    for average in averages:
      value = forward.get_current_value(average)
      if value is not initial[id(average)]:
        average.assign(value)

    def grad(d_y, d_log_det, variables=None):
      if variables:
        raise AssertionError('A memory-saving op read variables it was not given: '
                             f'{[v.name for v in variables]}')
      d_log_det = tf.zeros_like(log_det) if d_log_det is None else d_log_det
      d_y = tf.zeros_like(y) if d_y is None else d_y
      if keep_input:
        d_x, d_context, d_values = _recompute(x, context, values, d_y, d_log_det)
      else:
        d_x, d_context, d_values = _invert(y, context, values, d_y, d_log_det,
                                           record)
      return [d_x] + ([] if context is None else [d_context]) + d_values

    def _recompute(x, context, values, d_y, d_log_det):
      x = _after(x, d_y)
      sources = [x] + ([] if context is None else [context]) + values
      with tf.GradientTape() as tape:
        tape.watch(sources)
        with scope(values):
          outputs = _run(layers, x, context)
      grads = tape.gradient(outputs, sources, output_gradients=[d_y, d_log_det],
                            unconnected_gradients=tf.UnconnectedGradients.ZERO)
      return split(grads)

    def _invert(y, context, values, d_y, d_log_det, record):
      d_values = [None] * len(values)
      d_context = None if context is None else tf.zeros_like(context)
      for layer in reversed(layers):
        own = [i for i, v in enumerate(trainable)
               if any(v is w for w in layer.trainable_variables)]
        y = _after(y, d_y)
        extra = [] if context is None else [context]
        with tf.GradientTape() as tape:
          tape.watch([y] + extra + [values[i] for i in own])
          with scope(values), batch_statistics.replaying(record):
            x, outputs = layer.rerun_from_output(y, tape.watch, context)
        sources = [x, y] + extra + [values[i] for i in own]
        grads = tape.gradient(outputs, sources, output_gradients=[d_y, d_log_det])
        grads = [tf.zeros_like(source) if grad is None and k != 1 else grad
                 for k, (source, grad) in enumerate(zip(sources, grads))]
        # Where the rerun read x's values from y, x's gradient has two parts.
        d_y = grads[0] if grads[1] is None else grads[0] + grads[1]
        if context is not None:
          d_context += grads[2]
        for i, grad in zip(own, grads[2 + len(extra):]):
          d_values[i] = grad
        y = x
      return d_y, d_context, d_values

    return (y, log_det), grad

  return op(*inputs, *[tf.convert_to_tensor(v) for v in trainable])
