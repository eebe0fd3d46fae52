"""The model directory's checkpoints: the weights by path, reading and
verifying a checkpoint, restoring a model, watching for new checkpoints and
moving damaged ones aside. The directory's layout and its listing of
checkpoints: model_dir_layout.py; atomic writes and storage errors:
storage.py.

Every fault is reported with its path and what to do, as a `ModelDirError`
(a ValueError), never a traceback from inside TensorFlow.
"""

import glob
import os
import shutil

import tensorflow as tf
from absl import logging

from real_nvp.model_dir_layout import (CORRUPT_DIR, CheckpointMismatch, checkpoint_paths,
                                       config_path, differences, read_config)
from real_nvp.storage import ModelDirError

__all__ = ['model_weights', 'read_checkpoint', 'verify_readable', 'restore_model',
           'clean_temporary_files', 'watch_checkpoints', 'quarantine', 'error_summary']


# What reading a damaged checkpoint raises (truncated index or data files,
# bad checksums, "not an sstable", files gone between listing and reading).
_READ_ERRORS = (tf.errors.OpError, IndexError, OSError)


# --- checkpoints ------------------------------------------------------------------


def model_weights(model):
  """{variable path: tf.Variable} of all the model's weights, BN averages included.

  Keras 3 models do not expose their variables to tf.train.Checkpoint, so
  checkpoints hold them by path (stable for a given architecture).
  """
  weights = {v.path: v.value for v in model.variables}
  if len(weights) != len(model.variables):
    raise ValueError('Model variable paths are not unique.')
  return weights


def read_checkpoint(checkpoint, path):
  """checkpoint.read(path) with every object matched; errors say what failed.

  Raises CheckpointMismatch for another architecture and ModelDirError for a
  checkpoint that cannot be read (damaged or missing files).
  """
  if not tf.io.gfile.exists(path + '.index'):
    raise ModelDirError(f'Checkpoint {path} does not exist (no {path}.index).')
  try:
    status = checkpoint.read(path)
    status.assert_existing_objects_matched()
  except _READ_ERRORS as error:
    raise ModelDirError(f'Checkpoint {path} cannot be read: '
                        f'{error_summary(error)}') from None
  except (AssertionError, ValueError) as error:
    raise CheckpointMismatch(
        f'Checkpoint {path} does not hold this model '
        f'({_shape_differences(checkpoint, path) or error_summary(error)}).') from None
  return status


def verify_readable(path):
  """Reads every tensor of the checkpoint at `path` (without loading it into
  anything), so that damage is found before it is used. Raises ModelDirError."""
  try:
    reader = tf.train.load_checkpoint(path)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except _READ_ERRORS as error:
    raise ModelDirError(f'Checkpoint {path} cannot be read: '
                        f'{error_summary(error)}') from None


def _shape_differences(checkpoint, path):
  """'name: checkpoint shape vs model shape' for the first few mismatches,
  and how many of the model's weights the checkpoint lacks."""
  try:
    listed = tf.train.list_variables(path)
  except _READ_ERRORS:
    return ''
  # Keys of the weights dict are stored as model_weights/<path, '/' -> '.S'>/...
  prefix, suffix = 'model_weights/', '/.ATTRIBUTES/VARIABLE_VALUE'
  stored = {key[len(prefix):-len(suffix)].replace('.S', '/'): shape
            for key, shape in listed if key.startswith(prefix) and key.endswith(suffix)}
  model = getattr(checkpoint, 'model_weights', {})
  lines = [f'{name}: checkpoint {stored[name]} vs model {variable.shape.as_list()}'
           for name, variable in model.items()
           if name in stored and list(stored[name]) != variable.shape.as_list()]
  missing = [name for name in model if name not in stored]
  if missing:
    lines.append(f'{len(missing)} of the model\'s variables are not in it, e.g. {missing[0]}')
  return '; '.join(lines[:3])


def error_summary(error):
  text = getattr(error, 'message', None) or str(error)
  return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def restore_model(model_dir, checkpoint=None, strategy=None):
  """(model, step, checkpoint path) for inference, built under `strategy`.

  `checkpoint`: a path, or None for the newest readable checkpoint (an
  unreadable newer one is reported and skipped). The model's architecture is
  model_dir's config.json; a checkpoint from another directory with another
  config.json is refused naming the differences.
  """
  from real_nvp.model import RealNVP  # The model imports nothing from here.
  config = read_config(model_dir)
  if config is None:
    raise FileNotFoundError(
        f'No trained model in {model_dir}: {config_path(model_dir)} is missing.')
  if checkpoint is not None:
    other = read_config(os.path.dirname(os.path.abspath(checkpoint)) or '.')
    if other is not None and other != config:
      raise CheckpointMismatch(
          f'Checkpoint {checkpoint} belongs to a model of another architecture '
          f'than {model_dir} ({differences(other, config)}).')
  with (strategy or tf.distribute.get_strategy()).scope():
    model = RealNVP(config)
    step = tf.Variable(0, dtype=tf.int64)
  reader = tf.train.Checkpoint(model_weights=model_weights(model), step=step)
  candidates = [checkpoint] if checkpoint else checkpoint_paths(model_dir)
  if not candidates:
    raise FileNotFoundError(f'No checkpoint (ckpt-*) in {model_dir}.')
  for path in candidates:
    try:
      read_checkpoint(reader, path).expect_partial()  # No optimizer slots needed.
    except CheckpointMismatch:
      raise
    except ModelDirError as error:
      if checkpoint:
        raise
      logging.warning('%s Trying the previous checkpoint.', error)
      continue
    if path != candidates[0]:
      logging.warning('Using %s, the newest readable checkpoint in %s.', path, model_dir)
    return model, int(step.numpy()), path
  raise ModelDirError(f'None of the {len(candidates)} checkpoints in {model_dir} '
                      'can be read (see the warnings above).')


def watch_checkpoints(model_dir, timeout, evaluate):
  """Calls evaluate(path) on each new checkpoint until `timeout` seconds pass
  without one. A checkpoint that cannot be read when its turn comes (the
  trainer's rotation deleted it, or it is damaged) is skipped with a warning."""
  for path in tf.train.checkpoints_iterator(model_dir, timeout=timeout):
    logging.info('Evaluating %s', path)
    try:
      evaluate(path)
    except CheckpointMismatch:
      raise
    except ModelDirError as error:
      logging.warning('Skipping %s: %s', path, error)


def clean_temporary_files(model_dir):
  """Removes what an interrupted save or export left behind."""
  patterns = ('ckpt-*_temp', os.path.join('best', 'ckpt-*_temp'),
              '*.export-tmp-*', '*.export-old-*')
  leftovers = [path for pattern in patterns
               for path in glob.glob(os.path.join(glob.escape(model_dir), pattern))]
  for path in leftovers:
    logging.info('Removing %s, left by an interrupted save.', path)
    shutil.rmtree(path, ignore_errors=True)


def quarantine(model_dir, path, reason, prefix=''):
  """Moves an unreadable checkpoint's files to corrupt_checkpoints/ (their
  names prefixed with `prefix`)."""
  target = os.path.join(model_dir, CORRUPT_DIR)
  os.makedirs(target, exist_ok=True)
  for name in glob.glob(glob.escape(path) + '.*'):
    shutil.move(name, os.path.join(target, prefix + os.path.basename(name)))
  logging.warning('%s Moved its files to %s.', reason, target)


