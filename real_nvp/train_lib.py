"""Training: the distributed train step and the loop (held-out evaluation:
evaluation.py; the model directory: checkpoints.py).

Everything that draws randomness is a pure function of (seed, step): the
data order and augmentation (see data.py), the dequantization noise of a step,
the evaluation noise (of (seed, image index)). Together with the checkpointed weights, optimizer
slots, step and batch-norm averages, a run restarted from its last checkpoint
continues exactly as if it had not stopped.
"""

import math
import os
import shutil
import signal
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from real_nvp import checkpoints, data, distribute, summaries
from real_nvp.evaluation import Evaluator
from real_nvp.model import RealNVP
from real_nvp.optimizer import Adam

__all__ = ['Trainer', 'TrainingDiverged', 'WarmupSchedule']


_LOSS_SCALE_PERIOD = 2000


class TrainingDiverged(RuntimeError):
  """Too many consecutive steps with a non-finite loss or gradient."""


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


class Trainer:
  """Builds model, optimizer and checkpoint under `strategy` and trains."""

  def __init__(self, strategy, source, flow_config, train_config, model_dir):
    cfg = train_config
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
      raise ValueError(f'--batch_size={cfg.batch_size} is not divisible by the '
                       f'{replicas} replicas of the strategy')
    if tuple(source.image_shape) != flow_config.image_shape:
      raise ValueError(f'Data set {source.name} has images of shape '
                       f'{source.image_shape}, the model expects '
                       f'{flow_config.image_shape}')
    if source.levels != flow_config.levels:
      raise ValueError(f'Data set {source.name} has {source.levels} levels, '
                       f'the model expects {flow_config.levels}')
    self.strategy, self.source, self.cfg = strategy, source, cfg
    self.flow_config, self.model_dir = flow_config, model_dir
    self.is_chief = distribute.is_chief(strategy)
    checkpoints.check_config(model_dir, flow_config)

    if cfg.jit_compile and not isinstance(
        strategy, (tf.distribute.OneDeviceStrategy, tf.distribute.TPUStrategy)):
      raise ValueError(
          '--xla needs --strategy=one_device (or tpu): the batch-norm moving '
          'averages of mirrored variables synchronize across replicas, which '
          'XLA-compiled code cannot do.')
    keras.utils.set_random_seed(cfg.seed)  # Reproducible initial weights.
    with strategy.scope():
      self.model = RealNVP(flow_config, st_dtype=(
          f'mixed_{cfg.mixed_precision}' if cfg.mixed_precision else None))
      self.optimizer = Adam(
          [v.value for v in self.model.trainable_variables],
          WarmupSchedule(cfg.learning_rate, cfg.warmup_steps))
      self.step = tf.Variable(0, dtype=tf.int64, name='step')
      self.nonfinite_steps = tf.Variable(0, dtype=tf.int64, name='nonfinite')
      self.consecutive_nonfinite = tf.Variable(0, dtype=tf.int64,
                                               name='consecutive_nonfinite')
      # Dynamic loss scale for float16 s/t networks: halved when gradients
      # overflow, doubled after _LOSS_SCALE_PERIOD finite steps in a row.
      self._dynamic_loss_scale = cfg.mixed_precision == 'float16'
      self.loss_scale = tf.Variable(
          2. ** 15 if self._dynamic_loss_scale else 1., name='loss_scale')
      self.finite_in_a_row = tf.Variable(0, dtype=tf.int64, name='finite_in_a_row')
    self.checkpoint = tf.train.Checkpoint(
        model_weights=checkpoints.model_weights(self.model), optimizer=self.optimizer,
        step=self.step,
        nonfinite_steps=self.nonfinite_steps,
        consecutive_nonfinite=self.consecutive_nonfinite,
        loss_scale=self.loss_scale, finite_in_a_row=self.finite_in_a_row)
    self._checkpoint_dir = model_dir if self.is_chief else os.path.join(
        model_dir, f'.worker_{strategy.cluster_resolver.task_id}_tmp')
    self.manager = None  # Created by restore(), once the directory is sound.
    self.best = checkpoints.BestCheckpoint(
        self.checkpoint, model_dir, None if self.is_chief else os.path.join(
            model_dir, f'.worker_{strategy.cluster_resolver.task_id}_best_tmp'))
    self._early_stopped = False
    self._updated_since_save = False
    self.writers = summaries.SummaryWriters(model_dir, self.is_chief)
    # XLA compiles the per-replica forward and backward pass; the all-reduce
    # and the update stay outside (collectives do not compile on every device).
    self._compiled_local_gradients = (
        tf.function(self._local_gradients, jit_compile=True)
        if cfg.jit_compile else self._local_gradients)
    self.train_step = tf.function(self._train_step_fn)
    self.evaluator = Evaluator(self.model, strategy, cfg.batch_size, seed=cfg.seed + 1)
    self._stop_requested = False

  # --- state --------------------------------------------------------------

  def restore(self):
    """Restores the newest readable checkpoint, if any; returns the step.

    Leftovers of interrupted saves are removed first. A newer checkpoint that
    cannot be read is reported and moved to corrupt_checkpoints/, and the one
    before it is used; a checkpoint of another architecture is refused.
    """
    if self.is_chief:
      checkpoints.clean_temporary_files(self.model_dir)
    for path in checkpoints.checkpoint_paths(self.model_dir):
      try:
        checkpoints.read_checkpoint(self.checkpoint, path)
      except checkpoints.CheckpointMismatch:
        raise
      except checkpoints.ModelDirError as error:
        if not self.is_chief:
          raise
        checkpoints.quarantine(self.model_dir, path, str(error))
        continue
      logging.info('Restored %s at step %d', path, int(self.step.numpy()))
      break
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, self._checkpoint_dir, max_to_keep=self.cfg.keep_checkpoints,
        checkpoint_name='ckpt')
    if self.is_chief:
      if not checkpoints.has_checkpoint(self.model_dir):
        os.makedirs(self.model_dir, exist_ok=True)
      checkpoints.write_config(self.model_dir, self.flow_config)
    self.best.resume(int(self.step.numpy()))
    return int(self.step.numpy())

  def last_good_checkpoint(self):
    """The newest checkpoint on disk (every saved checkpoint is finite)."""
    paths = checkpoints.checkpoint_paths(self.model_dir)
    return paths[0] if paths else None

  def save(self):
    """Writes a checkpoint, unless no update was applied since the last one
    (every step skipped): the step counter alone does not replace a good one.
    A full disk stops the run with the directory and the last good checkpoint."""
    if not self._updated_since_save and self.last_good_checkpoint():
      logging.warning('Step %d: no update since the last checkpoint; not saving.',
                      int(self.step.numpy()))
      return None
    try:
      path = self.manager.save(checkpoint_number=int(self.step.numpy()))
    except checkpoints.STORAGE_ERRORS as error:
      what = 'The disk is full' if checkpoints.is_disk_full(error) else 'Writing failed'
      raise checkpoints.StorageError(
          f'{what}: could not write a checkpoint to {self._checkpoint_dir} '
          f'({checkpoints.error_summary(error)}). The last good checkpoint is '
          f'{self.last_good_checkpoint()}; free space (or fix the directory) and '
          'run the same command again to resume from it.') from None
    if not self.is_chief:
      shutil.rmtree(self._checkpoint_dir, ignore_errors=True)
    self._updated_since_save = False
    return path

  # --- steps ---------------------------------------------------------------

  def _replica_loss(self, images, step):
    """Per-replica training loss and the sum of its bits/dim.

    The objective is the model's (bound, or the importance-weighted estimate
    for train_dequant_samples > 1), with noise from (seed, step) drawn for the
    global batch, so it does not depend on how the batch is split.
    """
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
      if self._dynamic_loss_scale:
        loss *= self.loss_scale
    grads = tape.gradient(loss, variables)
    if self._dynamic_loss_scale:
      grads = [g / self.loss_scale for g in grads]
    return grads, bpd_sum

  def _replica_gradients(self, images, step):
    grads, bpd_sum = self._compiled_local_gradients(images, step)
    context = tf.distribute.get_replica_context()
    return context.all_reduce(tf.distribute.ReduceOp.SUM, (grads, bpd_sum))

  def _train_step_fn(self, images):
    """One optimizer step on a distributed batch; skips non-finite updates.

    Returns (bits/dim, gradient norm, whether the update was applied)."""
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
    finite = (tf.math.is_finite(grad_norm) & tf.math.is_finite(bpd) &
              tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in statistics]))
    finite = tf.cond(finite, lambda: self.optimizer.update_is_finite(clipped),
                     lambda: tf.constant(False))

    def apply():
      self.optimizer.apply_gradients(clipped)
      self.consecutive_nonfinite.assign(0)
      if self._dynamic_loss_scale:
        self.finite_in_a_row.assign_add(1)
        grow = self.finite_in_a_row >= _LOSS_SCALE_PERIOD
        self.loss_scale.assign(tf.where(grow, 2. * self.loss_scale, self.loss_scale))
        self.finite_in_a_row.assign(tf.where(grow, tf.zeros_like(self.finite_in_a_row),
                                             self.finite_in_a_row))
      return tf.constant(True)

    def skip():
      for variable, value in zip(statistics, saved_statistics):
        variable.assign(value)  # Batch-norm averages saw the bad batch.
      self.nonfinite_steps.assign_add(1)
      self.consecutive_nonfinite.assign_add(1)
      if self._dynamic_loss_scale:
        self.loss_scale.assign(tf.maximum(self.loss_scale / 2., 1.))
        self.finite_in_a_row.assign(0)
      return tf.constant(False)

    tf.cond(finite, apply, skip)
    self.step.assign_add(1)
    return bpd, grad_norm, finite

  # --- public loop ----------------------------------------------------------

  def evaluate(self, num_examples=None):
    """Held-out bits/dim in inference mode (BN moving averages)."""
    return self.evaluator(self.source, num_examples).summary()['bits_per_dim']

  def write_samples(self, step):
    """Sample grids at each temperature: PNG (first temperature) and TensorBoard."""
    if not self.is_chief:
      return
    for i, temperature in enumerate(self.cfg.sample_temperatures):
      images = self.model.sample(self.cfg.num_samples, temperature,
                                 seed=self.cfg.seed + step)
      grid = summaries.image_grid(
          summaries.to_display(images.numpy(), self.flow_config.levels))
      self.writers.images('train', step, f'samples/temperature_{temperature:g}', grid)
      if i == 0:
        upscale = max(1, 256 // grid.shape[0])
        summaries.save_png(os.path.join(self.model_dir, 'samples', f'step_{step}.png'),
                           grid, upscale)

  def _request_stop(self, signum, frame):
    del frame
    logging.warning('Received signal %d: saving a checkpoint and stopping.', signum)
    self._stop_requested = True

  def train(self):
    """Trains to `train_steps` (or until early stopping); returns the last
    held-out bits/dim (None if stopped by a signal). `self.best` holds the
    best evaluation."""
    start = self.restore()
    previous_handlers = {s: signal.signal(s, self._request_stop)
                         for s in (signal.SIGTERM, signal.SIGINT)}
    try:
      self._loop(start)
    finally:
      for s, handler in previous_handlers.items():
        signal.signal(s, handler)
    if self._stop_requested:
      return None
    if self._early_stopped:
      return self.best.history[-1][1]
    return self._held_out_evaluation(int(self.step.numpy()))

  def _held_out_evaluation(self, step):
    """Evaluates, keeps the best checkpoint, decides on early stopping."""
    cfg = self.cfg
    eval_bpd = self.evaluate(cfg.eval_examples)
    improved = self.best.record(step, eval_bpd)
    self.writers.scalars('eval', step, {'bits_per_dim': eval_bpd,
                                        'best_bits_per_dim': self.best.best[1]})
    logging.info('step %d: held-out bits/dim %.4f (%s)%s', step, eval_bpd,
                 self.source.eval_split_name,
                 ', the best so far' if improved else
                 f'; best {self.best.best[1]:.4f} at step {self.best.best[0]}')
    waited = self.best.evaluations_since_best
    if cfg.early_stopping_evals and waited >= cfg.early_stopping_evals:
      logging.info('Early stopping at step %d: %d held-out evaluations without '
                   'improvement on %.4f bits/dim (step %d).', step, waited,
                   self.best.best[1], self.best.best[0])
      self._early_stopped = True
    return eval_bpd

  def _loop(self, start):
    cfg = self.cfg
    dataset = self.strategy.distribute_datasets_from_function(
        lambda ctx: data.train_dataset(self.source, cfg.batch_size, cfg.seed,
                                       start, ctx))
    iterator = iter(dataset)
    step = start
    progress = _Progress(cfg, start)
    while step < cfg.train_steps and not (self._stop_requested or self._early_stopped):
      progress.start_step()
      images = next(iterator)
      if step == start and self.is_chief:
        first = self.strategy.experimental_local_results(images)[0]
        self.writers.images('train', step, 'inputs', summaries.image_grid(
            summaries.to_display(first.numpy(), self.flow_config.levels)))
      bpd, grad_norm, finite = self.train_step(images)
      bpd, grad_norm, finite = float(bpd), float(grad_norm), bool(finite)
      step += 1
      progress.end_step(step, bpd, grad_norm, finite)
      if finite:
        self._updated_since_save = True
      else:
        logging.warning('Step %d: non-finite loss, gradient, batch-norm average or '
                        'update (bits/dim %s, grad norm %s); update skipped.',
                        step, bpd, grad_norm)
        if int(self.consecutive_nonfinite.numpy()) >= cfg.max_nonfinite:
          raise TrainingDiverged(
              f'{cfg.max_nonfinite} consecutive non-finite steps up to step '
              f'{step}; stopping. The last good checkpoint is '
              f'{self.last_good_checkpoint()}. Try a lower --learning_rate, '
              '--warmup_steps or --clip_grad_norm.')
      progress.log(step)
      if step % cfg.summary_every == 0 or step == cfg.train_steps:
        self.writers.scalars('train', step, {
            **progress.summary(),
            'learning_rate': float(self.optimizer.learning_rate),
            'nonfinite_steps': int(self.nonfinite_steps.numpy()),
        })
      if step % cfg.checkpoint_every == 0 or step == cfg.train_steps:
        self.save()
      if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.train_steps:
        self._held_out_evaluation(step)
        self.write_samples(step)
    if self._stop_requested or self._early_stopped:
      if step % cfg.checkpoint_every:
        self.save()
    if self._stop_requested:
      logging.info('Stopped at step %d; checkpoint saved. Run again to resume.',
                   step)
    elif not self._early_stopped:
      self.write_samples(step)


class _Progress:
  """Progress lines and the train scalars' windows. Rates and the ETA count
  the time of training steps only (data and step), not evaluations, samples
  or checkpoints; the first step, which traces the graph, is not counted."""

  def __init__(self, cfg, start):
    self.cfg, self.start = cfg, start
    self.log_seconds = self.summary_seconds = 0.
    self.log_steps = 0
    self.bpd, self.norms, self.summary_steps = [], [], 0
    self.last_log = time.time()
    self._step_started = None

  def start_step(self):
    self._step_started = time.time()

  def end_step(self, step, bpd, grad_norm, finite):
    if step > self.start + 1:
      seconds = time.time() - self._step_started
      self.log_seconds += seconds
      self.summary_seconds += seconds
      self.log_steps += 1
      self.summary_steps += 1
    if finite:
      self.bpd.append(bpd)
      self.norms.append(grad_norm)

  def log(self, step):
    now = time.time()
    if step == self.start + 1:
      self.last_log = now
      return
    if now - self.last_log < self.cfg.log_every_secs and step != self.cfg.train_steps:
      return
    rate = self.log_steps * self.cfg.batch_size / max(self.log_seconds, 1e-9)
    eta = (self.cfg.train_steps - step) * self.cfg.batch_size / max(rate, 1e-9)
    logging.info('step %d/%d  bits/dim %.4f  %.1f img/s  ETA %s', step,
                 self.cfg.train_steps, np.mean(self.bpd) if self.bpd else math.nan,
                 rate, _format_seconds(eta))
    self.last_log, self.log_seconds, self.log_steps = now, 0., 0

  def summary(self):
    """Window means since the last summary; starts a new window."""
    values = {
        'bits_per_dim': np.mean(self.bpd) if self.bpd else math.nan,
        'grad_norm': np.mean(self.norms) if self.norms else math.nan,
        'images_per_sec': (self.summary_steps * self.cfg.batch_size /
                           max(self.summary_seconds, 1e-9)),
    }
    self.bpd, self.norms = [], []
    self.summary_steps, self.summary_seconds = 0, 0.
    return values


def _format_seconds(seconds):
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s'
