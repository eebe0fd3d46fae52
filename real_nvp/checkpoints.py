"""The model directory: checkpoints, the architecture, the run's settings, the
writer's lock and atomic exports.

    {model_dir}/ckpt-N.index, ckpt-N.data-*   weights by path, optimizer, step
    {model_dir}/checkpoint                    TF's checkpoint state
    {model_dir}/config.json                   the FlowConfig of the checkpoints
    {model_dir}/data.json, flags.txt          the data settings and every flag
    {model_dir}/train.lock                    the writer (model_dir_lock.py)
    {model_dir}/corrupt_checkpoints/          unreadable checkpoints, moved aside
    {model_dir}/best/                         the best checkpoint (best_checkpoint.py)

Every fault of the directory is reported with its path and what to do, as a
`ModelDirError` (a ValueError), never a traceback from inside TensorFlow.
"""

import dataclasses
import errno
import glob
import json
import os
import re
import shutil

import tensorflow as tf
from absl import logging

from real_nvp.config import FlowConfig

__all__ = ['ModelDirError', 'CheckpointMismatch', 'StorageError',
           'model_weights', 'check_config', 'write_config', 'read_config',
           'checkpoint_paths', 'has_checkpoint', 'read_checkpoint',
           'verify_readable', 'restore_model', 'clean_temporary_files',
           'write_run_settings', 'read_data_settings', 'export_atomically',
           'STORAGE_ERRORS', 'watch_checkpoints', 'quarantine', 'error_summary',
           'is_disk_full', 'write_atomically', 'write_bytes_atomically', 'check_writable']

CONFIG_FILE = 'config.json'
DATA_FILE = 'data.json'
CORRUPT_DIR = 'corrupt_checkpoints'

# What reading a damaged checkpoint raises (truncated index or data files,
# bad checksums, "not an sstable", files gone between listing and reading).
_READ_ERRORS = (tf.errors.OpError, IndexError, OSError)
# What writing to a full or broken disk raises.
STORAGE_ERRORS = (tf.errors.ResourceExhaustedError, tf.errors.UnknownError,
                  tf.errors.InternalError, tf.errors.PermissionDeniedError,
                  tf.errors.FailedPreconditionError, OSError)


class ModelDirError(ValueError):
  """A model directory cannot be used as asked; the message says why and how."""


class CheckpointMismatch(ModelDirError):
  """A checkpoint of another architecture."""


class StorageError(ModelDirError):
  """Writing to the model directory failed (full disk, permissions)."""


# --- the architecture -------------------------------------------------------------


def _config_path(model_dir):
  return os.path.join(model_dir, CONFIG_FILE)


def read_config(model_dir):
  """The FlowConfig stored in model_dir, or None."""
  path = _config_path(model_dir)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return FlowConfig.from_json(f.read())
  except (ValueError, TypeError) as error:
    raise ModelDirError(f'{path} is not a valid model configuration ({error}). '
                        'Restore it, or remove it if the directory holds no '
                        'checkpoint.') from None


def write_config(model_dir, flow_config):
  write_atomically(_config_path(model_dir), flow_config.to_json())


def _differences(stored, requested):
  return ', '.join(
      f'{field.name}: checkpoint {getattr(stored, field.name)!r} vs requested '
      f'{getattr(requested, field.name)!r}'
      for field in dataclasses.fields(FlowConfig)
      if getattr(stored, field.name) != getattr(requested, field.name))


def check_config(model_dir, flow_config):
  """Raises CheckpointMismatch if model_dir holds checkpoints of another
  architecture. A config.json without any checkpoint (a run that failed
  before its first checkpoint) holds nothing and is not a mismatch."""
  stored = read_config(model_dir)
  if stored is None or stored == flow_config or not has_checkpoint(model_dir):
    return
  raise CheckpointMismatch(
      f'{model_dir} holds a model of another architecture '
      f'({_differences(stored, flow_config)}). Use another --model_dir, or the '
      'same architecture flags.')


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


def _step_of(prefix):
  match = re.search(r'-(\d+)$', prefix)
  return int(match.group(1)) if match else -1


def checkpoint_paths(model_dir):
  """Checkpoint prefixes in model_dir (those with an index file), newest first."""
  prefixes = [path[:-len('.index')]
              for path in glob.glob(os.path.join(glob.escape(model_dir), 'ckpt-*.index'))]
  return sorted(prefixes, key=_step_of, reverse=True)


def has_checkpoint(model_dir):
  return bool(checkpoint_paths(model_dir))


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
        f'No trained model in {model_dir}: {_config_path(model_dir)} is missing.')
  if checkpoint is not None:
    other = read_config(os.path.dirname(os.path.abspath(checkpoint)) or '.')
    if other is not None and other != config:
      raise CheckpointMismatch(
          f'Checkpoint {checkpoint} belongs to a model of another architecture '
          f'than {model_dir} ({_differences(other, config)}).')
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


# --- run settings -----------------------------------------------------------------


def check_writable(path, is_directory=False):
  """Raises StorageError, naming `path`, unless a file can be written there
  (a directory: created if missing). Probes by writing, which permission bits
  alone do not tell (root, read-only mounts, full disks)."""
  directory = path if is_directory else os.path.dirname(os.path.abspath(path))
  problem = None
  if not is_directory and os.path.isdir(path):
    problem = 'it is a directory'
  else:
    probe = os.path.join(directory, f'.write-probe-{os.getpid()}')
    try:
      os.makedirs(directory, exist_ok=True)
      with open(probe, 'w') as f:
        f.write('x')
      os.remove(probe)
    except OSError as error:
      problem = error.strerror or str(error)
  if problem:
    raise StorageError(f'Cannot write {path} ({problem}); nothing was done. Choose '
                       'another path, or fix the directory (permissions, space).')


def write_atomically(path, text):
  """Writes `text` to `path` through a temporary file and a rename."""
  write_bytes_atomically(path, text.encode())


def write_bytes_atomically(path, data):
  """Writes `data` to `path` through a temporary file and a rename."""
  temporary = f'{path}.tmp-{os.getpid()}'
  try:
    with open(temporary, 'wb') as f:
      f.write(data)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def write_run_settings(model_dir, flags_text, data_settings):
  """flags.txt (every resolved flag) and data.json (what eval.py reads back)."""
  write_atomically(os.path.join(model_dir, 'flags.txt'), flags_text)
  write_atomically(os.path.join(model_dir, DATA_FILE),
                    json.dumps(data_settings, indent=2))


def read_data_settings(model_dir):
  path = os.path.join(model_dir, DATA_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


# --- exports ------------------------------------------------------------------------


def export_atomically(write, export_dir):
  """Runs write(directory) into a temporary sibling, then renames it into
  place: `export_dir` is always a complete export (old or new) or absent."""
  export_dir = os.path.normpath(export_dir)
  temporary = f'{export_dir}.export-tmp-{os.getpid()}'
  previous = f'{export_dir}.export-old-{os.getpid()}'
  shutil.rmtree(temporary, ignore_errors=True)
  try:
    write(temporary)
    if os.path.exists(export_dir):
      os.rename(export_dir, previous)
    os.rename(temporary, export_dir)
  except BaseException:
    shutil.rmtree(temporary, ignore_errors=True)
    if os.path.exists(previous) and not os.path.exists(export_dir):
      os.rename(previous, export_dir)
    raise
  shutil.rmtree(previous, ignore_errors=True)
  return export_dir


def is_disk_full(error):
  return (isinstance(error, tf.errors.ResourceExhaustedError) or
          getattr(error, 'errno', None) == errno.ENOSPC or
          'No space left' in str(error))
