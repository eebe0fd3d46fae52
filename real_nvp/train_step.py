"""The distributed training step, and the device loop that runs many of them
in one `tf.function` call.

A step draws its dequantization noise from (seed, step) for the whole global
batch (each replica takes its slice), so it does not depend on how the batch
is split. The device loop (`TrainStep.loop`) runs up to N steps over the
distributed iterator without returning to Python: the counters it reports
(bits/dim and gradient-norm sums, applied and skipped steps) live in
variables on the device and are read back once per loop. Every step of a
loop is the same graph with the same operands as a step on its own, so a run
gives bit-identical weights, batch-norm averages and summaries for any N.
"""

import keras
import tensorflow as tf

from real_nvp import checkpoints
from real_nvp.model import RealNVP
from real_nvp.optimizer import Adam

__all__ = ['TrainStep', 'DynamicLossScale', 'WarmupSchedule']


@keras.saving.register_keras_serializable('real_nvp')
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up from 0 to `learning_rate` over `warmup_steps`, then flat."""

  def __init__(self, learning_rate, warmup_steps):
    self.learning_rate = learning_rate
    self.warmup_steps = warmup_steps

  def __call__(self, step):
    if not self.warmup_steps:
      return tf.constant(self.learning_rate, tf.float32)
    fraction = tf.cast(step + 1, tf.float32) / float(self.warmup_steps)
    return self.learning_rate * tf.minimum(1., fraction)

  def get_config(self):
    return {'learning_rate': self.learning_rate,
            'warmup_steps': self.warmup_steps}


class DynamicLossScale(tf.Module):
  """Loss scale for float16 s/t networks: halved (down to 1) when an update
  is skipped as non-finite, doubled after `period` applied steps in a row.
  Disabled, it is the constant 1 and its updates do nothing."""

  def __init__(self, enabled, initial=2. ** 15, period=2000):
    super().__init__(name='dynamic_loss_scale')
    self.enabled, self.period = enabled, period
    self.scale = tf.Variable(initial if enabled else 1., name='loss_scale')
    self.finite_in_a_row = tf.Variable(0, dtype=tf.int64, name='finite_in_a_row')

  def scale_loss(self, loss):
    return loss * self.scale if self.enabled else loss

  def unscale(self, gradients):
    return [g / self.scale for g in gradients] if self.enabled else gradients

  def applied(self):
    if not self.enabled:
      return
    self.finite_in_a_row.assign_add(1)
    grow = self.finite_in_a_row >= self.period
    self.scale.assign(tf.where(grow, 2. * self.scale, self.scale))
    self.finite_in_a_row.assign(tf.where(grow, tf.zeros_like(self.finite_in_a_row),
                                         self.finite_in_a_row))

  def skipped(self):
    if not self.enabled:
      return
    self.scale.assign(tf.maximum(self.scale / 2., 1.))
    self.finite_in_a_row.assign(0)


class TrainStep:
  """The model, its optimizer and the step counters under `strategy`, and the
  step that trains them.

  Args:
    strategy: the tf.distribute strategy (the variables are created in its scope).
    flow_config: the model's FlowConfig.
    train_config: the TrainConfig (batch size, optimizer, seed, objective).

  Attributes:
    train_step: tf.function(distributed batch) -> (bits/dim, gradient norm,
      whether the update was applied): one step, for benchmarks and tests.
    loop: tf.function(distributed iterator, N int64) -> dict of the device
      counters after up to N steps (fewer if max_nonfinite consecutive steps
      were skipped): 'step', 'applied' (updates applied in this loop),
      'consecutive_nonfinite', 'nonfinite_steps', the summary window's
      'window_bpd_sum', 'window_grad_norm_sum', 'window_finite', and the last
      skipped step's 'last_nonfinite_step', '_bpd', '_grad_norm'.
  """

  def __init__(self, strategy, flow_config, train_config):
    cfg = self.cfg = train_config
    self.strategy = strategy
    with strategy.scope():
      self.model = RealNVP(flow_config, st_dtype=(
          f'mixed_{cfg.mixed_precision}' if cfg.mixed_precision else None),
                           memory_saving=cfg.memory_saving)
      self.optimizer = Adam(
          [v.value for v in self.model.trainable_variables],
          WarmupSchedule(cfg.learning_rate, cfg.warmup_steps))
      self.step = tf.Variable(0, dtype=tf.int64, name='step')
      self.nonfinite_steps = tf.Variable(0, dtype=tf.int64, name='nonfinite')
      self.consecutive_nonfinite = tf.Variable(0, dtype=tf.int64,
                                               name='consecutive_nonfinite')
      self.loss_scale = DynamicLossScale(cfg.mixed_precision == 'float16')
      # Not checkpointed: the host resets the summary window after reading it.
      # float64, so that sums over long windows lose nothing of the float32 values.
      self._window = {
          'window_bpd_sum': tf.Variable(0., dtype=tf.float64, trainable=False),
          'window_grad_norm_sum': tf.Variable(0., dtype=tf.float64, trainable=False),
          'window_finite': tf.Variable(0, dtype=tf.int64, trainable=False),
      }
      self._last_nonfinite = {
          'last_nonfinite_step': tf.Variable(0, dtype=tf.int64, trainable=False),
          'last_nonfinite_bpd': tf.Variable(0., trainable=False),
          'last_nonfinite_grad_norm': tf.Variable(0., trainable=False),
      }
    # XLA compiles the per-replica forward and backward pass; the all-reduce
    # and the update stay outside (collectives do not compile on every device).
    self._compiled_local_gradients = (
        tf.function(self._local_gradients, jit_compile=True, autograph=False)
        if cfg.jit_compile else self._local_gradients)
    self.train_step = tf.function(self._step, autograph=False)
    self.loop = tf.function(self._loop)

  def checkpointables(self):
    """The objects a checkpoint of the run holds (names as stored)."""
    return dict(model_weights=checkpoints.model_weights(self.model),
                optimizer=self.optimizer, step=self.step,
                nonfinite_steps=self.nonfinite_steps,
                consecutive_nonfinite=self.consecutive_nonfinite,
                loss_scale=self.loss_scale.scale,
                finite_in_a_row=self.loss_scale.finite_in_a_row)

  def reset_window(self):
    """Starts a new summary window (host side, between loops)."""
    for variable in self._window.values():
      variable.assign(tf.zeros_like(variable))

  # --- one step -------------------------------------------------------------

  def _replica_loss(self, images, step):
    """Per-replica training loss and the sum of its bits/dim: the model's
    bound (or the importance-weighted estimate for train_dequant_samples > 1)."""
    replicas = tf.distribute.get_replica_context().num_replicas_in_sync
    estimates = self.model.bits_per_dim_estimates(
        images, seed=tf.stack([tf.constant(self.cfg.seed, tf.int64), step]),
        num_samples=self.cfg.train_dequant_samples, training=True)
    bpd = estimates['bits_per_dim' if self.cfg.train_dequant_samples == 1
                    else 'bits_per_dim_iw']
    l2 = tf.add_n([tf.reduce_sum(tf.square(g)) for g in self.model.weight_norm_gains])
    # Mean over the global batch; the penalty counted once over all replicas.
    loss = (tf.reduce_sum(bpd) / self.cfg.batch_size +
            self.cfg.weight_decay * l2 / tf.cast(replicas, tf.float32))
    return loss, tf.reduce_sum(bpd)

  def _local_gradients(self, images, step):
    variables = self.model.trainable_variables
    with tf.GradientTape() as tape:
      loss, bpd_sum = self._replica_loss(images, step)
      loss = self.loss_scale.scale_loss(loss)
    return self.loss_scale.unscale(tape.gradient(loss, variables)), bpd_sum

  def _replica_gradients(self, images, step):
    grads, bpd_sum = self._compiled_local_gradients(images, step)
    context = tf.distribute.get_replica_context()
    return context.all_reduce(tf.distribute.ReduceOp.SUM, (grads, bpd_sum))

  def _step(self, images):
    """One optimizer step on a distributed batch; skips non-finite updates."""
    statistics = self.model.non_trainable_variables
    saved_statistics = [tf.identity(v) for v in statistics]
    grads, bpd_sum = self.strategy.run(
        self._replica_gradients, args=(images, self.step))
    grads = [self.strategy.experimental_local_results(g)[0] for g in grads]
    bpd = self.strategy.experimental_local_results(bpd_sum)[0] / self.cfg.batch_size
    grad_norm = tf.linalg.global_norm(grads)
    clipped, _ = tf.clip_by_global_norm(grads, self.cfg.clip_grad_norm,
                                        use_norm=grad_norm)
    # Nothing non-finite reaches the model: not the loss or the gradient, not
    # the batch-norm averages this batch moved, not the weights or moments
    # the update would write (checked before it is applied).
    # The update's check runs unconditionally (not in a tf.cond on the rest):
    # a cond's captures would add a thousand nodes to the traced step.
    finite = (tf.math.is_finite(grad_norm) & tf.math.is_finite(bpd) &
              tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in statistics]) &
              self.optimizer.update_is_finite(clipped))

    def apply():
      self.optimizer.apply_gradients(clipped)
      self.consecutive_nonfinite.assign(0)
      self.loss_scale.applied()
      self._window['window_bpd_sum'].assign_add(tf.cast(bpd, tf.float64))
      self._window['window_grad_norm_sum'].assign_add(tf.cast(grad_norm, tf.float64))
      self._window['window_finite'].assign_add(1)
      return tf.constant(True)

    def skip():
      for variable, value in zip(statistics, saved_statistics):
        variable.assign(value)  # Batch-norm averages saw the bad batch.
      self.nonfinite_steps.assign_add(1)
      self.consecutive_nonfinite.assign_add(1)
      self.loss_scale.skipped()
      self._last_nonfinite['last_nonfinite_step'].assign(self.step + 1)
      self._last_nonfinite['last_nonfinite_bpd'].assign(bpd)
      self._last_nonfinite['last_nonfinite_grad_norm'].assign(grad_norm)
      return tf.constant(False)

    finite = tf.cond(finite, apply, skip)
    self.step.assign_add(1)
    return bpd, grad_norm, finite

  # --- the device loop ------------------------------------------------------

  def _loop(self, iterator, num_steps):
    applied = tf.constant(0, tf.int64)
    for _ in tf.range(num_steps):
      _, _, finite = tf.autograph.experimental.do_not_convert(self._step)(
          next(iterator))
      applied += tf.cast(finite, tf.int64)
      if self.consecutive_nonfinite >= self.cfg.max_nonfinite:
        break
    return {'step': self.step.read_value(), 'applied': applied,
            'consecutive_nonfinite': self.consecutive_nonfinite.read_value(),
            'nonfinite_steps': self.nonfinite_steps.read_value(),
            **{name: v.read_value() for name, v in self._window.items()},
            **{name: v.read_value() for name, v in self._last_nonfinite.items()}}
