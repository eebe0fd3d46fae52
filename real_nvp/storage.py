"""Storage on the ground floor: atomic writes and exports, the writability
probe, and the errors a full or broken disk gives (used by the model
directory, the export, the compressor and the toy).

Every fault is reported with its path and what to do, as a `ModelDirError`
(a ValueError), never a traceback from inside TensorFlow.
"""

import errno
import os
import shutil

import tensorflow as tf

__all__ = ['ModelDirError', 'StorageError', 'STORAGE_ERRORS', 'check_writable',
           'write_atomically', 'write_bytes_atomically', 'export_atomically',
           'is_disk_full']

# What writing to a full or broken disk raises.
STORAGE_ERRORS = (tf.errors.ResourceExhaustedError, tf.errors.UnknownError,
                  tf.errors.InternalError, tf.errors.PermissionDeniedError,
                  tf.errors.FailedPreconditionError, OSError)


class ModelDirError(ValueError):
  """A model directory cannot be used as asked; the message says why and how."""


class StorageError(ModelDirError):
  """Writing to the model directory failed (full disk, permissions)."""


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
