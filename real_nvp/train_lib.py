"""Training: the host loop that drives the device loop (the step and the
device loop: train_step.py; the run's checkpoints: run_state.py; held-out
evaluation: evaluation.py).

Everything that draws randomness is a pure function of (seed, step): the
data order and augmentation (see data.py), the dequantization noise of a step,
the evaluation noise (of (seed, image index)). Together with the checkpointed weights, optimizer
slots, step and batch-norm averages, a run restarted from its last checkpoint
continues exactly as if it had not stopped.

The host runs `steps_per_loop` steps per call of the device loop and acts
between loops: progress, summaries, checkpoints, evaluations, samples and
signals. A loop is shortened to end on each `*_every` boundary and on
`train_steps`, so what is written and when does not depend on its length.
"""

import math
import os
import signal
import time

import keras
import tensorflow as tf
from absl import logging

from real_nvp import checkpoints, data, distribute, hardware, summaries
from real_nvp.evaluation import Evaluator
from real_nvp.run_state import RunState
from real_nvp.train_step import TrainStep
from real_nvp.wall_time import (CHECKPOINTS, EVALUATIONS, START_UP, STEPS, TRACING,
                                WallTime)

__all__ = ['Trainer', 'TrainingDiverged']

# steps_per_loop=0 (auto): loops of about this many seconds, at most
# _AUTO_MAX_STEPS steps: long enough to hide the host's round trip on an
# accelerator, short enough that a signal is answered within seconds.
_AUTO_LOOP_SECONDS = 1.
_AUTO_MAX_STEPS = 100


class TrainingDiverged(RuntimeError):
  """Too many consecutive steps with a non-finite loss or gradient."""


