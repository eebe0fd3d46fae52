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

How the ops are built (`_stateless_op`, shared by `recomputing_op` and
`inverting_op`; layer_run.py chooses between them):
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

__all__ = ['recomputing_op', 'inverting_op']


def recomputing_op(layers, x, context, run):
  """`run(layers, x, context)` (the training-mode map: (y, log_det)) as one
  op whose backward pass keeps x and runs the layers again under a tape."""

  def backward(op_inputs, outputs, gradients, scope, record):
    del outputs, record
    x, context, values = op_inputs.x, op_inputs.context, op_inputs.values
    x = _after(x, gradients[0])
    sources = [x] + ([] if context is None else [context]) + values
    with tf.GradientTape() as tape:
      tape.watch(sources)
      with scope(values):
        recomputed = run(layers, x, context)
    grads = tape.gradient(recomputed, sources, output_gradients=gradients,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return op_inputs.split(grads)

  return _stateless_op(layers, x, context, run, backward)


def inverting_op(layers, x, context, run):
  """`run(layers, x, context)` as one op whose backward pass keeps only the
  output y and walks the layers from the end, each reconstructing its input
  (`FlowLayer.rerun_from_output`) with the recorded batch statistics."""

  def backward(op_inputs, outputs, gradients, scope, record):
    y, context, values = outputs[0], op_inputs.context, op_inputs.values
    d_y, d_log_det = gradients
    d_values = [None] * len(values)
    d_context = None if context is None else tf.zeros_like(context)
    extra = [] if context is None else [context]
    for layer in reversed(layers):
      own = op_inputs.trainable_of(layer)
      y = _after(y, d_y)
      with tf.GradientTape() as tape:
        tape.watch([y] + extra + [values[i] for i in own])
        with scope(values), batch_statistics.replaying(record):
          x, recomputed = layer.rerun_from_output(y, tape.watch, context)
      sources = [x, y] + extra + [values[i] for i in own]
      grads = tape.gradient(recomputed, sources, output_gradients=[d_y, d_log_det])
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

  return _stateless_op(layers, x, context, run, backward)


def _after(tensor, gradient):
  """`tensor` (exactly: times 1), available only once `gradient` is."""
  first = tf.reshape(gradient, [-1])[:1]
  flag = tf.cast(tf.reduce_max(first), tf.bool)  # Any value, even NaN or none.
  one = tf.where(tf.equal(flag, flag), tf.constant(1., tensor.dtype),
                 tf.constant(float('nan'), tensor.dtype))
  return tensor * one


class _OpInputs:
  """The op's inputs: x, the optional context and the trainable variables'
  values, flat as `tf.custom_gradient` passes them (and their gradients)."""

  def __init__(self, layers, args, has_context):
    self.trainable = [v for layer in layers for v in layer.variables if v.trainable]
    self.has_context = has_context
    self.x, self.context, self.values = self.split(args)

  def split(self, args):
    """(x, context, values) of flat arguments (or of their gradients)."""
    count = 2 if self.has_context else 1
    return args[0], (args[1] if self.has_context else None), list(args[count:])

  def trainable_of(self, layer):
    return [i for i, v in enumerate(self.trainable)
            if any(v is w for w in layer.trainable_variables)]


def _stateless_op(layers, x, context, run, backward):
  """The layers' training-mode map as one `tf.custom_gradient` op with the
  gradient `backward(op_inputs, (y, log_det), (d_y, d_log_det), scope,
  record)` -> (d_x, d_context, d_values); see the module docstring."""
  variables = [v for layer in layers for v in layer.variables]
  trainable = [v for v in variables if v.trainable]
  averages = [v for v in variables if not v.trainable]
  # The averages as they were before the step: every pass of the op reads these.
  before = [tf.convert_to_tensor(v) for v in averages]

  def scope(values):
    return keras.StatelessScope(
        state_mapping=list(zip(trainable, values)) + list(zip(averages, before)))

  @tf.custom_gradient
  def op(*args):
    op_inputs = _OpInputs(layers, args, context is not None)
    record = batch_statistics.StatisticsRecord()
    forward = scope([tf.stop_gradient(v) for v in op_inputs.values])
    initial = {id(v): forward.get_current_value(v) for v in averages}
    with forward, batch_statistics.recording(record):
      y, log_det = run(layers, tf.stop_gradient(op_inputs.x),
                       None if context is None else tf.stop_gradient(op_inputs.context))
    for average in averages:
      value = forward.get_current_value(average)
      if value is not initial[id(average)]:
        average.assign(value)

    def grad(d_y, d_log_det, variables=None):
      if variables:
        raise AssertionError('A memory-saving op read variables it was not given: '
                             f'{[v.name for v in variables]}')
      gradients = [tf.zeros_like(y) if d_y is None else d_y,
                   tf.zeros_like(log_det) if d_log_det is None else d_log_det]
      d_x, d_context, d_values = backward(op_inputs, (y, log_det), gradients, scope,
                                          record)
      return [d_x] + ([] if context is None else [d_context]) + d_values

    return (y, log_det), grad

  inputs = [x] if context is None else [x, context]
  return op(*inputs, *[tf.convert_to_tensor(v) for v in trainable])
