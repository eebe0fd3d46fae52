"""Trains Real NVP.  `python train.py` trains on the embedded digits.

    python train.py --flagfile=flags/cifar10.cfg --data_dir=~/tensorflow_datasets

Writes to --model_dir: ckpt-* checkpoints, train/ and eval/ TensorBoard
logs, samples/step_N.png and saved_model/. Restarting resumes exactly. One
training run per model directory (train.lock).
"""

import time

_STARTED = time.perf_counter()  # Before the imports: they are part of start-up.

# pylint: disable=g-import-not-at-top,wrong-import-position
import contextlib
import os
import sys

from absl import app, flags, logging

# real_nvp before TensorFlow: it chooses TF's CPU kernels (hardware.py).
from real_nvp import cli_flags

cli_flags.define_flags()
FLAGS = flags.FLAGS
if __name__ == '__main__':
  cli_flags.parse_before_tensorflow(sys.argv)

from real_nvp import (checkpoints, data, distribute, export, hardware, model_dir_layout,
                      storage)
import tensorflow as tf  # noqa: E402  pylint: disable=g-bad-import-order
from real_nvp.model_dir_lock import ModelDirLock
from real_nvp.train_lib import Trainer, TrainingDiverged
from real_nvp.wall_time import EXPORT, START_UP, WallTime


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  model_dir = cli_flags.model_dir()
  wall_time = WallTime(since=_STARTED)
  wall_time.add(START_UP, time.perf_counter() - _STARTED)  # the imports
  try:
    with wall_time.phase(START_UP):
      strategy = distribute.get_strategy(FLAGS.strategy)
      hardware.log_platform()  # After the strategy: multi-worker must come first.
      source = data.load_dataset(FLAGS.dataset, FLAGS.data_dir, FLAGS.image_size,
                                 FLAGS.image_channels)
      flow_config = cli_flags.flow_config(source)
      train_config = cli_flags.train_config()
      chief = distribute.is_chief(strategy)
    with ModelDirLock(model_dir) if chief else contextlib.nullcontext():
      with wall_time.phase(START_UP):
        trainer = Trainer(strategy, source, flow_config, train_config, model_dir,
                          wall_time)

      def record_run():
        if chief:
          model_dir_layout.write_run_settings(
              model_dir, FLAGS.flags_into_string(),
              {name: FLAGS[name].value for name in cli_flags.DATA_FLAGS})

      logging.info('Training on %s %s (%d levels) with %d replica(s) into %s',
                   source.name, source.image_shape, source.levels,
                   strategy.num_replicas_in_sync, model_dir)
      eval_bpd = trainer.train(on_restored=record_run)
      if trainer.outcome == 'signal':
        return  # The checkpoint is saved.
      export_dir = os.path.join(model_dir, 'saved_model')
      export_wanted = chief and trainer.cfg.export_checkpoint != 'none'
      if trainer.outcome == 'stopped_before':
        if export_wanted and not os.path.exists(export_dir):
          _export(trainer, export_dir, wall_time)
        print(f'Nothing to do: early stopping ended this run at step '
              f'{trainer.best.early_stopped_at} (best {trainer.best.best[1]:.4f} at '
              f'step {trainer.best.best[0]})' +
              (f'; its SavedModel is in {export_dir}. ' if export_wanted else '. ') +
              'Pass --train_past_early_stop to train on.')
        return
      exported = _export(trainer, export_dir, wall_time) if export_wanted else None
  except (data.DataError, TrainingDiverged, ValueError, FileNotFoundError) as error:
    logging.error('%s', error)
    sys.exit(f'Error: {error}')
  except storage.STORAGE_ERRORS as error:  # summaries, samples, settings
    paths = model_dir_layout.checkpoint_paths(model_dir)
    message = (f'Writing to {model_dir} failed ({checkpoints.error_summary(error)}). '
               f'The last good checkpoint is {paths[0] if paths else "none"}; fix the '
               'directory (free space, permissions) and run the same command again.')
    logging.error('%s', message)
    sys.exit(f'Error: {message}')
  _report(trainer, source, eval_bpd, export_dir, exported, chief)
  print(wall_time.line())


def _report(trainer, source, eval_bpd, export_dir, exported, chief):
  """The run's result line: the last and the best held-out bits/dim, and
  which step the SavedModel holds (`exported`; None: not exported now)."""
  best_step, best_bpd = trainer.best.best
  print(f'Held-out bits/dim ({source.name}, {source.eval_split_name}): '
        f'{eval_bpd:.4f} after {int(trainer.step.numpy())} steps; best {best_bpd:.4f} '
        f'at step {best_step}. Outputs in {trainer.model_dir}' +
        (f'; the SavedModel holds step {exported}.' if exported is not None else
         f'; {export_dir} is an earlier run\'s (--export_checkpoint=none).'
         if chief and os.path.exists(export_dir) else '.'))


def _export(trainer, export_dir, wall_time):
  """Exports the checkpoint --export_checkpoint names; returns its step."""
  step = int(trainer.step.numpy())
  if trainer.cfg.export_checkpoint == 'best' and trainer.best.path is not None:
    path, step = trainer.best.path, trainer.best.best[0]
    weights = tf.train.Checkpoint(model_weights=checkpoints.model_weights(trainer.model))
    try:
      checkpoints.read_checkpoint(weights, path).expect_partial()
    except storage.ModelDirError as error:  # Damaged during this run.
      raise storage.ModelDirError(
          f'{error} The SavedModel was not written. Run the same command again '
          '(it moves the damaged best aside and re-evaluates), or export the last '
          f'weights: `python eval.py --model_dir={trainer.model_dir} '
          f'--export_dir={export_dir} --figures=false`.') from None
    logging.info('Exporting the best checkpoint, %s (step %d).', path, step)
  which = ' --checkpoint=best' if trainer.cfg.export_checkpoint == 'best' else ''
  try:
    with wall_time.phase(EXPORT):
      export.export_saved_model(trainer.model, export_dir)
  except storage.STORAGE_ERRORS as error:
    raise storage.StorageError(
        f'Could not export the SavedModel to {export_dir} '
        f'({checkpoints.error_summary(error)}); the checkpoints are complete: '
        f'free space and run `python eval.py --model_dir={trainer.model_dir}{which} '
        f'--export_dir={export_dir} --figures=false`.') from None
  return step


if __name__ == '__main__':
  app.run(main)