class Trainer:
  """Builds model, optimizer and checkpoint under `strategy` and trains;
  `wall_time` (a `WallTime`, if given) counts where the time of train() goes."""

  def __init__(self, strategy, source, flow_config, train_config, model_dir,
               wall_time=None):
    cfg = train_config
    _check_setup(strategy, source, flow_config, cfg)
    self.strategy, self.source, self.cfg = strategy, source, cfg
    self.flow_config, self.model_dir = flow_config, model_dir
    self.is_chief = distribute.is_chief(strategy)
    keras.utils.set_random_seed(cfg.seed)  # Reproducible initial weights.
    self.steps = TrainStep(strategy, flow_config, cfg)
    self.model, self.step = self.steps.model, self.steps.step
    self.state = RunState(
        self.steps.checkpointables(), self.step, model_dir, flow_config,
        cfg.keep_checkpoints,
        None if self.is_chief else strategy.cluster_resolver.task_id,
        restart_if_unreadable=cfg.restart_if_unreadable,
        multi_worker=distribute.has_several_workers(strategy))
    self.best = self.state.best
    self._early_stopped = False
    self.outcome = None  # How train() ended: see its docstring.
    self.writers = summaries.SummaryWriters(model_dir, self.is_chief)
    self.wall_time = wall_time or WallTime()
    self.images = _RunImages(self.model, source, cfg, flow_config.levels, self.writers,
                             model_dir, self.wall_time, self.is_chief)
    self.evaluator = Evaluator(self.model, strategy, cfg.batch_size, seed=cfg.seed + 1,
                               wall_time=self.wall_time)
    self._stop_requested = False

  # --- public loop ----------------------------------------------------------

  def evaluate(self, num_examples=None):
    """Held-out bits/dim in inference mode (BN moving averages)."""
    return self.evaluator(self.source, num_examples).summary()['bits_per_dim']

  def _save(self):
    with self.wall_time.phase(CHECKPOINTS):
      self.state.save()

  def _request_stop(self, signum, frame):
    del frame
    logging.warning('Received signal %d: saving a checkpoint and stopping.', signum)
    self._stop_requested = True

  def train(self, on_restored=None):
    """Trains to `train_steps` (or until early stopping); returns the last
    held-out bits/dim, or None when no evaluation ended the call.
    `on_restored()`, if given, runs once the model directory has been read
    and accepted (train.py records the run's flags there, so that a refused
    run leaves the previous record). `self.best`
    holds the best evaluation; `self.outcome` says how the call ended:
    'finished', 'early_stopped', 'signal' (stopped by SIGTERM/SIGINT) or
    'stopped_before' (early stopping had ended this run already; nothing was
    trained, see --train_past_early_stop)."""
    with self.wall_time.phase(START_UP):
      start = self.state.restore()
      if on_restored:
        on_restored()
    with self.wall_time.phase(EVALUATIONS):
      self._value_unrecorded_best_checkpoints()
    stopped_at = self.best.early_stopped_at
    if stopped_at is not None:
      if not self.cfg.train_past_early_stop and self.best.best is not None:
        best_step, best_bpd = self.best.best
        logging.info(
            'This run was ended by early stopping at step %d (best %.4f bits/dim at '
            'step %d); not training further. Pass --train_past_early_stop to '
            'continue it.', stopped_at, best_bpd, best_step)
        self.outcome = 'stopped_before'
        return None
      logging.info('Continuing past the early stop at step %d (%s).', stopped_at,
                   '--train_past_early_stop' if self.cfg.train_past_early_stop else
                   'its best checkpoint is gone')
      self.best.clear_early_stop()
    previous_handlers = {s: signal.signal(s, self._request_stop)
                         for s in (signal.SIGTERM, signal.SIGINT)}
    try:
      self._loop(start)
    finally:
      for s, handler in previous_handlers.items():
        signal.signal(s, handler)
    if self._stop_requested:
      self.outcome = 'signal'
      return None
    if self._early_stopped:
      self.outcome = 'early_stopped'
      return self.best.history[-1][1]
    self.outcome = 'finished'
    return self._held_out_evaluation(int(self.step.numpy()))

  def _value_unrecorded_best_checkpoints(self):
    """Evaluates the checkpoints of best/ that no record values (a crash of an
    older version between its steps), so the best is decided on numbers; the
    run's own weights are put back afterwards."""
    for path, step in list(self.best.unvalued):
      logging.info('Evaluating %s, which the best-checkpoint record does not value.',
                   path)
      current = [variable.numpy() for variable in self.model.variables]
      weights = tf.train.Checkpoint(model_weights=checkpoints.model_weights(self.model))
      checkpoints.read_checkpoint(weights, path).expect_partial()
      try:
        self.best.adopt(path, step, self.evaluate(self.cfg.eval_examples))
      finally:
        for variable, value in zip(self.model.variables, current):
          variable.assign(value)

  def _held_out_evaluation(self, step):
    """Evaluates, keeps the best checkpoint, decides on early stopping."""
    cfg = self.cfg
    with self.wall_time.phase(EVALUATIONS):
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
      self.best.mark_early_stop(step)
    return eval_bpd

  def _loop(self, start):
    cfg, clock = self.cfg, self.wall_time
    with clock.phase(START_UP):
      dataset = self.strategy.distribute_datasets_from_function(
          lambda ctx: data.train_dataset(self.source, cfg.batch_size, cfg.seed,
                                         start, ctx))
      iterator = iter(dataset)
      self.images.inputs(start)
    step = start
    progress = _Progress(cfg, start)
    lengths = _LoopLengths(cfg)
    self.steps.reset_window()
    while step < cfg.train_steps and not (self._stop_requested or self._early_stopped):
      length = lengths.next(step)
      progress.start_loop()
      with clock.phase(TRACING if progress.first_loop else STEPS):
        counters = {name: value.numpy() for name, value in self.steps.loop(
            iterator, tf.constant(length, tf.int64)).items()}
      ran, step = int(counters['step']) - step, int(counters['step'])
      lengths.observe(ran, progress.end_loop(ran))
      if counters['applied']:
        self.state.updated_since_save = True
      self._report_skipped(step, ran - int(counters['applied']), counters)
      progress.log(step, counters)
      if step % cfg.summary_every == 0 or step == cfg.train_steps:
        self.writers.scalars('train', step, {
            **progress.summary(counters),
            'learning_rate': float(self.steps.optimizer.learning_rate),
            'nonfinite_steps': int(counters['nonfinite_steps']),
        })
        self.steps.reset_window()
      if step % cfg.checkpoint_every == 0 or step == cfg.train_steps:
        self._save()
      if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.train_steps:
        self._held_out_evaluation(step)
        self.images.samples(step)
    if self._stop_requested or self._early_stopped:
      if step % cfg.checkpoint_every:
        self._save()
    if self._stop_requested:
      logging.info('Stopped at step %d; checkpoint saved. Run again to resume.',
                   step)
    elif not self._early_stopped:
      self.images.samples(step)

  def _report_skipped(self, step, skipped, counters):
    """Logs the loop's skipped (non-finite) steps; stops a diverged run."""
    if not skipped:
      return
    logging.warning(
        'Steps up to %d: %d non-finite loss, gradient, batch-norm average or '
        'update; skipped (the last at step %d: bits/dim %s, grad norm %s).', step,
        skipped, counters['last_nonfinite_step'], counters['last_nonfinite_bpd'],
        counters['last_nonfinite_grad_norm'])
    if counters['consecutive_nonfinite'] >= self.cfg.max_nonfinite:
      raise TrainingDiverged(
          f'{self.cfg.max_nonfinite} consecutive non-finite steps up to step '
          f'{step}; stopping. The last good checkpoint is '
          f'{self.state.last_good_checkpoint()}. Try a lower --learning_rate, '
          '--warmup_steps or --clip_grad_norm.')


def _check_setup(strategy, source, flow_config, cfg):
  """Refuses a run whose parts do not fit together (a ValueError that says
  which flag to change)."""
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
  if cfg.jit_compile and not isinstance(
      strategy, (tf.distribute.OneDeviceStrategy, tf.distribute.TPUStrategy)):
    raise ValueError(
        '--xla needs --strategy=one_device (or tpu): the batch-norm moving '
        'averages of mirrored variables synchronize across replicas, which '
        'XLA-compiled code cannot do.')
  hardware.check_precision(cfg.mixed_precision, strategy, cfg.allow_emulated_precision)


class _RunImages:
  """The images a run writes (none off the chief): a grid of the first batch
  it trains on, and sample grids at each temperature (PNG and TensorBoard)."""

  def __init__(self, model, source, cfg, levels, writers, model_dir, wall_time, is_chief):
    self.model, self.source, self.cfg, self.levels = model, source, cfg, levels
    self.writers, self.model_dir, self.wall_time = writers, model_dir, wall_time
    self.is_chief = is_chief

  def inputs(self, step):
    if not self.is_chief:
      return
    batch = next(iter(data.train_dataset(self.source, self.cfg.batch_size,
                                         self.cfg.seed, step)))
    self.writers.images('train', step, 'inputs', summaries.image_grid(
        summaries.to_display(batch.numpy()[:64], self.levels)))

  def samples(self, step):
    if not self.is_chief:
      return
    with self.wall_time.phase(CHECKPOINTS):
      for i, temperature in enumerate(self.cfg.sample_temperatures):
        images = self.model.sample(self.cfg.num_samples, temperature,
                                   seed=self.cfg.seed + step)
        grid = summaries.image_grid(summaries.to_display(images.numpy(), self.levels))
        self.writers.images('train', step, f'samples/temperature_{temperature:g}', grid)
        if i == 0:
          upscale = max(1, 256 // grid.shape[0])
          summaries.save_png(os.path.join(self.model_dir, 'samples', f'step_{step}.png'),
                             grid, upscale)


class _LoopLengths:
  """How many steps the next device loop runs: --steps_per_loop (0: as many
  as take about _AUTO_LOOP_SECONDS, measured), cut to end on the next
  summary, checkpoint or evaluation step and on train_steps."""

  def __init__(self, cfg):
    self.cfg = cfg
    self.wanted = cfg.steps_per_loop or 1  # auto: one step until measured

  def next(self, step):
    cfg = self.cfg
    ends = [cfg.train_steps] + [(step // every + 1) * every for every in (
        cfg.summary_every, cfg.checkpoint_every, cfg.eval_every) if every]
    return max(1, min(self.wanted, min(ends) - step))

  def observe(self, steps, seconds):
    """Adapts the auto length to the measured time of `steps` steps (None:
    the loop that traced the graph, not measured)."""
    if self.cfg.steps_per_loop or not steps or seconds is None:
      return
    per_step = max(seconds / steps, 1e-6)
    self.wanted = int(min(_AUTO_MAX_STEPS, max(1, _AUTO_LOOP_SECONDS // per_step)))


class _Progress:
  """Progress lines and the rate of the train scalars' windows. Rates and the
  ETA count the time of the device loops only (data and steps), not
  evaluations, samples or checkpoints; the first loop, which traces the
  graph, is not counted. bits/dim and gradient norms are the device's window
  sums (over applied steps)."""

  def __init__(self, cfg, start):
    self.cfg, self.start = cfg, start
    self.log_seconds = self.summary_seconds = 0.
    self.log_steps = self.summary_steps = 0
    self.last_log = time.time()
    self._loop_started = None
    self.first_loop = True  # The next loop is the one that traces the graph.

  def start_loop(self):
    self._loop_started = time.time()

  def end_loop(self, steps):
    """-> the loop's seconds, or None for the loop that traced the graph."""
    if self.first_loop:
      self.first_loop = False
      return None
    seconds = time.time() - self._loop_started
    self.log_seconds += seconds
    self.summary_seconds += seconds
    self.log_steps += steps
    self.summary_steps += steps
    return seconds

  def log(self, step, counters):
    now = time.time()
    if not self.log_steps and step != self.cfg.train_steps:
      self.last_log = now
      return
    if now - self.last_log < self.cfg.log_every_secs and step != self.cfg.train_steps:
      return
    rate = self.log_steps * self.cfg.batch_size / max(self.log_seconds, 1e-9)
    eta = (self.cfg.train_steps - step) * self.cfg.batch_size / max(rate, 1e-9)
    logging.info('step %d/%d  bits/dim %.4f  %.1f img/s  ETA %s', step,
                 self.cfg.train_steps, _window_mean(counters, 'window_bpd_sum'),
                 rate, _format_seconds(eta))
    self.last_log, self.log_seconds, self.log_steps = now, 0., 0

  def summary(self, counters):
    """The window's means (the caller resets the device window); starts a new
    rate window."""
    values = {
        'bits_per_dim': _window_mean(counters, 'window_bpd_sum'),
        'grad_norm': _window_mean(counters, 'window_grad_norm_sum'),
        'images_per_sec': (self.summary_steps * self.cfg.batch_size /
                           max(self.summary_seconds, 1e-9)),
    }
    self.summary_steps, self.summary_seconds = 0, 0.
    return values


def _window_mean(counters, name):
  count = int(counters['window_finite'])
  return float(counters[name]) / count if count else math.nan


def _format_seconds(seconds):
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s'
